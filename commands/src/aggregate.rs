//! What a decider keeps per aggregate, and the dispatch from an aggregate
//! type to its domain decider.

use serde::{Deserialize, Serialize};
use tidings_domain::{account, claim, ErrorKind};
use tidings_schemas::envelope::DecodeError;
use tidings_schemas::{AggregateType, Cursor, DomainEvent, EventEnvelope};

use crate::envelope::{AnyCommand, Outcome};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnyState {
    Account(account::State),
    Claim(claim::State),
}

impl AnyState {
    pub fn initial(kind: AggregateType) -> Self {
        match kind {
            AggregateType::Account => AnyState::Account(Default::default()),
            AggregateType::Email | AggregateType::Username => AnyState::Claim(Default::default()),
        }
    }

    pub fn decide(&self, command: &AnyCommand) -> Result<Vec<DomainEvent>, Outcome> {
        match (self, command) {
            (AnyState::Account(state), AnyCommand::Account(command)) => {
                account::decide(command, state)
                    .map(|events| events.into_iter().map(DomainEvent::Account).collect())
                    .map_err(|e| Outcome::rejected(&e))
            }
            (AnyState::Claim(state), AnyCommand::Claim(command)) => claim::decide(command, state)
                .map(|events| events.into_iter().map(DomainEvent::Claim).collect())
                .map_err(|e| Outcome::rejected(&e)),
            _ => Err(Outcome::Rejected {
                code: "wrong_aggregate".into(),
                kind: ErrorKind::Invalid,
                message: "this command does not belong to this aggregate".into(),
            }),
        }
    }

    pub fn evolve(self, event: &DomainEvent) -> Self {
        match (self, event) {
            (AnyState::Account(state), DomainEvent::Account(event)) => {
                AnyState::Account(account::evolve(state, event))
            }
            (AnyState::Claim(state), DomainEvent::Claim(event)) => {
                AnyState::Claim(claim::evolve(state, event))
            }
            // An event of another aggregate type cannot carry this key; keep
            // the state rather than guess.
            (state, _) => state,
        }
    }
}

/// One aggregate as a decider holds it: its state and where it stands in
/// the sequence rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub cursor: Cursor,
    pub state: AnyState,
}

/// Whether an event changed the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// Skipped by the sequence rule: a duplicate or a zombie's write.
    Skipped,
}

impl Aggregate {
    pub fn new(kind: AggregateType) -> Self {
        Aggregate {
            cursor: Cursor::default(),
            state: AnyState::initial(kind),
        }
    }

    /// Folds one event of the log into the aggregate under the sequence rule.
    /// An event this build cannot read is an error, never skipped: the state
    /// would silently miss it.
    pub fn apply(&mut self, envelope: &EventEnvelope) -> Result<Applied, DecodeError> {
        let event = DomainEvent::decode(envelope)?;
        if !envelope.admit(&mut self.cursor) {
            return Ok(Applied::Skipped);
        }
        let state = std::mem::replace(&mut self.state, AnyState::initial(envelope.aggregate.kind));
        self.state = state.evolve(&event);
        Ok(Applied::Yes)
    }
}
