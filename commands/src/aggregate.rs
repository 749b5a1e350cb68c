//! What a decider keeps per aggregate: its state (of any decider in the
//! registry, `tidings_schemas::registry`) and where it stands in the
//! sequence rule.

use serde::{Deserialize, Serialize};
use tidings_schemas::envelope::DecodeError;
use tidings_schemas::{AggregateType, AnyState, Cursor, DomainEvent, EventEnvelope};

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
