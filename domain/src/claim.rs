//! A claim on a unique value: one aggregate per normalized email and per
//! normalized username, keyed by that value.
//!
//! Two registrations that race for the same email send their claims to the
//! same aggregate, hence the same partition and the same single writer: the
//! first claim in log order wins and every later one is rejected. No read
//! model is consulted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

/// What is being claimed; it picks the error code of a lost race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Username,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Email => "email",
            Kind::Username => "username",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Claim the value for `owner`. Claiming again for the same owner is a
    /// no-op, so a retried registration goes through.
    #[serde(rename = "claim.claim")]
    Claim { kind: Kind, owner: Uuid },
    /// Give the value back: a registration that lost its other claim undoes
    /// this one. Only the owner may release.
    #[serde(rename = "claim.release")]
    Release { kind: Kind, owner: Uuid },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "claim.claimed")]
    Claimed { kind: Kind, owner: Uuid },
    #[serde(rename = "claim.released")]
    Released { kind: Kind, owner: Uuid },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Free,
    ClaimedBy(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `email_taken` or `username_taken`.
    #[error("this {0} is already taken")]
    Taken(Kind),
    /// 403 `not_claim_owner`: only the owner may release a claim.
    #[error("only the owner may release this claim")]
    NotOwner,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::Taken(Kind::Email) => "email_taken",
            Error::Taken(Kind::Username) => "username_taken",
            Error::NotOwner => "not_claim_owner",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::Taken(_) => ErrorKind::Conflict,
            Error::NotOwner => ErrorKind::Forbidden,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    match (command, state) {
        (&Command::Claim { kind, owner }, State::Free) => Ok(vec![Event::Claimed { kind, owner }]),
        (Command::Claim { owner, .. }, State::ClaimedBy(holder)) if owner == holder => Ok(vec![]),
        (&Command::Claim { kind, .. }, State::ClaimedBy(_)) => Err(Error::Taken(kind)),
        (Command::Release { .. }, State::Free) => Ok(vec![]),
        (&Command::Release { kind, owner }, State::ClaimedBy(holder)) if owner == *holder => {
            Ok(vec![Event::Released { kind, owner }])
        }
        (Command::Release { .. }, State::ClaimedBy(_)) => Err(Error::NotOwner),
    }
}

/// A claim's state is wholly given by its last event.
pub fn evolve(_state: State, event: &Event) -> State {
    match event {
        Event::Claimed { owner, .. } => State::ClaimedBy(*owner),
        Event::Released { .. } => State::Free,
    }
}

/// The claim decider, for the runtime.
pub struct ClaimDecider;

impl crate::Decider for ClaimDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &["claim.claimed", "claim.released"];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Claim { .. } => "claim.claim",
            Command::Release { .. } => "claim.release",
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

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    const EMAIL: Kind = Kind::Email;

    fn alice() -> Uuid {
        Uuid::from_u128(1)
    }

    fn bob() -> Uuid {
        Uuid::from_u128(2)
    }

    #[test]
    fn a_free_value_can_be_claimed() {
        given([])
            .when(
                Command::Claim {
                    kind: EMAIL,
                    owner: alice(),
                },
                decide,
            )
            .then([Event::Claimed {
                kind: EMAIL,
                owner: alice(),
            }]);
    }

    #[test]
    fn a_value_claimed_by_another_is_taken() {
        given([Event::Claimed {
            kind: EMAIL,
            owner: alice(),
        }])
        .when(
            Command::Claim {
                kind: EMAIL,
                owner: bob(),
            },
            decide,
        )
        .then_err(Error::Taken(EMAIL));
    }

    #[test]
    fn the_error_code_names_what_was_taken() {
        assert_eq!(Error::Taken(Kind::Email).code(), "email_taken");
        assert_eq!(Error::Taken(Kind::Username).code(), "username_taken");
    }

    #[test]
    fn claiming_again_for_the_same_owner_appends_nothing() {
        given([Event::Claimed {
            kind: EMAIL,
            owner: alice(),
        }])
        .when(
            Command::Claim {
                kind: EMAIL,
                owner: alice(),
            },
            decide,
        )
        .then([]);
    }

    #[test]
    fn a_released_value_can_be_claimed_by_another() {
        given([
            Event::Claimed {
                kind: EMAIL,
                owner: alice(),
            },
            Event::Released {
                kind: EMAIL,
                owner: alice(),
            },
        ])
        .when(
            Command::Claim {
                kind: EMAIL,
                owner: bob(),
            },
            decide,
        )
        .then([Event::Claimed {
            kind: EMAIL,
            owner: bob(),
        }]);
    }

    #[test]
    fn only_the_owner_may_release() {
        given([Event::Claimed {
            kind: EMAIL,
            owner: alice(),
        }])
        .when(
            Command::Release {
                kind: EMAIL,
                owner: bob(),
            },
            decide,
        )
        .then_err(Error::NotOwner);
    }

    #[test]
    fn releasing_a_free_value_appends_nothing() {
        given([])
            .when(
                Command::Release {
                    kind: EMAIL,
                    owner: alice(),
                },
                decide,
            )
            .then([]);
    }
}
