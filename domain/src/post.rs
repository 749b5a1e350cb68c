//! A post: its text and visibility, who reacted to it and how, and its
//! comments.
//!
//! Reactions and comments are decided by the post itself, so that one
//! writer (the owner of the post's partition) sees every reaction and
//! comment in order: one reaction per user, counts that are exact however
//! many users react at once, and nothing added to a deleted post.
//!
//! Who may *see* a post (`followers` visibility) is a question about follows,
//! which are other aggregates: the API answers it from the read models
//! before it sends a command, as it does for any read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

/// Who may see a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Anyone signed in.
    Public,
    /// The author and the author's followers.
    Followers,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Followers => "followers",
        }
    }
}

/// A reaction to a post; a like is one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    Like,
    Love,
    Haha,
    Wow,
    Sad,
    Angry,
}

impl Reaction {
    pub const ALL: [Reaction; 6] = [
        Reaction::Like,
        Reaction::Love,
        Reaction::Haha,
        Reaction::Wow,
        Reaction::Sad,
        Reaction::Angry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reaction::Like => "like",
            Reaction::Love => "love",
            Reaction::Haha => "haha",
            Reaction::Wow => "wow",
            Reaction::Sad => "sad",
            Reaction::Angry => "angry",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    #[serde(rename = "post.create")]
    Create(Create),
    /// Only the author deletes a post.
    #[serde(rename = "post.delete")]
    Delete { by: Uuid, at: DateTime<Utc> },
    /// Sets the user's one reaction, replacing another one.
    #[serde(rename = "post.react")]
    React {
        user: Uuid,
        reaction: Reaction,
        at: DateTime<Utc>,
    },
    /// Takes the user's reaction back; with `only`, only if it is that one
    /// (`DELETE /like` leaves a `love` alone).
    #[serde(rename = "post.unreact")]
    Unreact {
        user: Uuid,
        only: Option<Reaction>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "post.comment")]
    Comment(AddComment),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    pub post_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub visibility: Visibility,
    /// Media items the post shows, in order; each was attached to the post
    /// by its own decider first (`media.attach`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddComment {
    pub comment_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "post.created")]
    Created(Created),
    #[serde(rename = "post.deleted")]
    Deleted(Deleted),
    #[serde(rename = "post.reacted")]
    Reacted(Reacted),
    #[serde(rename = "post.unreacted")]
    Unreacted(Unreacted),
    #[serde(rename = "post.commented")]
    Commented(Commented),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub post_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub visibility: Visibility,
    /// The media items it shows, in order (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub post_id: Uuid,
    pub author: Uuid,
    pub deleted_at: DateTime<Utc>,
}

/// A user's reaction, and the one it replaced (whose count goes down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reacted {
    pub post_id: Uuid,
    /// The post's author: who is notified.
    pub post_author: Uuid,
    pub user: Uuid,
    pub reaction: Reaction,
    pub previous: Option<Reaction>,
    pub reacted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreacted {
    pub post_id: Uuid,
    pub user: Uuid,
    pub reaction: Reaction,
    pub unreacted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commented {
    pub post_id: Uuid,
    /// The post's author: who is notified.
    pub post_author: Uuid,
    pub comment_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub commented_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Unwritten,
    Live(Post),
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    pub post_id: Uuid,
    pub author: Uuid,
    pub visibility: Visibility,
    /// Each user's one reaction.
    pub reactions: BTreeMap<Uuid, Reaction>,
    pub comment_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `post_exists`: the id is taken.
    #[error("this post already exists")]
    AlreadyExists,
    /// 404 `post_not_found`: no such post, or it was deleted.
    #[error("no such post")]
    NotFound,
    /// 403 `not_post_author`: only the author deletes a post.
    #[error("only the author may do this")]
    NotAuthor,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::AlreadyExists => "post_exists",
            Error::NotFound => "post_not_found",
            Error::NotAuthor => "not_post_author",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::AlreadyExists => ErrorKind::Conflict,
            Error::NotFound => ErrorKind::NotFound,
            Error::NotAuthor => ErrorKind::Forbidden,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    let post = match (command, state) {
        (Command::Create(c), State::Unwritten) => {
            return Ok(vec![Event::Created(Created {
                post_id: c.post_id,
                author: c.author,
                text: c.text.clone(),
                visibility: c.visibility,
                media: c.media.clone(),
                created_at: c.at,
            })])
        }
        (Command::Create(_), _) => return Err(Error::AlreadyExists),
        // Deleting twice is deleting once: a retried DELETE is harmless.
        (Command::Delete { .. }, State::Deleted) => return Ok(vec![]),
        (_, State::Live(post)) => post,
        (_, State::Unwritten | State::Deleted) => return Err(Error::NotFound),
    };
    match command {
        Command::Create(_) => unreachable!("decided above"),
        Command::Delete { by, at } if *by == post.author => Ok(vec![Event::Deleted(Deleted {
            post_id: post.post_id,
            author: post.author,
            deleted_at: *at,
        })]),
        Command::Delete { .. } => Err(Error::NotAuthor),
        Command::React { user, reaction, at } => {
            let previous = post.reactions.get(user).copied();
            if previous == Some(*reaction) {
                return Ok(vec![]);
            }
            Ok(vec![Event::Reacted(Reacted {
                post_id: post.post_id,
                post_author: post.author,
                user: *user,
                reaction: *reaction,
                previous,
                reacted_at: *at,
            })])
        }
        Command::Unreact { user, only, at } => match post.reactions.get(user) {
            Some(reaction) if only.is_none_or(|only| only == *reaction) => {
                Ok(vec![Event::Unreacted(Unreacted {
                    post_id: post.post_id,
                    user: *user,
                    reaction: *reaction,
                    unreacted_at: *at,
                })])
            }
            _ => Ok(vec![]),
        },
        Command::Comment(c) => Ok(vec![Event::Commented(Commented {
            post_id: post.post_id,
            post_author: post.author,
            comment_id: c.comment_id,
            author: c.author,
            text: c.text.clone(),
            commented_at: c.at,
        })]),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::Unwritten, Event::Created(c)) => State::Live(Post {
            post_id: c.post_id,
            author: c.author,
            visibility: c.visibility,
            reactions: BTreeMap::new(),
            comment_count: 0,
        }),
        (State::Live(_), Event::Deleted(_)) => State::Deleted,
        (State::Live(mut post), Event::Reacted(r)) => {
            post.reactions.insert(r.user, r.reaction);
            State::Live(post)
        }
        (State::Live(mut post), Event::Unreacted(u)) => {
            post.reactions.remove(&u.user);
            State::Live(post)
        }
        (State::Live(mut post), Event::Commented(_)) => {
            post.comment_count += 1;
            State::Live(post)
        }
        // The sequence rule admits only events that follow the state they
        // were decided on; keep the state for any other pair.
        (state, _) => state,
    }
}

/// The post decider, for the runtime.
pub struct PostDecider;

impl crate::Decider for PostDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &[
        "post.created",
        "post.deleted",
        "post.reacted",
        "post.unreacted",
        "post.commented",
    ];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Create(_) => "post.create",
            Command::Delete { .. } => "post.delete",
            Command::React { .. } => "post.react",
            Command::Unreact { .. } => "post.unreact",
            Command::Comment(_) => "post.comment",
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

    fn post_id() -> Uuid {
        Uuid::from_u128(10)
    }

    fn alice() -> Uuid {
        Uuid::from_u128(1)
    }

    fn bob() -> Uuid {
        Uuid::from_u128(2)
    }

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    fn created() -> Event {
        Event::Created(Created {
            post_id: post_id(),
            author: alice(),
            text: "hello".into(),
            visibility: Visibility::Public,
            media: vec![],
            created_at: at(),
        })
    }

    fn deleted() -> Event {
        Event::Deleted(Deleted {
            post_id: post_id(),
            author: alice(),
            deleted_at: at(),
        })
    }

    fn react(user: Uuid, reaction: Reaction) -> Command {
        Command::React {
            user,
            reaction,
            at: at(),
        }
    }

    fn reacted(user: Uuid, reaction: Reaction, previous: Option<Reaction>) -> Event {
        Event::Reacted(Reacted {
            post_id: post_id(),
            post_author: alice(),
            user,
            reaction,
            previous,
            reacted_at: at(),
        })
    }

    fn unreact(user: Uuid, only: Option<Reaction>) -> Command {
        Command::Unreact {
            user,
            only,
            at: at(),
        }
    }

    #[test]
    fn creating_a_post_writes_it() {
        let create = Command::Create(Create {
            post_id: post_id(),
            author: alice(),
            text: "hello".into(),
            visibility: Visibility::Public,
            media: vec![],
            at: at(),
        });
        given([]).when(create.clone(), decide).then([created()]);
        given([created()])
            .when(create, decide)
            .then_err(Error::AlreadyExists);
    }

    #[test]
    fn only_the_author_deletes_a_post_and_deleting_again_is_harmless() {
        let delete = |by| Command::Delete { by, at: at() };
        given([created()])
            .when(delete(bob()), decide)
            .then_err(Error::NotAuthor);
        given([created()])
            .when(delete(alice()), decide)
            .then([deleted()]);
        given([created(), deleted()])
            .when(delete(alice()), decide)
            .then([]);
    }

    #[test]
    fn liking_twice_counts_once() {
        given([created()])
            .when(react(bob(), Reaction::Like), decide)
            .then([reacted(bob(), Reaction::Like, None)]);
        given([created(), reacted(bob(), Reaction::Like, None)])
            .when(react(bob(), Reaction::Like), decide)
            .then([]);
    }

    #[test]
    fn changing_a_reaction_names_the_one_it_replaces() {
        given([created(), reacted(bob(), Reaction::Like, None)])
            .when(react(bob(), Reaction::Love), decide)
            .then([reacted(bob(), Reaction::Love, Some(Reaction::Like))]);
    }

    #[test]
    fn unliking_takes_back_only_a_like() {
        let loved = reacted(bob(), Reaction::Love, None);
        given([created(), loved.clone()])
            .when(unreact(bob(), Some(Reaction::Like)), decide)
            .then([]);
        given([created(), loved])
            .when(unreact(bob(), None), decide)
            .then([Event::Unreacted(Unreacted {
                post_id: post_id(),
                user: bob(),
                reaction: Reaction::Love,
                unreacted_at: at(),
            })]);
        given([created()])
            .when(unreact(bob(), None), decide)
            .then([]);
    }

    #[test]
    fn a_deleted_post_takes_no_reaction_or_comment() {
        given([created(), deleted()])
            .when(react(bob(), Reaction::Like), decide)
            .then_err(Error::NotFound);
        let comment = Command::Comment(AddComment {
            comment_id: Uuid::from_u128(20),
            author: bob(),
            text: "hi".into(),
            at: at(),
        });
        given([created(), deleted()])
            .when(comment.clone(), decide)
            .then_err(Error::NotFound);
        given([]).when(comment, decide).then_err(Error::NotFound);
    }

    #[test]
    fn a_comment_names_the_post_author_to_notify() {
        let comment = Command::Comment(AddComment {
            comment_id: Uuid::from_u128(20),
            author: bob(),
            text: "hi".into(),
            at: at(),
        });
        given([created()])
            .when(comment, decide)
            .then([Event::Commented(Commented {
                post_id: post_id(),
                post_author: alice(),
                comment_id: Uuid::from_u128(20),
                author: bob(),
                text: "hi".into(),
                commented_at: at(),
            })]);
    }

    #[test]
    fn two_hundred_users_liking_make_two_hundred_reactions() {
        let state = (0..200u128).fold(evolve(State::default(), &created()), |state, n| {
            let events = decide(&react(Uuid::from_u128(1000 + n), Reaction::Like), &state).unwrap();
            events.iter().fold(state, evolve)
        });
        let State::Live(post) = state else {
            panic!("not live")
        };
        assert_eq!(post.reactions.len(), 200);
    }
}
