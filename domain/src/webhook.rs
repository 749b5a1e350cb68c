//! A webhook endpoint: where the dispatcher posts the events its owner
//! asked for. One aggregate per endpoint (its id), so registering,
//! deleting and disabling it are decided by its one writer.
//!
//! The endpoint's secret is not here: it never enters the log (the API
//! keeps it beside the read model, and only the dispatcher reads it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

/// Which events of its types an endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Those that concern its owner: their own doings, their account, their
    /// posts, rooms they belong to, follows of or by them.
    Own,
    /// Every event of its types (admins only).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    #[serde(rename = "webhook.register")]
    Register(Registration),
    #[serde(rename = "webhook.delete")]
    Delete {
        by: Uuid,
        /// Whether `by` is an admin, who may delete any endpoint.
        admin: bool,
        at: DateTime<Utc>,
    },
    /// From the dispatcher, when deliveries have failed for too long.
    #[serde(rename = "webhook.disable")]
    Disable { reason: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub owner: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub scope: Scope,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "webhook.registered")]
    Registered {
        owner: Uuid,
        url: String,
        events: Vec<String>,
        scope: Scope,
        registered_at: DateTime<Utc>,
    },
    #[serde(rename = "webhook.deleted")]
    Deleted { by: Uuid, deleted_at: DateTime<Utc> },
    #[serde(rename = "webhook.disabled")]
    Disabled {
        reason: String,
        disabled_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Unregistered,
    Active {
        owner: Uuid,
    },
    Disabled {
        owner: Uuid,
    },
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `webhook_exists`: an endpoint id is registered once.
    #[error("this webhook is already registered")]
    Exists,
    /// 404 `webhook_not_found`: never registered, or deleted (also for
    /// another user's endpoint: it may not be seen).
    #[error("no such webhook")]
    NotFound,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::Exists => "webhook_exists",
            Error::NotFound => "webhook_not_found",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::Exists => ErrorKind::Conflict,
            Error::NotFound => ErrorKind::NotFound,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    match (command, state) {
        (Command::Register(r), State::Unregistered) => Ok(vec![Event::Registered {
            owner: r.owner,
            url: r.url.clone(),
            events: r.events.clone(),
            scope: r.scope,
            registered_at: r.at,
        }]),
        (Command::Register(_), _) => Err(Error::Exists),
        (
            Command::Delete { by, admin, at },
            State::Active { owner } | State::Disabled { owner },
        ) if by == owner || *admin => Ok(vec![Event::Deleted {
            by: *by,
            deleted_at: *at,
        }]),
        (Command::Delete { .. }, _) => Err(Error::NotFound),
        (Command::Disable { reason, at }, State::Active { .. }) => Ok(vec![Event::Disabled {
            reason: reason.clone(),
            disabled_at: *at,
        }]),
        // Disabled already, or gone: nothing more to do.
        (Command::Disable { .. }, _) => Ok(vec![]),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (event, state) {
        (Event::Registered { owner, .. }, _) => State::Active { owner: *owner },
        (Event::Deleted { .. }, _) => State::Deleted,
        (Event::Disabled { .. }, State::Active { owner }) => State::Disabled { owner },
        (Event::Disabled { .. }, state) => state,
    }
}

/// The webhook decider, for the runtime.
pub struct WebhookDecider;

impl crate::Decider for WebhookDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] =
        &["webhook.registered", "webhook.deleted", "webhook.disabled"];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Register(_) => "webhook.register",
            Command::Delete { .. } => "webhook.delete",
            Command::Disable { .. } => "webhook.disable",
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

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn owner() -> Uuid {
        Uuid::from_u128(1)
    }

    fn register() -> Command {
        Command::Register(Registration {
            owner: owner(),
            url: "https://hooks.example/in".into(),
            events: vec!["post.created".into()],
            scope: Scope::Own,
            at: at(),
        })
    }

    fn registered() -> Event {
        Event::Registered {
            owner: owner(),
            url: "https://hooks.example/in".into(),
            events: vec!["post.created".into()],
            scope: Scope::Own,
            registered_at: at(),
        }
    }

    #[test]
    fn a_new_endpoint_is_registered_once() {
        given([]).when(register(), decide).then([registered()]);
        given([registered()])
            .when(register(), decide)
            .then_err(Error::Exists);
    }

    #[test]
    fn only_its_owner_or_an_admin_deletes_it() {
        let stranger = Uuid::from_u128(2);
        given([registered()])
            .when(
                Command::Delete {
                    by: stranger,
                    admin: false,
                    at: at(),
                },
                decide,
            )
            .then_err(Error::NotFound);
        given([registered()])
            .when(
                Command::Delete {
                    by: stranger,
                    admin: true,
                    at: at(),
                },
                decide,
            )
            .then([Event::Deleted {
                by: stranger,
                deleted_at: at(),
            }]);
        given([registered()])
            .when(
                Command::Delete {
                    by: owner(),
                    admin: false,
                    at: at(),
                },
                decide,
            )
            .then([Event::Deleted {
                by: owner(),
                deleted_at: at(),
            }]);
    }

    #[test]
    fn a_deleted_endpoint_is_gone() {
        let deleted = Event::Deleted {
            by: owner(),
            deleted_at: at(),
        };
        given([registered(), deleted.clone()])
            .when(
                Command::Delete {
                    by: owner(),
                    admin: false,
                    at: at(),
                },
                decide,
            )
            .then_err(Error::NotFound);
        given([registered(), deleted])
            .when(register(), decide)
            .then_err(Error::Exists);
    }

    #[test]
    fn disabling_happens_once_and_the_owner_may_still_delete() {
        let disable = Command::Disable {
            reason: "failing since yesterday".into(),
            at: at(),
        };
        let disabled = Event::Disabled {
            reason: "failing since yesterday".into(),
            disabled_at: at(),
        };
        given([registered()])
            .when(disable.clone(), decide)
            .then([disabled.clone()]);
        given([registered(), disabled.clone()])
            .when(disable.clone(), decide)
            .then([]);
        given([registered(), disabled])
            .when(
                Command::Delete {
                    by: owner(),
                    admin: false,
                    at: at(),
                },
                decide,
            )
            .then([Event::Deleted {
                by: owner(),
                deleted_at: at(),
            }]);
    }
}
