//! The event envelope (DESIGN.md, "Names that recur") and the typed payloads.
//!
//! On the wire an event is one JSON object; `type` and `data` together are
//! exactly the serde form of a domain `Event`, so encoding is `to_value` and
//! splitting, decoding is joining, upcasting and `from_value`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidings_domain::claim;
use uuid::Uuid;

pub use crate::registry::{AggregateType, DomainEvent};

/// The version an event type is written at today. When a type changes
/// shape, its new version is written and [`upcast`] lifts the old ones.
pub fn current_version(event_type: &str) -> u32 {
    match event_type {
        // v2 leaves the password hash out of the log: it lives in the API's
        // private store (`credentials`), and the log is read by analysts.
        "account.opened" | "account.registered" => 2,
        // v2 names a message that took the item (`message_id`) as v1 named
        // a post; a v1 event is a v2 event as it is.
        "media.attached" => 2,
        _ => 1,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub aggregate: AggregateRef,
    /// Position of this event in its aggregate's history, from 1.
    pub sequence: u64,
    /// The event this one was decided after in its aggregate's history (none
    /// for the first): the chain of the sequence rule (`sequence.rs`).
    #[serde(default)]
    pub previous: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub actor: Option<Uuid>,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AggregateRef {
    #[serde(rename = "type")]
    pub kind: AggregateType,
    pub id: String,
}

impl AggregateRef {
    pub fn new(kind: AggregateType, id: impl Into<String>) -> Self {
        AggregateRef {
            kind,
            id: id.into(),
        }
    }

    pub fn account(id: Uuid) -> Self {
        AggregateRef {
            kind: AggregateType::Account,
            id: id.to_string(),
        }
    }

    /// The claim aggregate of a normalized email or username.
    pub fn claim(kind: claim::Kind, normalized: &str) -> Self {
        let kind = match kind {
            claim::Kind::Email => AggregateType::Email,
            claim::Kind::Username => AggregateType::Username,
        };
        AggregateRef {
            kind,
            id: normalized.to_owned(),
        }
    }

    /// The Kafka key of both the aggregate's commands and its events: the
    /// same key and partition count put both on the same partition, whose
    /// owner is the aggregate's only writer.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event is not a JSON envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("{event_type} v{version} is not a known event of a {aggregate} aggregate: {source}")]
    Payload {
        event_type: String,
        version: u32,
        aggregate: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{event_type} v{version} is newer than this build of Tidings reads")]
    FutureVersion { event_type: String, version: u32 },
}

impl DomainEvent {
    /// Splits the event into its envelope `type` and `data`.
    pub fn encode(&self) -> (String, Value) {
        match self.to_tagged() {
            Value::Object(mut map) => {
                let event_type = match map.remove("type") {
                    Some(Value::String(t)) => t,
                    other => {
                        unreachable!("domain events are tagged with a string type, got {other:?}")
                    }
                };
                (event_type, map.remove("data").unwrap_or(Value::Null))
            }
            other => unreachable!("domain events serialize to objects, got {other}"),
        }
    }

    pub fn decode(envelope: &EventEnvelope) -> Result<Self, DecodeError> {
        if envelope.version > current_version(&envelope.event_type) {
            return Err(DecodeError::FutureVersion {
                event_type: envelope.event_type.clone(),
                version: envelope.version,
            });
        }
        let data = upcast(
            &envelope.event_type,
            envelope.version,
            envelope.data.clone(),
        );
        let tagged = json!({ "type": envelope.event_type, "data": data });
        let kind = envelope.aggregate.kind;
        DomainEvent::from_tagged(kind.decider(), tagged).map_err(|source| DecodeError::Payload {
            event_type: envelope.event_type.clone(),
            version: envelope.version,
            aggregate: kind.as_str(),
            source,
        })
    }
}

/// Lifts `data` written at `version` to [`current_version`]. A new version
/// adds its arm here and its schema under `schemas/json/events/`.
pub fn upcast(event_type: &str, version: u32, mut data: Value) -> Value {
    match (event_type, version) {
        // v1 carried the password hash; the projector moves it to the
        // private store (`projections/src/accounts.rs`) before it is dropped.
        ("account.opened" | "account.registered", 1) => {
            if let Value::Object(fields) = &mut data {
                fields.remove("password_hash");
            }
            data
        }
        _ => data,
    }
}

/// The deterministic id of the `index`th event of a command: a retried or
/// redelivered command yields the same ids, so duplicates are recognizable.
pub fn event_id(command_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&command_id, index.to_string().as_bytes())
}

/// Fields of any event's `data` that name a person outside Tidings: left
/// out of what analysts read unless they ask for them
/// ([`EventEnvelope::for_analysts`]). Published schemas are never edited,
/// so these are named here rather than marked in the schemas.
pub const PERSONAL_FIELDS: &[&str] = &["email", "phone_number"];

/// A stable stand-in for a private value (`sha256:` and the first 16 hex
/// digits of its SHA-256): the same address gives the same pseudonym, so
/// counts and joins still work. A pseudonym, not anonymity: an address can
/// be guessed and checked against it.
pub fn pseudonym(value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The fields of an event type's `data` that never leave Tidings: those its
/// JSON Schema marks `"x-tidings-private": true` (a password hash).
pub fn private_fields(event_type: &str, version: u32) -> &'static [String] {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static PRIVATE: OnceLock<HashMap<(String, u32), Vec<String>>> = OnceLock::new();
    let private = PRIVATE.get_or_init(|| {
        crate::json::events()
            .map(|(event_type, version, schema)| {
                let schema: Value = serde_json::from_str(schema).expect("event schemas are JSON");
                let fields = schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, property)| property["x-tidings-private"] == Value::Bool(true))
                    .map(|(name, _)| name.clone())
                    .collect();
                ((event_type.to_owned(), version), fields)
            })
            .collect()
    });
    private
        .get(&(event_type.to_owned(), version))
        .map_or(&[], Vec::as_slice)
}

impl EventEnvelope {
    /// The event as it may leave Tidings (an analyst's export, a webhook):
    /// without the private fields of its `data`.
    pub fn redacted(&self) -> EventEnvelope {
        let mut redacted = self.clone();
        if let Value::Object(data) = &mut redacted.data {
            for field in private_fields(&self.event_type, self.version) {
                data.remove(field);
            }
        }
        redacted
    }

    /// The event as an analyst reads it (`tidings replay`, the admin API):
    /// `data` lifted to the type's current version by the same upcasters
    /// the deciders and the projector apply, and, unless `include_private`,
    /// without what identifies a person beyond the log: the private fields
    /// of its schema (a password hash), email addresses and phone numbers
    /// ([`PERSONAL_FIELDS`]), and the address that names an email claim
    /// (its aggregate id, replaced by [`pseudonym`]).
    pub fn for_analysts(&self, include_private: bool) -> EventEnvelope {
        let mut event = self.clone();
        if self.version < current_version(&self.event_type) {
            event.data = upcast(&self.event_type, self.version, self.data.clone());
            event.version = current_version(&self.event_type);
        }
        if include_private {
            return event;
        }
        let mut event = event.redacted();
        if let Value::Object(data) = &mut event.data {
            for field in PERSONAL_FIELDS {
                data.remove(*field);
            }
        }
        if event.aggregate.kind == AggregateType::Email {
            event.aggregate.id = pseudonym(&event.aggregate.id);
        }
        event
    }

    /// Holds this event to the sequence rule at `cursor`: whether it applies.
    pub fn admit(&self, cursor: &mut crate::Cursor) -> bool {
        cursor.admit(self.sequence, self.event_id, self.previous)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(DecodeError::Envelope)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize to JSON")
    }
}

#[cfg(test)]
mod tests {
    use tidings_domain::account;

    use super::*;

    #[test]
    fn an_event_survives_the_envelope() {
        let event = DomainEvent::Claim(claim::Event::Claimed {
            kind: claim::Kind::Email,
            owner: Uuid::from_u128(7),
        });
        let (event_type, data) = event.encode();
        assert_eq!(event_type, "claim.claimed");
        let envelope = EventEnvelope {
            event_id: event_id(Uuid::from_u128(1), 0),
            event_type,
            version: current_version("claim.claimed"),
            aggregate: AggregateRef::claim(claim::Kind::Email, "a@example.com"),
            sequence: 1,
            previous: None,
            occurred_at: Utc::now(),
            actor: None,
            command_id: Uuid::from_u128(1),
            correlation_id: Uuid::from_u128(2),
            data,
        };
        let read = EventEnvelope::from_json(&envelope.to_json()).unwrap();
        assert_eq!(DomainEvent::decode(&read).unwrap(), event);
    }

    /// An `account.registered` as written before v2, with the hash inside.
    fn registered_v1() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::from_u128(1),
            event_type: "account.registered".into(),
            version: 1,
            aggregate: AggregateRef::account(Uuid::from_u128(7)),
            sequence: 2,
            previous: Some(Uuid::from_u128(2)),
            occurred_at: Utc::now(),
            actor: None,
            command_id: Uuid::from_u128(1),
            correlation_id: Uuid::from_u128(1),
            data: json!({
                "user_id": Uuid::from_u128(7), "username": "ada", "email": "ada@example.com",
                "password_hash": "$argon2id$v=19$secret", "display_name": "Ada",
                "registered_at": Utc::now(),
            }),
        }
    }

    #[test]
    fn a_redacted_event_leaves_the_password_hash_out() {
        let envelope = registered_v1();
        let redacted = envelope.redacted();
        assert!(envelope.data.get("password_hash").is_some());
        assert_eq!(redacted.data.get("password_hash"), None);
        assert_eq!(redacted.data["username"], "ada");
        assert!(!String::from_utf8(redacted.to_json())
            .unwrap()
            .contains("argon2"));
    }

    #[test]
    fn analysts_read_v1_as_v2_without_hash_email_or_claimed_address() {
        let event = registered_v1().for_analysts(false);
        assert_eq!(event.version, 2);
        assert_eq!(event.data.get("password_hash"), None);
        assert_eq!(event.data.get("email"), None);
        assert_eq!(event.data["username"], "ada");
        let claim = EventEnvelope {
            aggregate: AggregateRef::claim(claim::Kind::Email, "ada@example.com"),
            ..registered_v1()
        };
        let read = claim.for_analysts(false);
        assert!(
            read.aggregate.id.starts_with("sha256:"),
            "{}",
            read.aggregate.id
        );
        assert_eq!(read.aggregate.id, pseudonym("ada@example.com"));
        // Asked for, the personal fields stay; the hash never does (v2).
        let private = registered_v1().for_analysts(true);
        assert_eq!(private.data["email"], "ada@example.com");
        assert_eq!(private.data.get("password_hash"), None);
        assert_eq!(claim.for_analysts(true).aggregate.id, "ada@example.com");
    }

    #[test]
    fn an_account_event_of_v1_reads_as_v2_without_its_hash() {
        let DomainEvent::Account(account::Event::Registered(registered)) =
            DomainEvent::decode(&registered_v1()).unwrap()
        else {
            panic!("not an account.registered");
        };
        assert_eq!(registered.username, "ada");
        let (_, data) = DomainEvent::Account(account::Event::Registered(registered)).encode();
        assert!(data.get("password_hash").is_none());
    }

    #[test]
    fn every_secret_looking_field_of_an_event_is_private() {
        for (event_type, version, schema) in crate::json::events() {
            let schema: Value = serde_json::from_str(schema).unwrap();
            for (name, _) in schema["properties"].as_object().into_iter().flatten() {
                // A version number (`token_version`) names a secret without
                // being one.
                if ["password", "hash", "secret", "token"]
                    .iter()
                    .any(|word| name.contains(word))
                    && !name.ends_with("_version")
                {
                    assert!(
                        private_fields(event_type, version).contains(name),
                        "{event_type} v{version}: {name} looks secret but is not marked private"
                    );
                }
            }
        }
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct_per_index() {
        let command = Uuid::from_u128(9);
        assert_eq!(event_id(command, 0), event_id(command, 0));
        assert_ne!(event_id(command, 0), event_id(command, 1));
    }
}
