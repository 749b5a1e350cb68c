//! The frames of the WebSocket protocol: one JSON object per text frame.

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use tidings_projections::outbox::Update;
use uuid::Uuid;

use crate::socket::{Delivery, Encoded};

/// Updates whose latest value is all a client needs: a slow client's queue
/// keeps only the newest of each (see [`ServerFrame::delivery`]).
pub const STATES: [&str; 3] = ["post.counts", "room.unread", "notifications.read"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session_id: Uuid,
        user_id: Uuid,
        heartbeat_ms: u64,
    },
    Event {
        channel: String,
        seq: i64,
        epoch: i64,
        event: String,
        data: serde_json::Value,
    },
    Subscribed {
        channel: String,
        seq: i64,
        epoch: i64,
        recovered: bool,
        /// Read REST state with this `X-Min-Position`: it shows at least
        /// everything up to `seq`, so no change falls between the state
        /// read and the events that follow (apply those past `seq`; a view
        /// may already show some of them).
        position: String,
    },
    /// The server ended a subscription: `reason` is `forbidden` (the user
    /// may no longer see the channel, e.g. a followers-only post after an
    /// unfollow) or `deleted` (its post was deleted). Nothing more of the
    /// channel comes unless it is subscribed again.
    Unsubscribed {
        channel: String,
        reason: String,
    },
    /// A participant of the room on `channel` came online (their first
    /// socket on any gateway) or went offline (their last one closed, or
    /// lapsed). Ephemeral: no `seq`, never in the log.
    Presence {
        channel: String,
        user_id: Uuid,
        status: String,
    },
    /// A participant of the room on `channel` started or stopped typing.
    /// A `true` not refreshed within [`crate::hub::TYPING_TTL`] is followed
    /// by a `false` from the server.
    Typing {
        channel: String,
        user_id: Uuid,
        is_typing: bool,
    },
    Error {
        code: String,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Pong,
}

impl ServerFrame {
    pub fn error(code: &str, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error {
            code: code.to_owned(),
            message: message.into(),
            reference,
        }
    }

    /// How the frame waits for a slow client (DESIGN.md, three delivery
    /// contracts): counts and unread counts are states keyed by channel and
    /// event (and room, for a room's unread count on the user's channel),
    /// presence a state per channel and user; typing is ephemeral; the rest
    /// is durable.
    pub fn delivery(&self) -> Delivery {
        match self {
            ServerFrame::Event {
                channel,
                event,
                data,
                ..
            } => event_delivery(channel, event, data),
            ServerFrame::Presence {
                channel, user_id, ..
            } => state(&[channel, "presence", &user_id.to_string()]),
            ServerFrame::Typing { .. } => Delivery::Ephemeral,
            _ => Delivery::Durable,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }

    /// The `event` frame of an update, encoded for the socket: the same
    /// frame as [`ServerFrame::Event`] with the update's fields, written from
    /// the update in place (a hub hands one update to every subscriber; see
    /// [`crate::hub::Outgoing`]).
    pub fn event_of(update: &Update) -> Encoded {
        /// [`ServerFrame::Event`], borrowed.
        #[derive(Serialize)]
        #[serde(tag = "type", rename = "event")]
        struct Event<'a> {
            channel: &'a str,
            seq: i64,
            epoch: i64,
            event: &'a str,
            data: &'a serde_json::Value,
        }
        let text = serde_json::to_string(&Event {
            channel: &update.channel,
            seq: update.seq,
            epoch: update.epoch,
            event: &update.event,
            data: &update.data,
        })
        .expect("frames serialize");
        Encoded::text(
            &text,
            event_delivery(&update.channel, &update.event, &update.data),
        )
    }
}

/// How an update's `event` frame waits for a slow client: counts and unread
/// counts are states keyed by channel and event (and room, for a room's
/// unread count on the user's channel); the rest is durable.
fn event_delivery(channel: &str, event: &str, data: &serde_json::Value) -> Delivery {
    if !STATES.contains(&event) {
        return Delivery::Durable;
    }
    let room = data["room_id"].as_str().unwrap_or_default();
    state(&[channel, event, room])
}

/// The delivery of a state named by `parts`.
fn state(parts: &[&str]) -> Delivery {
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    Delivery::State(hasher.finish())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        channel: String,
        since: Option<i64>,
        epoch: Option<i64>,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Unsubscribe {
        channel: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Typing {
        channel: String,
        is_typing: bool,
    },
    Ping,
    Auth {
        token: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_presence_are_states_typing_ephemeral_the_rest_durable() {
        let event = |channel: &str, event: &str, data: serde_json::Value| ServerFrame::Event {
            channel: channel.into(),
            seq: 1,
            epoch: 1,
            event: event.into(),
            data,
        };
        let counts = event(
            "post:1",
            "post.counts",
            serde_json::json!({"like_count": 1}),
        );
        let later = event(
            "post:1",
            "post.counts",
            serde_json::json!({"like_count": 2}),
        );
        let other = event(
            "post:2",
            "post.counts",
            serde_json::json!({"like_count": 2}),
        );
        assert!(matches!(counts.delivery(), Delivery::State(_)));
        assert_eq!(counts.delivery(), later.delivery(), "one state per post");
        assert_ne!(counts.delivery(), other.delivery());
        let unread = |room: &str| {
            event(
                "user:1",
                "room.unread",
                serde_json::json!({"room_id": room, "unread_count": 3}),
            )
            .delivery()
        };
        assert_ne!(unread("a"), unread("b"), "one state per room");
        let message = event("room:1", "message.created", serde_json::json!({}));
        assert_eq!(message.delivery(), Delivery::Durable);
        let typing = ServerFrame::Typing {
            channel: "room:1".into(),
            user_id: Uuid::nil(),
            is_typing: true,
        };
        assert_eq!(typing.delivery(), Delivery::Ephemeral);
        let presence = |status: &str| ServerFrame::Presence {
            channel: "room:1".into(),
            user_id: Uuid::nil(),
            status: status.into(),
        };
        assert_eq!(
            presence("online").delivery(),
            presence("offline").delivery()
        );
    }

    #[test]
    fn an_update_encoded_in_place_is_its_event_frame() {
        for (event, data) in [
            (
                "message.created",
                serde_json::json!({"id": "m", "text": "hi \"you\""}),
            ),
            (
                "room.unread",
                serde_json::json!({"room_id": "r", "unread_count": 3}),
            ),
        ] {
            let update = Update {
                channel: "user:1".into(),
                seq: 7,
                epoch: 2,
                event: event.into(),
                data: data.clone(),
            };
            let frame = ServerFrame::Event {
                channel: "user:1".into(),
                seq: 7,
                epoch: 2,
                event: event.into(),
                data,
            };
            assert_eq!(
                ServerFrame::event_of(&update),
                Encoded::text(&frame.to_json(), frame.delivery()),
                "{event}"
            );
        }
    }

    #[test]
    fn frames_read_and_write_as_documented() {
        let frame: ClientFrame =
            serde_json::from_str(r#"{"op":"subscribe","channel":"user:1","since":4,"ref":"a"}"#)
                .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Subscribe {
                channel: "user:1".into(),
                since: Some(4),
                epoch: None,
                reference: Some("a".into())
            }
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        let ended = ServerFrame::Unsubscribed {
            channel: "post:1".into(),
            reason: "forbidden".into(),
        };
        assert_eq!(
            ended.to_json(),
            r#"{"type":"unsubscribed","channel":"post:1","reason":"forbidden"}"#
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"op":"dance"}"#).is_err());
    }
}
