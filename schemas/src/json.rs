//! The JSON Schemas of the log and the WebSocket protocol, as files under
//! `schemas/json/` embedded into the binary. Anyone can validate against the
//! files without Tidings; the integration tests validate every event they
//! cause against them.

/// The schema of the event envelope.
pub const EVENT_ENVELOPE: &str = include_str!("../json/event-envelope.v1.json");

/// The schema of the command envelope on `tidings.commands`.
pub const COMMAND_ENVELOPE: &str = include_str!("../json/command-envelope.v1.json");

/// `(type, version, schema)` of every event's `data`.
pub const EVENTS: &[(&str, u32, &str)] = &[
    (
        "account.opened",
        1,
        include_str!("../json/events/account.opened.v1.json"),
    ),
    (
        "account.abandoned",
        1,
        include_str!("../json/events/account.abandoned.v1.json"),
    ),
    (
        "account.registered",
        1,
        include_str!("../json/events/account.registered.v1.json"),
    ),
    (
        "account.profile_updated",
        1,
        include_str!("../json/events/account.profile_updated.v1.json"),
    ),
    (
        "claim.claimed",
        1,
        include_str!("../json/events/claim.claimed.v1.json"),
    ),
    (
        "claim.released",
        1,
        include_str!("../json/events/claim.released.v1.json"),
    ),
];

/// Every schema file, by its path under `schemas/json/` (served at
/// `/schemas/<path>`).
pub const FILES: &[(&str, &str)] = &[
    ("event-envelope.v1.json", EVENT_ENVELOPE),
    ("command-envelope.v1.json", COMMAND_ENVELOPE),
    (
        "command-result.v1.json",
        include_str!("../json/command-result.v1.json"),
    ),
    ("update.v1.json", include_str!("../json/update.v1.json")),
    (
        "ws/server-frame.v1.json",
        include_str!("../json/ws/server-frame.v1.json"),
    ),
    (
        "ws/client-frame.v1.json",
        include_str!("../json/ws/client-frame.v1.json"),
    ),
    ("events/account.opened.v1.json", EVENTS[0].2),
    ("events/account.abandoned.v1.json", EVENTS[1].2),
    ("events/account.registered.v1.json", EVENTS[2].2),
    ("events/account.profile_updated.v1.json", EVENTS[3].2),
    ("events/claim.claimed.v1.json", EVENTS[4].2),
    ("events/claim.released.v1.json", EVENTS[5].2),
];

/// A schema file by its path under `schemas/json/`.
pub fn file(path: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, schema)| *schema)
}

/// The schema of an event's `data`, by type and version.
pub fn event_data(event_type: &str, version: u32) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == version)
        .map(|(_, _, schema)| *schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_schema_is_served_as_a_file() {
        for (event_type, version, schema) in EVENTS {
            assert_eq!(
                file(&format!("events/{event_type}.v{version}.json")),
                Some(*schema)
            );
        }
    }

    #[test]
    fn every_embedded_schema_is_json_with_an_id() {
        for schema in FILES.iter().map(|f| f.1) {
            let value: serde_json::Value = serde_json::from_str(schema).expect("schema is JSON");
            assert!(value["$id"].is_string(), "schema without $id: {schema}");
        }
    }
}
