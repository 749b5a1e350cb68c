//! What a decider keeps per aggregate, and the dispatch from an aggregate
//! type to its domain decider.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tidings_domain::{account, claim, ErrorKind};
use tidings_schemas::{AggregateType, Cursor, DomainEvent, EventEnvelope, Position};
use uuid::Uuid;

use crate::envelope::{AnyCommand, Outcome};

/// How many handled commands an aggregate remembers with their positions: a
/// retry or redelivery of any of them gets its first outcome back. A retry
/// that comes after more later commands than this is decided again.
const HANDLED_KEPT: usize = 32;

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

/// One aggregate as a decider holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub cursor: Cursor,
    pub state: AnyState,
    /// The most recent commands whose events applied, with where they are.
    pub handled: VecDeque<(Uuid, Position)>,
}

/// Whether an event changed the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// Skipped by the sequence rule: a duplicate or a zombie's write.
    Skipped,
    /// Not readable by this build (a newer version, or not a known event).
    Unreadable,
}

impl Aggregate {
    pub fn new(kind: AggregateType) -> Self {
        Aggregate {
            cursor: Cursor::default(),
            state: AnyState::initial(kind),
            handled: VecDeque::new(),
        }
    }

    pub fn handled(&self, command_id: Uuid) -> Option<&Position> {
        self.handled
            .iter()
            .find(|(id, _)| *id == command_id)
            .map(|(_, p)| p)
    }

    /// Folds one event of the log into the aggregate under the sequence rule.
    /// `at` is its place in the log, unknown for a speculative apply.
    pub fn apply(&mut self, envelope: &EventEnvelope, at: Option<(i32, i64)>) -> Applied {
        let event = match DomainEvent::decode(envelope) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, event_id = %envelope.event_id, "unreadable event skipped");
                return Applied::Unreadable;
            }
        };
        if !self.cursor.admit(envelope.sequence, envelope.command_id) {
            return Applied::Skipped;
        }
        let state = std::mem::replace(&mut self.state, AnyState::initial(envelope.aggregate.kind));
        self.state = state.evolve(&event);
        let position = match self.handled.back_mut() {
            Some((id, position)) if *id == envelope.command_id => position,
            _ => {
                if self.handled.len() == HANDLED_KEPT {
                    self.handled.pop_front();
                }
                self.handled
                    .push_back((envelope.command_id, Position::default()));
                &mut self.handled.back_mut().expect("just pushed").1
            }
        };
        if let Some((partition, offset)) = at {
            position.include(partition, offset);
        }
        Applied::Yes
    }
}
