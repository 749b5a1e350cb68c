//! A media item: an uploaded image or video, its owner, and whether a post
//! or a message uses it.
//!
//! The bytes live in an object store; the log only records that they were
//! stored (`media.uploaded`, written after the object is), that a post or a
//! message took the item (`media.attached`), and that the sweeper removed
//! an item nothing ever took (`media.deleted`). Attaching and deleting are
//! decided by the item itself, so a post that takes an item and a sweeper
//! that removes it cannot both win: whichever the item's decider sees
//! first, the other is refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

/// What the API stored, measured and named, for `media.upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub media_id: Uuid,
    pub owner: Uuid,
    /// Sniffed from the bytes: `image/png`, `image/jpeg`, `image/gif`,
    /// `image/webp` or `video/mp4`.
    pub content_type: String,
    pub size: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Hex SHA-256 of the bytes (the strong `ETag`).
    pub sha256: String,
    /// The object's key in the media store.
    pub object_key: String,
    /// The thumbnail's key (images only), and its content type.
    pub thumbnail_key: Option<String>,
    pub thumbnail_content_type: Option<String>,
}

/// What takes a media item: written as `post_id` or `message_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    #[serde(rename = "post_id")]
    Post(Uuid),
    #[serde(rename = "message_id")]
    Message(Uuid),
}

impl Holder {
    pub fn id(self) -> Uuid {
        match self {
            Holder::Post(id) | Holder::Message(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Records an item whose objects are stored.
    #[serde(rename = "media.upload")]
    Upload { stored: Stored, at: DateTime<Utc> },
    /// A post or message of `by` takes the item; only its owner's may.
    #[serde(rename = "media.attach")]
    Attach {
        #[serde(flatten)]
        holder: Holder,
        by: Uuid,
        at: DateTime<Utc>,
    },
    /// Removes an item that nothing took (the sweeper's).
    #[serde(rename = "media.delete")]
    Delete { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "media.uploaded")]
    Uploaded(Uploaded),
    #[serde(rename = "media.attached")]
    Attached(Attached),
    #[serde(rename = "media.deleted")]
    Deleted(Deleted),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    #[serde(flatten)]
    pub stored: Stored,
    pub uploaded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub media_id: Uuid,
    #[serde(flatten)]
    pub holder: Holder,
    pub attached_at: DateTime<Utc>,
}

/// The item is gone: its objects are to be removed from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub media_id: Uuid,
    pub owner: Uuid,
    pub object_key: String,
    pub thumbnail_key: Option<String>,
    pub deleted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Unwritten,
    Live(Media),
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub media_id: Uuid,
    pub owner: Uuid,
    pub object_key: String,
    pub thumbnail_key: Option<String>,
    /// The posts and messages that took it, in order; an item in use is
    /// never deleted.
    pub posts: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `media_exists`: the id is taken.
    #[error("this media item already exists")]
    AlreadyExists,
    /// 404 `media_not_found`: no such item (a post naming it answers 422).
    #[error("no such media item")]
    NotFound,
    /// 404 `media_deleted`: the item was removed, unused.
    #[error("this media item was deleted")]
    Gone,
    /// 403 `not_media_owner`: only the owner's posts take an item.
    #[error("this media item belongs to someone else")]
    NotOwner,
    /// 409 `media_in_use`: a post took the item; it is kept.
    #[error("a post uses this media item")]
    InUse,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::AlreadyExists => "media_exists",
            Error::NotFound => "media_not_found",
            Error::Gone => "media_deleted",
            Error::NotOwner => "not_media_owner",
            Error::InUse => "media_in_use",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::AlreadyExists | Error::InUse => ErrorKind::Conflict,
            Error::NotFound | Error::Gone => ErrorKind::NotFound,
            Error::NotOwner => ErrorKind::Forbidden,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    let media = match (command, state) {
        (Command::Upload { stored, at }, State::Unwritten) => {
            return Ok(vec![Event::Uploaded(Uploaded {
                stored: stored.clone(),
                uploaded_at: *at,
            })])
        }
        (Command::Upload { .. }, _) => return Err(Error::AlreadyExists),
        (_, State::Unwritten) => return Err(Error::NotFound),
        // Deleting twice is deleting once: a sweeper that retries is harmless.
        (Command::Delete { .. }, State::Deleted) => return Ok(vec![]),
        (_, State::Deleted) => return Err(Error::Gone),
        (_, State::Live(media)) => media,
    };
    match command {
        Command::Upload { .. } => unreachable!("decided above"),
        Command::Attach { by, .. } if *by != media.owner => Err(Error::NotOwner),
        // A retried post or message takes the item once.
        Command::Attach { holder, .. } if media.posts.contains(&holder.id()) => Ok(vec![]),
        Command::Attach { holder, at, .. } => Ok(vec![Event::Attached(Attached {
            media_id: media.media_id,
            holder: *holder,
            attached_at: *at,
        })]),
        Command::Delete { .. } if !media.posts.is_empty() => Err(Error::InUse),
        Command::Delete { at } => Ok(vec![Event::Deleted(Deleted {
            media_id: media.media_id,
            owner: media.owner,
            object_key: media.object_key.clone(),
            thumbnail_key: media.thumbnail_key.clone(),
            deleted_at: *at,
        })]),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::Unwritten, Event::Uploaded(u)) => State::Live(Media {
            media_id: u.stored.media_id,
            owner: u.stored.owner,
            object_key: u.stored.object_key.clone(),
            thumbnail_key: u.stored.thumbnail_key.clone(),
            posts: Vec::new(),
        }),
        (State::Live(mut media), Event::Attached(a)) => {
            media.posts.push(a.holder.id());
            State::Live(media)
        }
        (State::Live(_), Event::Deleted(_)) => State::Deleted,
        // The sequence rule admits only events that follow the state they
        // were decided on; keep the state for any other pair.
        (state, _) => state,
    }
}

/// The media decider, for the runtime.
pub struct MediaDecider;

impl crate::Decider for MediaDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] =
        &["media.uploaded", "media.attached", "media.deleted"];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Upload { .. } => "media.upload",
            Command::Attach { .. } => "media.attach",
            Command::Delete { .. } => "media.delete",
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

    fn media_id() -> Uuid {
        Uuid::from_u128(30)
    }

    fn alice() -> Uuid {
        Uuid::from_u128(1)
    }

    fn bob() -> Uuid {
        Uuid::from_u128(2)
    }

    fn post(n: u128) -> Uuid {
        Uuid::from_u128(100 + n)
    }

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    fn stored() -> Stored {
        Stored {
            media_id: media_id(),
            owner: alice(),
            content_type: "image/png".into(),
            size: 68,
            width: Some(4),
            height: Some(3),
            sha256: "ab".repeat(32),
            object_key: format!("media/{}/original", media_id()),
            thumbnail_key: Some(format!("media/{}/thumbnail", media_id())),
            thumbnail_content_type: Some("image/png".into()),
        }
    }

    fn uploaded() -> Event {
        Event::Uploaded(Uploaded {
            stored: stored(),
            uploaded_at: at(),
        })
    }

    fn attach(by: Uuid, post_id: Uuid) -> Command {
        Command::Attach {
            holder: Holder::Post(post_id),
            by,
            at: at(),
        }
    }

    fn attached(post_id: Uuid) -> Event {
        Event::Attached(Attached {
            media_id: media_id(),
            holder: Holder::Post(post_id),
            attached_at: at(),
        })
    }

    fn deleted() -> Event {
        Event::Deleted(Deleted {
            media_id: media_id(),
            owner: alice(),
            object_key: stored().object_key,
            thumbnail_key: stored().thumbnail_key,
            deleted_at: at(),
        })
    }

    fn delete() -> Command {
        Command::Delete { at: at() }
    }

    #[test]
    fn uploading_records_the_stored_item_once() {
        let upload = Command::Upload {
            stored: stored(),
            at: at(),
        };
        given([]).when(upload.clone(), decide).then([uploaded()]);
        given([uploaded()])
            .when(upload, decide)
            .then_err(Error::AlreadyExists);
    }

    #[test]
    fn only_the_owners_posts_take_an_item_and_a_retry_takes_it_once() {
        given([uploaded()])
            .when(attach(bob(), post(1)), decide)
            .then_err(Error::NotOwner);
        given([uploaded()])
            .when(attach(alice(), post(1)), decide)
            .then([attached(post(1))]);
        given([uploaded(), attached(post(1))])
            .when(attach(alice(), post(1)), decide)
            .then([]);
        given([uploaded(), attached(post(1))])
            .when(attach(alice(), post(2)), decide)
            .then([attached(post(2))]);
    }

    #[test]
    fn an_unknown_or_deleted_item_cannot_be_attached() {
        given([])
            .when(attach(alice(), post(1)), decide)
            .then_err(Error::NotFound);
        given([uploaded(), deleted()])
            .when(attach(alice(), post(1)), decide)
            .then_err(Error::Gone);
    }

    #[test]
    fn an_unused_item_is_deleted_and_deleting_again_is_harmless() {
        given([uploaded()]).when(delete(), decide).then([deleted()]);
        given([uploaded(), deleted()])
            .when(delete(), decide)
            .then([]);
        given([]).when(delete(), decide).then_err(Error::NotFound);
    }

    #[test]
    fn an_item_a_post_took_is_never_deleted() {
        given([uploaded(), attached(post(1))])
            .when(delete(), decide)
            .then_err(Error::InUse);
    }

    #[test]
    fn uploaded_reads_back_flat_as_its_schema_says() {
        let json = serde_json::to_value(uploaded()).unwrap();
        assert_eq!(json["data"]["media_id"], media_id().to_string());
        assert_eq!(json["data"]["sha256"], "ab".repeat(32));
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, uploaded());
    }

    #[test]
    fn a_message_takes_an_item_as_a_post_does_and_keeps_it_from_the_sweeper() {
        let message = Uuid::from_u128(200);
        let took = Event::Attached(Attached {
            media_id: media_id(),
            holder: Holder::Message(message),
            attached_at: at(),
        });
        let by_message = |by| Command::Attach {
            holder: Holder::Message(message),
            by,
            at: at(),
        };
        given([uploaded()])
            .when(by_message(bob()), decide)
            .then_err(Error::NotOwner);
        given([uploaded()])
            .when(by_message(alice()), decide)
            .then([took.clone()]);
        given([uploaded(), took.clone()])
            .when(by_message(alice()), decide)
            .then([]);
        given([uploaded(), took])
            .when(delete(), decide)
            .then_err(Error::InUse);
    }

    #[test]
    fn attached_names_its_holder_as_a_flat_field() {
        let json = serde_json::to_value(attached(post(1))).unwrap();
        assert_eq!(json["data"]["post_id"], post(1).to_string());
        assert!(json["data"].get("message_id").is_none());
        let message = Event::Attached(Attached {
            media_id: media_id(),
            holder: Holder::Message(post(2)),
            attached_at: at(),
        });
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["data"]["message_id"], post(2).to_string());
        assert!(json["data"].get("post_id").is_none());
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }
}
