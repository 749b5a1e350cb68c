//! Realtime channels (API.md, "WebSocket"): their names on the wire and who
//! may read them, in one place. The projector addresses updates to a
//! [`Channel`]; the gateway parses what clients subscribe to into one and
//! asks its [`ReadPolicy`].

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `user:{id}`: a user's own notifications, direct messages and the
    /// messages of their rooms.
    User(Uuid),
    /// `room:{id}`: a room's messages and receipts.
    Room(Uuid),
    /// `post:{id}`: a post's like and comment counts.
    Post(Uuid),
}

/// Who may read a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Only this user.
    Owner(Uuid),
    /// The room's participants; anyone signed in for a public room.
    RoomReaders(Uuid),
    /// Whoever may see the post.
    PostViewers(Uuid),
}

impl Channel {
    pub fn read_policy(self) -> ReadPolicy {
        match self {
            Channel::User(id) => ReadPolicy::Owner(id),
            Channel::Room(id) => ReadPolicy::RoomReaders(id),
            Channel::Post(id) => ReadPolicy::PostViewers(id),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::User(id) => write!(f, "user:{id}"),
            Channel::Room(id) => write!(f, "room:{id}"),
            Channel::Post(id) => write!(f, "post:{id}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a channel: expected user:<id>, room:<id> or post:<id>")]
pub struct InvalidChannel;

impl FromStr for Channel {
    type Err = InvalidChannel;

    fn from_str(name: &str) -> Result<Self, InvalidChannel> {
        let (kind, id) = name.split_once(':').ok_or(InvalidChannel)?;
        let id: Uuid = id.parse().map_err(|_| InvalidChannel)?;
        match kind {
            "user" => Ok(Channel::User(id)),
            "room" => Ok(Channel::Room(id)),
            "post" => Ok(Channel::Post(id)),
            _ => Err(InvalidChannel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_reads_back_from_its_name() {
        let id = Uuid::from_u128(5);
        for channel in [Channel::User(id), Channel::Room(id), Channel::Post(id)] {
            assert_eq!(channel.to_string().parse::<Channel>(), Ok(channel));
        }
    }

    #[test]
    fn other_names_are_refused() {
        for name in [
            "user:",
            "user:x",
            "feed:00000000-0000-0000-0000-000000000005",
            "user",
        ] {
            assert_eq!(name.parse::<Channel>(), Err(InvalidChannel));
        }
    }

    #[test]
    fn a_user_channel_is_its_owners_alone() {
        let id = Uuid::from_u128(5);
        assert_eq!(Channel::User(id).read_policy(), ReadPolicy::Owner(id));
    }
}
