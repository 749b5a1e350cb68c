//! A follow: whether one user follows another. One aggregate per pair
//! (`<follower>:<followee>`), so following and unfollowing are decided by
//! the pair's one writer and are idempotent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    #[serde(rename = "follow.follow")]
    Follow(Pair),
    #[serde(rename = "follow.unfollow")]
    Unfollow(Pair),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub follower: Uuid,
    pub followee: Uuid,
    pub at: DateTime<Utc>,
}

impl Pair {
    /// The id of the pair's aggregate.
    pub fn aggregate_id(follower: Uuid, followee: Uuid) -> String {
        format!("{follower}:{followee}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "follow.followed")]
    Followed {
        follower: Uuid,
        followee: Uuid,
        followed_at: DateTime<Utc>,
    },
    #[serde(rename = "follow.unfollowed")]
    Unfollowed {
        follower: Uuid,
        followee: Uuid,
        unfollowed_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    NotFollowing,
    Following,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 422 `cannot_follow_self`.
    #[error("you cannot follow yourself")]
    SelfFollow,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::SelfFollow => "cannot_follow_self",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::SelfFollow => ErrorKind::Invalid,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    match (command, state) {
        (Command::Follow(p), _) if p.follower == p.followee => Err(Error::SelfFollow),
        (Command::Follow(p), State::NotFollowing) => Ok(vec![Event::Followed {
            follower: p.follower,
            followee: p.followee,
            followed_at: p.at,
        }]),
        (Command::Unfollow(p), State::Following) => Ok(vec![Event::Unfollowed {
            follower: p.follower,
            followee: p.followee,
            unfollowed_at: p.at,
        }]),
        // Following twice, or unfollowing whom one does not follow, changes
        // nothing: PUT and DELETE are idempotent.
        (Command::Follow(_), State::Following) | (Command::Unfollow(_), State::NotFollowing) => {
            Ok(vec![])
        }
    }
}

pub fn evolve(_state: State, event: &Event) -> State {
    match event {
        Event::Followed { .. } => State::Following,
        Event::Unfollowed { .. } => State::NotFollowing,
    }
}

/// The follow decider, for the runtime.
pub struct FollowDecider;

impl crate::Decider for FollowDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &["follow.followed", "follow.unfollowed"];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Follow(_) => "follow.follow",
            Command::Unfollow(_) => "follow.unfollow",
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

    fn pair(follower: u128, followee: u128) -> Pair {
        Pair {
            follower: Uuid::from_u128(follower),
            followee: Uuid::from_u128(followee),
            at: at(),
        }
    }

    fn followed() -> Event {
        Event::Followed {
            follower: Uuid::from_u128(1),
            followee: Uuid::from_u128(2),
            followed_at: at(),
        }
    }

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    #[test]
    fn following_is_idempotent() {
        given([])
            .when(Command::Follow(pair(1, 2)), decide)
            .then([followed()]);
        given([followed()])
            .when(Command::Follow(pair(1, 2)), decide)
            .then([]);
    }

    #[test]
    fn unfollowing_is_idempotent() {
        given([followed()])
            .when(Command::Unfollow(pair(1, 2)), decide)
            .then([Event::Unfollowed {
                follower: Uuid::from_u128(1),
                followee: Uuid::from_u128(2),
                unfollowed_at: at(),
            }]);
        given([])
            .when(Command::Unfollow(pair(1, 2)), decide)
            .then([]);
    }

    #[test]
    fn following_oneself_is_rejected() {
        given([])
            .when(Command::Follow(pair(1, 1)), decide)
            .then_err(Error::SelfFollow);
    }
}
