//! The frames of the WebSocket protocol: one JSON object per text frame.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
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
