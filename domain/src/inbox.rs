//! A user's notification inbox, as far as the user changes it: marking
//! notifications read. The notifications themselves are derived by the
//! projector from what others did (a like, a comment, a follow, a mention);
//! only what the owner decides goes through this aggregate (one per user), so
//! that a rebuild from the log marks the same ones read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Marks `ids` read, and with `all`, every notification up to `at`.
    #[serde(rename = "inbox.mark_read")]
    MarkRead {
        user_id: Uuid,
        ids: Vec<Uuid>,
        all: bool,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// `ids` are read; with `all_until`, every notification created up to
    /// that instant too (a time, not "what the read model had": a rebuild
    /// marks the same ones).
    #[serde(rename = "inbox.marked_read")]
    MarkedRead {
        user_id: Uuid,
        ids: Vec<Uuid>,
        all_until: Option<DateTime<Utc>>,
        marked_at: DateTime<Utc>,
    },
}

/// Nothing to remember: marking read is always acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match *self {}
    }

    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

pub fn decide(command: &Command, _state: &State) -> Result<Vec<Event>, Error> {
    match command {
        Command::MarkRead {
            ids, all: false, ..
        } if ids.is_empty() => Ok(vec![]),
        Command::MarkRead {
            user_id,
            ids,
            all,
            at,
        } => Ok(vec![Event::MarkedRead {
            user_id: *user_id,
            ids: ids.clone(),
            all_until: all.then_some(*at),
            marked_at: *at,
        }]),
    }
}

pub fn evolve(state: State, _event: &Event) -> State {
    state
}

/// The inbox decider, for the runtime.
pub struct InboxDecider;

impl crate::Decider for InboxDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &["inbox.marked_read"];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::MarkRead { .. } => "inbox.mark_read",
        }
    }

    fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
        decide(command, state)
    }

    fn evolve(state: State, event: &Event) -> State {
        evolve(state, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn marking_nothing_appends_nothing() {
        let nothing = Command::MarkRead {
            user_id: Uuid::from_u128(1),
            ids: vec![],
            all: false,
            at: at(),
        };
        testing::given([], evolve).when(nothing, decide).then([]);
    }

    #[test]
    fn marking_all_marks_up_to_the_instant_of_the_command() {
        let all = Command::MarkRead {
            user_id: Uuid::from_u128(1),
            ids: vec![],
            all: true,
            at: at(),
        };
        testing::given([], evolve)
            .when(all, decide)
            .then([Event::MarkedRead {
                user_id: Uuid::from_u128(1),
                ids: vec![],
                all_until: Some(at()),
                marked_at: at(),
            }]);
    }
}
