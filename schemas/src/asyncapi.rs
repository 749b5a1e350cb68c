//! The AsyncAPI 3 description of what Tidings says outside HTTP: the
//! WebSocket protocol and the four Kafka topics. Messages refer to the JSON
//! Schemas of this crate, served at `/schemas/<path>`; every event type and
//! version in [`crate::json::events`] appears as a message of the events
//! topic, so a new one is described as soon as its schema exists.

use serde_json::{json, Map, Value};

use crate::kafka::KafkaSettings;

fn schema_ref(path: &str) -> Value {
    json!({ "$ref": format!("/schemas/{path}") })
}

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

/// The document, for topics named after `kafka.topic_prefix`.
pub fn document(kafka: &KafkaSettings, version: &str) -> Value {
    let topics = kafka.topics();
    let mut messages = Map::new();
    let mut event_messages = Map::new();
    for (event_type, event_version, _) in crate::json::events() {
        let name = format!("{event_type}.v{event_version}");
        messages.insert(
            name.clone(),
            json!({
                "name": event_type,
                "title": format!("{event_type} v{event_version}"),
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": { "type": { "const": event_type }, "version": { "const": event_version.to_string() } }
                },
                "payload": {
                    "allOf": [
                        schema_ref("event-envelope.v2.json"),
                        {
                            "type": "object",
                            "properties": {
                                "type": { "const": event_type },
                                "version": { "const": event_version },
                                "data": schema_ref(&format!("events/{name}.json"))
                            }
                        }
                    ]
                }
            }),
        );
        event_messages.insert(name.clone(), message_ref(&name));
    }
    for (name, title, path) in [
        (
            "Command",
            "A command, keyed by its aggregate",
            "command-envelope.v2.json",
        ),
        (
            "CommandResult",
            "A command's outcome, keyed by command id",
            "command-result.v1.json",
        ),
        (
            "Update",
            "A channel update, keyed by channel",
            "update.v1.json",
        ),
        (
            "ServerFrame",
            "A frame from the gateway",
            "ws/server-frame.v1.json",
        ),
        (
            "ClientFrame",
            "A frame from the client",
            "ws/client-frame.v1.json",
        ),
    ] {
        messages.insert(
            name.into(),
            json!({ "name": name, "title": title, "contentType": "application/json", "payload": schema_ref(path) }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tidings",
            "version": version,
            "description": "The WebSocket protocol of the realtime gateway and the Kafka topics of the log. Events are JSON envelopes keyed by aggregate, with headers `type` and `version`; an event applies only if its aggregate sequence is the aggregate's version + 1."
        },
        "servers": {
            "gateway": { "host": "127.0.0.1:8080", "protocol": "ws", "pathname": "/ws",
                "description": "Token in `Authorization: Bearer` or `?token=`. Close codes: 4001 unauthorized or token expired, 4003 forbidden, 4008 rate limited, 4009 too slow (resume with `since`), 4400 protocol error, 1001 going away." },
            "kafka": { "host": kafka.brokers, "protocol": "kafka" }
        },
        "channels": {
            "websocket": {
                "address": "/ws",
                "servers": [{ "$ref": "#/servers/gateway" }],
                "messages": { "serverFrame": message_ref("ServerFrame"), "clientFrame": message_ref("ClientFrame") }
            },
            "commands": { "address": topics.commands, "servers": [{ "$ref": "#/servers/kafka" }], "messages": { "command": message_ref("Command") } },
            "events": { "address": topics.events, "servers": [{ "$ref": "#/servers/kafka" }], "messages": event_messages },
            "commandResults": { "address": topics.results, "servers": [{ "$ref": "#/servers/kafka" }], "messages": { "result": message_ref("CommandResult") } },
            "updates": { "address": topics.updates, "servers": [{ "$ref": "#/servers/kafka" }], "messages": { "update": message_ref("Update") } }
        },
        "operations": {
            "pushFrames": { "action": "send", "channel": { "$ref": "#/channels/websocket" }, "messages": [{ "$ref": "#/channels/websocket/messages/serverFrame" }] },
            "takeFrames": { "action": "receive", "channel": { "$ref": "#/channels/websocket" }, "messages": [{ "$ref": "#/channels/websocket/messages/clientFrame" }] },
            "takeCommands": { "action": "receive", "channel": { "$ref": "#/channels/commands" } },
            "appendEvents": { "action": "send", "channel": { "$ref": "#/channels/events" } },
            "answerCommands": { "action": "send", "channel": { "$ref": "#/channels/commandResults" } },
            "publishUpdates": { "action": "send", "channel": { "$ref": "#/channels/updates" } }
        },
        "components": { "messages": messages }
    })
}
