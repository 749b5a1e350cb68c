//! The command envelope and its outcome.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidings_domain::ErrorKind;
use tidings_schemas::registry::Rejected;
pub use tidings_schemas::AnyCommand;
use tidings_schemas::{AggregateRef, Position};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Deterministic when the client sent an `Idempotency-Key`, so a retry is
    /// the same command and the decider answers it with its first outcome.
    pub command_id: Uuid,
    pub idempotency_key: Option<String>,
    pub actor: Option<Uuid>,
    pub issued_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub aggregate: AggregateRef,
    pub command: AnyCommand,
}

impl CommandEnvelope {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("command envelopes serialize to JSON")
    }
}

#[cfg(test)]
mod tests {
    use tidings_domain::{account, claim};

    use super::*;

    #[test]
    fn type_names_are_the_serde_tags() {
        let commands = [
            AnyCommand::Claim(claim::Command::Claim {
                kind: claim::Kind::Email,
                owner: Uuid::nil(),
            }),
            AnyCommand::Claim(claim::Command::Release {
                kind: claim::Kind::Email,
                owner: Uuid::nil(),
            }),
            AnyCommand::Account(account::Command::UpdateProfile(Default::default())),
        ];
        for command in commands {
            let tagged = serde_json::to_value(&command).unwrap();
            assert_eq!(tagged["type"], command.type_name());
        }
    }
}

/// Published on `tidings.command-results`, keyed by the command id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: Uuid,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The command's events are in the log at `position` (empty when the
    /// command changed nothing).
    Accepted { position: Position },
    Rejected {
        code: String,
        kind: ErrorKind,
        message: String,
    },
}

impl From<Rejected> for Outcome {
    fn from(rejected: Rejected) -> Self {
        Outcome::Rejected {
            code: rejected.code.to_owned(),
            kind: rejected.kind,
            message: rejected.message,
        }
    }
}
