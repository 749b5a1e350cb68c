//! A room: who is in it and with what role, who is invited, and its
//! messages. A direct conversation between two users is a room too (kind
//! `direct`), with an id derived from the pair ([`direct_id`]), so that the
//! first messages two users send each other at once land in one
//! conversation: one aggregate, one writer.
//!
//! Everything about a room is decided here, by the owner of the room's
//! partition, in order: joins against `max_participants` (exactly that many
//! get in however many try at once), roles, invitations, moderation, and
//! who may post, edit, delete and mark read. The API only checks field
//! shapes and whether the users it names exist.
//!
//! Roles (the README's "Rooms" section has the table): the owner does
//! everything, promotes and demotes admins and may hand the room over; an
//! admin edits the room, removes members and deletes their messages; a
//! member posts, edits and deletes their own messages. A private room (and
//! every direct conversation) is invisible to non-participants: every
//! command of theirs on it is answered as for a room that does not exist.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorKind, Rejection};

/// The most participants a room may have: every message is pushed to each
/// participant's channel, so this bounds the fan-out of one message.
pub const MAX_PARTICIPANTS: u32 = 1000;
/// The longest message, in characters.
pub const MAX_MESSAGE: usize = 5000;

/// The namespace of direct conversations' ids.
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x5e1d_40a2_9c3b_4e27_8f61_d1a3_c7a0_0d1e);

/// The id of the direct conversation of two users, whoever writes first.
pub fn direct_id(a: Uuid, b: Uuid) -> Uuid {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    Uuid::new_v5(&DIRECT_NAMESPACE, format!("{low}:{high}").as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A named room that users join, public or private.
    Group,
    /// The two-person conversation of `POST /api/dm/{user_id}/messages`.
    Direct,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Owner or admin: edits the room, removes members, deletes messages.
    fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    #[serde(rename = "room.create")]
    Create(Create),
    #[serde(rename = "room.update")]
    Update(Update),
    #[serde(rename = "room.join")]
    Join { user: Uuid, at: DateTime<Utc> },
    #[serde(rename = "room.invite")]
    Invite {
        by: Uuid,
        user: Uuid,
        at: DateTime<Utc>,
    },
    #[serde(rename = "room.leave")]
    Leave { user: Uuid, at: DateTime<Utc> },
    #[serde(rename = "room.remove_member")]
    RemoveMember {
        by: Uuid,
        user: Uuid,
        at: DateTime<Utc>,
    },
    /// Makes a participant an admin or a member again (owner only).
    #[serde(rename = "room.set_role")]
    SetRole {
        by: Uuid,
        user: Uuid,
        role: Role,
        at: DateTime<Utc>,
    },
    /// Hands the room to another participant; the owner becomes an admin.
    #[serde(rename = "room.transfer")]
    Transfer {
        by: Uuid,
        to: Uuid,
        at: DateTime<Utc>,
    },
    #[serde(rename = "room.post_message")]
    PostMessage(PostMessage),
    #[serde(rename = "room.edit_message")]
    EditMessage {
        message_id: Uuid,
        by: Uuid,
        text: String,
        at: DateTime<Utc>,
    },
    #[serde(rename = "room.delete_message")]
    DeleteMessage {
        message_id: Uuid,
        by: Uuid,
        at: DateTime<Utc>,
    },
    /// The user has read up to and including `message_id`.
    #[serde(rename = "room.mark_read")]
    MarkRead {
        user: Uuid,
        message_id: Uuid,
        at: DateTime<Utc>,
    },
    /// A message in the direct conversation of `message.author` and `to`,
    /// opening it on first use (the aggregate is [`direct_id`] of the two).
    #[serde(rename = "room.send_direct")]
    SendDirect { to: Uuid, message: PostMessage },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Create {
    pub room_id: Uuid,
    pub owner: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub is_private: bool,
    pub max_participants: u32,
    pub at: DateTime<Utc>,
}

/// What `PATCH /api/rooms/{id}` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Changes {
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub is_private: Option<bool>,
    pub max_participants: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub by: Uuid,
    pub changes: Changes,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostMessage {
    pub message_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "room.created")]
    Created(Created),
    #[serde(rename = "room.updated")]
    Updated(Updated),
    #[serde(rename = "room.invited")]
    Invited(Invited),
    #[serde(rename = "room.joined")]
    Joined(Joined),
    #[serde(rename = "room.left")]
    Left(Left),
    #[serde(rename = "room.member_removed")]
    MemberRemoved(MemberRemoved),
    #[serde(rename = "room.role_changed")]
    RoleChanged(RoleChanged),
    #[serde(rename = "room.ownership_transferred")]
    OwnershipTransferred(OwnershipTransferred),
    #[serde(rename = "room.message_posted")]
    MessagePosted(MessagePosted),
    #[serde(rename = "room.message_edited")]
    MessageEdited(MessageEdited),
    #[serde(rename = "room.message_deleted")]
    MessageDeleted(MessageDeleted),
    #[serde(rename = "room.read")]
    Read(Read),
}

/// A room, with its first participants: the owner of a group room, both
/// users of a direct conversation (which has no owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub room_id: Uuid,
    pub kind: Kind,
    pub owner: Option<Uuid>,
    pub participants: Vec<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub is_private: bool,
    pub max_participants: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Updated {
    pub room_id: Uuid,
    pub by: Uuid,
    pub changes: Changes,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invited {
    pub room_id: Uuid,
    pub user: Uuid,
    pub by: Uuid,
    pub invited_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub room_id: Uuid,
    pub user: Uuid,
    pub role: Role,
    /// Whether an invitation let the user in (and is used up).
    pub invited: bool,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Left {
    pub room_id: Uuid,
    pub user: Uuid,
    pub left_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub room_id: Uuid,
    pub user: Uuid,
    pub by: Uuid,
    pub removed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleChanged {
    pub room_id: Uuid,
    pub user: Uuid,
    pub role: Role,
    pub by: Uuid,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnershipTransferred {
    pub room_id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub transferred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    /// The message's place in the room, from 1: unread counts and read
    /// receipts compare these.
    pub ordinal: u64,
    pub posted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub author: Uuid,
    pub text: String,
    pub edited_at: DateTime<Utc>,
}

/// A message's text is gone; its place in the history stays (a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub author: Uuid,
    pub by: Uuid,
    pub deleted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    pub room_id: Uuid,
    pub user: Uuid,
    pub message_id: Uuid,
    pub ordinal: u64,
    pub read_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Unwritten,
    Open(Room),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub room_id: Uuid,
    pub kind: Kind,
    pub is_private: bool,
    pub max_participants: u32,
    pub participants: BTreeMap<Uuid, Participant>,
    pub invited: BTreeSet<Uuid>,
    /// Every message: who wrote it (edits, deletions), where it stands
    /// (receipts) and whether it is deleted.
    pub messages: BTreeMap<Uuid, Message>,
    /// Messages posted so far: the last ordinal.
    pub posted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub role: Role,
    /// The ordinal read up to: a newcomer has read what came before.
    pub read: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub author: Uuid,
    pub ordinal: u64,
    pub deleted: bool,
}

impl Room {
    fn role(&self, user: Uuid) -> Option<Role> {
        self.participants.get(&user).map(|p| p.role)
    }

    /// What a non-participant is told: a private room or a conversation
    /// does not exist for them; a public one exists but is not theirs.
    fn outsider(&self) -> Error {
        if self.is_private {
            Error::NotFound
        } else {
            Error::NotParticipant
        }
    }

    /// The caller's role, if a participant.
    fn participant(&self, user: Uuid) -> Result<Role, Error> {
        self.role(user).ok_or_else(|| self.outsider())
    }

    fn group(&self) -> Result<(), Error> {
        match self.kind {
            Kind::Group => Ok(()),
            Kind::Direct => Err(Error::DirectConversation),
        }
    }

    /// The caller's role when it moderates (owner or admin).
    fn moderator(&self, user: Uuid) -> Result<Role, Error> {
        let role = self.participant(user)?;
        self.group()?;
        if role.moderates() {
            Ok(role)
        } else {
            Err(Error::NotRoomAdmin)
        }
    }

    fn owner(&self, user: Uuid) -> Result<(), Error> {
        let role = self.participant(user)?;
        self.group()?;
        if role == Role::Owner {
            Ok(())
        } else {
            Err(Error::NotRoomOwner)
        }
    }

    /// A live message of the room, as a participant asks for it.
    fn message(&self, id: Uuid) -> Result<&Message, Error> {
        self.messages
            .get(&id)
            .filter(|m| !m.deleted)
            .ok_or(Error::MessageNotFound)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `room_exists`: the id is taken.
    #[error("this room already exists")]
    AlreadyExists,
    /// 404 `room_not_found`: no such room, or a private one the caller is
    /// not in (and, for a join, not invited to).
    #[error("no such room")]
    NotFound,
    /// 403 `not_participant`: a public room the caller has not joined.
    #[error("join the room first")]
    NotParticipant,
    /// 409 `room_full`: `max_participants` are in.
    #[error("the room is full")]
    RoomFull,
    /// 409 `already_participant`: joining twice, or inviting a participant.
    #[error("already a participant of this room")]
    AlreadyParticipant,
    /// 422 `room_is_public`: anyone may join a public room; invitations are
    /// for private ones.
    #[error("a public room takes no invitations: anyone may join it")]
    PublicRoomInvite,
    /// 422 `direct_conversation`: a direct conversation has its two
    /// participants and no settings, roles or invitations.
    #[error("a direct conversation cannot be changed this way")]
    DirectConversation,
    /// 403 `not_room_admin`: only the owner and admins may do this.
    #[error("only the room's owner and admins may do this")]
    NotRoomAdmin,
    /// 403 `not_room_owner`: only the owner may do this.
    #[error("only the room's owner may do this")]
    NotRoomOwner,
    /// 403 `cannot_remove_owner`: nobody removes the owner.
    #[error("the owner cannot be removed")]
    CannotRemoveOwner,
    /// 403 `cannot_remove_admin`: only the owner removes an admin.
    #[error("only the owner removes an admin")]
    CannotRemoveAdmin,
    /// 422 `cannot_remove_self`: one leaves instead.
    #[error("leave the room instead of removing yourself")]
    CannotRemoveSelf,
    /// 422 `cannot_change_owner_role`: the owner's role changes only by a
    /// transfer.
    #[error("the owner's role changes only by transferring the room")]
    CannotChangeOwnerRole,
    /// 422 `invalid_role`: only admin or member can be given.
    #[error("a role given is admin or member")]
    InvalidRole,
    /// 404 `member_not_found`: the user named is not a participant.
    #[error("that user is not a participant of this room")]
    MemberNotFound,
    /// 409 `owner_must_transfer`: the owner hands the room over before
    /// leaving it.
    #[error("the owner transfers the room before leaving it")]
    OwnerMustTransfer,
    /// 422 `max_participants_out_of_range`: below the participants already
    /// in, or above the cap.
    #[error(
        "max_participants must hold the participants already in and be at most {MAX_PARTICIPANTS}"
    )]
    MaxParticipantsOutOfRange,
    /// 404 `message_not_found`: no such message in the room, or deleted.
    #[error("no such message in this room")]
    MessageNotFound,
    /// 409 `message_exists`: the message id is taken.
    #[error("this message already exists")]
    MessageExists,
    /// 403 `not_message_author`: only the author edits a message; the
    /// author, the owner and admins delete it.
    #[error("only the message's author may do this")]
    NotMessageAuthor,
    /// 422 `invalid_message_text`: blank or longer than [`MAX_MESSAGE`].
    #[error("a message is 1 to {MAX_MESSAGE} characters, not only white space")]
    InvalidText,
    /// 422 `cannot_message_self`: a direct conversation is between two.
    #[error("a direct message goes to another user")]
    CannotMessageSelf,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::AlreadyExists => "room_exists",
            Error::NotFound => "room_not_found",
            Error::NotParticipant => "not_participant",
            Error::RoomFull => "room_full",
            Error::AlreadyParticipant => "already_participant",
            Error::PublicRoomInvite => "room_is_public",
            Error::DirectConversation => "direct_conversation",
            Error::NotRoomAdmin => "not_room_admin",
            Error::NotRoomOwner => "not_room_owner",
            Error::CannotRemoveOwner => "cannot_remove_owner",
            Error::CannotRemoveAdmin => "cannot_remove_admin",
            Error::CannotRemoveSelf => "cannot_remove_self",
            Error::CannotChangeOwnerRole => "cannot_change_owner_role",
            Error::InvalidRole => "invalid_role",
            Error::MemberNotFound => "member_not_found",
            Error::OwnerMustTransfer => "owner_must_transfer",
            Error::MaxParticipantsOutOfRange => "max_participants_out_of_range",
            Error::MessageNotFound => "message_not_found",
            Error::MessageExists => "message_exists",
            Error::NotMessageAuthor => "not_message_author",
            Error::InvalidText => "invalid_message_text",
            Error::CannotMessageSelf => "cannot_message_self",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::AlreadyExists
            | Error::RoomFull
            | Error::AlreadyParticipant
            | Error::OwnerMustTransfer
            | Error::MessageExists => ErrorKind::Conflict,
            Error::NotFound | Error::MemberNotFound | Error::MessageNotFound => ErrorKind::NotFound,
            Error::NotParticipant
            | Error::NotRoomAdmin
            | Error::NotRoomOwner
            | Error::CannotRemoveOwner
            | Error::CannotRemoveAdmin
            | Error::NotMessageAuthor => ErrorKind::Forbidden,
            Error::PublicRoomInvite
            | Error::DirectConversation
            | Error::CannotRemoveSelf
            | Error::CannotChangeOwnerRole
            | Error::InvalidRole
            | Error::MaxParticipantsOutOfRange
            | Error::InvalidText
            | Error::CannotMessageSelf => ErrorKind::Invalid,
        }
    }
}

/// A message's text as the log keeps it: trimmed, 1 to [`MAX_MESSAGE`]
/// characters.
fn text(text: &str) -> Result<String, Error> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_MESSAGE {
        return Err(Error::InvalidText);
    }
    Ok(text.to_owned())
}

fn posted(room: &Room, m: &PostMessage) -> Result<Event, Error> {
    if room.messages.contains_key(&m.message_id) {
        return Err(Error::MessageExists);
    }
    Ok(Event::MessagePosted(MessagePosted {
        room_id: room.room_id,
        message_id: m.message_id,
        author: m.author,
        text: text(&m.text)?,
        media_ids: m.media_ids.clone(),
        ordinal: room.posted + 1,
        posted_at: m.at,
    }))
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    let room = match (command, state) {
        (Command::Create(c), State::Unwritten) => {
            if !(1..=MAX_PARTICIPANTS).contains(&c.max_participants) {
                return Err(Error::MaxParticipantsOutOfRange);
            }
            return Ok(vec![Event::Created(Created {
                room_id: c.room_id,
                kind: Kind::Group,
                owner: Some(c.owner),
                participants: vec![c.owner],
                name: c.name.clone(),
                description: c.description.clone(),
                avatar_url: c.avatar_url.clone(),
                settings: c.settings.clone(),
                is_private: c.is_private,
                max_participants: c.max_participants,
                created_at: c.at,
            })]);
        }
        (Command::Create(_), State::Open(_)) => return Err(Error::AlreadyExists),
        (Command::SendDirect { to, message }, State::Unwritten) => {
            if *to == message.author {
                return Err(Error::CannotMessageSelf);
            }
            let room_id = direct_id(message.author, *to);
            let mut participants = vec![message.author, *to];
            participants.sort();
            let created = Created {
                room_id,
                kind: Kind::Direct,
                owner: None,
                participants,
                name: String::new(),
                description: None,
                avatar_url: None,
                settings: serde_json::Map::new(),
                is_private: true,
                max_participants: 2,
                created_at: message.at,
            };
            let opened = Event::Created(created);
            let State::Open(room) = evolve(State::Unwritten, &opened) else {
                unreachable!("a created room is open")
            };
            return Ok(vec![opened, posted(&room, message)?]);
        }
        (_, State::Unwritten) => return Err(Error::NotFound),
        (_, State::Open(room)) => room,
    };
    let room_id = room.room_id;
    match command {
        Command::Create(_) => unreachable!("decided above"),
        Command::Update(u) => {
            room.moderator(u.by)?;
            if let Some(max) = u.changes.max_participants {
                let held = room.participants.len() as u32;
                if max < held.max(1) || max > MAX_PARTICIPANTS {
                    return Err(Error::MaxParticipantsOutOfRange);
                }
            }
            if u.changes == Changes::default() {
                return Ok(vec![]);
            }
            Ok(vec![Event::Updated(Updated {
                room_id,
                by: u.by,
                changes: u.changes.clone(),
                updated_at: u.at,
            })])
        }
        Command::Join { user, at } => {
            if room.participants.contains_key(user) {
                return Err(Error::AlreadyParticipant);
            }
            let invited = room.invited.contains(user);
            // A conversation is its two users'; a private room lets in
            // whom it invited and is nowhere to be found for anyone else.
            if room.kind == Kind::Direct || (room.is_private && !invited) {
                return Err(Error::NotFound);
            }
            if room.participants.len() as u32 >= room.max_participants {
                return Err(Error::RoomFull);
            }
            Ok(vec![Event::Joined(Joined {
                room_id,
                user: *user,
                role: Role::Member,
                invited,
                joined_at: *at,
            })])
        }
        Command::Invite { by, user, at } => {
            room.participant(*by)?;
            room.group()?;
            if !room.is_private {
                return Err(Error::PublicRoomInvite);
            }
            if room.participants.contains_key(user) {
                return Err(Error::AlreadyParticipant);
            }
            if room.invited.contains(user) {
                return Ok(vec![]);
            }
            Ok(vec![Event::Invited(Invited {
                room_id,
                user: *user,
                by: *by,
                invited_at: *at,
            })])
        }
        Command::Leave { user, at } => {
            let role = room.participant(*user)?;
            room.group()?;
            if role == Role::Owner {
                return Err(Error::OwnerMustTransfer);
            }
            Ok(vec![Event::Left(Left {
                room_id,
                user: *user,
                left_at: *at,
            })])
        }
        Command::RemoveMember { by, user, at } => {
            let role = room.moderator(*by)?;
            if by == user {
                return Err(Error::CannotRemoveSelf);
            }
            match room.role(*user) {
                None => Err(Error::MemberNotFound),
                Some(Role::Owner) => Err(Error::CannotRemoveOwner),
                Some(Role::Admin) if role != Role::Owner => Err(Error::CannotRemoveAdmin),
                Some(_) => Ok(vec![Event::MemberRemoved(MemberRemoved {
                    room_id,
                    user: *user,
                    by: *by,
                    removed_at: *at,
                })]),
            }
        }
        Command::SetRole { by, user, role, at } => {
            room.owner(*by)?;
            if *role == Role::Owner {
                return Err(Error::InvalidRole);
            }
            match room.role(*user) {
                None => Err(Error::MemberNotFound),
                Some(Role::Owner) => Err(Error::CannotChangeOwnerRole),
                Some(current) if current == *role => Ok(vec![]),
                Some(_) => Ok(vec![Event::RoleChanged(RoleChanged {
                    room_id,
                    user: *user,
                    role: *role,
                    by: *by,
                    changed_at: *at,
                })]),
            }
        }
        Command::Transfer { by, to, at } => {
            room.owner(*by)?;
            if !room.participants.contains_key(to) {
                return Err(Error::MemberNotFound);
            }
            if by == to {
                return Ok(vec![]);
            }
            Ok(vec![Event::OwnershipTransferred(OwnershipTransferred {
                room_id,
                from: *by,
                to: *to,
                transferred_at: *at,
            })])
        }
        Command::PostMessage(m) | Command::SendDirect { message: m, .. } => {
            room.participant(m.author)?;
            Ok(vec![posted(room, m)?])
        }
        Command::EditMessage {
            message_id,
            by,
            text: new,
            at,
        } => {
            room.participant(*by)?;
            let message = room.message(*message_id)?;
            if message.author != *by {
                return Err(Error::NotMessageAuthor);
            }
            Ok(vec![Event::MessageEdited(MessageEdited {
                room_id,
                message_id: *message_id,
                author: message.author,
                text: text(new)?,
                edited_at: *at,
            })])
        }
        Command::DeleteMessage { message_id, by, at } => {
            let role = room.participant(*by)?;
            let message = match room.messages.get(message_id) {
                None => return Err(Error::MessageNotFound),
                // Deleting twice is deleting once: a retried DELETE is
                // harmless.
                Some(message) if message.deleted => return Ok(vec![]),
                Some(message) => message,
            };
            if message.author != *by && !role.moderates() {
                return Err(Error::NotMessageAuthor);
            }
            Ok(vec![Event::MessageDeleted(MessageDeleted {
                room_id,
                message_id: *message_id,
                author: message.author,
                by: *by,
                deleted_at: *at,
            })])
        }
        Command::MarkRead {
            user,
            message_id,
            at,
        } => {
            let participant = room.participants.get(user).ok_or_else(|| room.outsider())?;
            let message = room
                .messages
                .get(message_id)
                .ok_or(Error::MessageNotFound)?;
            // Receipts only move forward: reading an older message again
            // says nothing new.
            if message.ordinal <= participant.read {
                return Ok(vec![]);
            }
            Ok(vec![Event::Read(Read {
                room_id,
                user: *user,
                message_id: *message_id,
                ordinal: message.ordinal,
                read_at: *at,
            })])
        }
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::Unwritten, Event::Created(c)) => State::Open(Room {
            room_id: c.room_id,
            kind: c.kind,
            is_private: c.is_private,
            max_participants: c.max_participants,
            participants: c
                .participants
                .iter()
                .map(|user| {
                    let role = match c.owner {
                        Some(owner) if owner == *user => Role::Owner,
                        _ => Role::Member,
                    };
                    (*user, Participant { role, read: 0 })
                })
                .collect(),
            invited: BTreeSet::new(),
            messages: BTreeMap::new(),
            posted: 0,
        }),
        (State::Open(mut room), event) => {
            match event {
                Event::Created(_) => {}
                Event::Updated(u) => {
                    if let Some(is_private) = u.changes.is_private {
                        room.is_private = is_private;
                    }
                    if let Some(max) = u.changes.max_participants {
                        room.max_participants = max;
                    }
                }
                Event::Invited(i) => {
                    room.invited.insert(i.user);
                }
                Event::Joined(j) => {
                    room.invited.remove(&j.user);
                    let read = room.posted;
                    room.participants
                        .insert(j.user, Participant { role: j.role, read });
                }
                Event::Left(Left { user, .. })
                | Event::MemberRemoved(MemberRemoved { user, .. }) => {
                    room.participants.remove(user);
                }
                Event::RoleChanged(r) => {
                    if let Some(p) = room.participants.get_mut(&r.user) {
                        p.role = r.role;
                    }
                }
                Event::OwnershipTransferred(t) => {
                    if let Some(p) = room.participants.get_mut(&t.from) {
                        p.role = Role::Admin;
                    }
                    if let Some(p) = room.participants.get_mut(&t.to) {
                        p.role = Role::Owner;
                    }
                }
                Event::MessagePosted(m) => {
                    room.posted = m.ordinal;
                    room.messages.insert(
                        m.message_id,
                        Message {
                            author: m.author,
                            ordinal: m.ordinal,
                            deleted: false,
                        },
                    );
                    // One has read what one wrote.
                    if let Some(p) = room.participants.get_mut(&m.author) {
                        p.read = m.ordinal;
                    }
                }
                Event::MessageEdited(_) => {}
                Event::MessageDeleted(d) => {
                    if let Some(m) = room.messages.get_mut(&d.message_id) {
                        m.deleted = true;
                    }
                }
                Event::Read(r) => {
                    if let Some(p) = room.participants.get_mut(&r.user) {
                        p.read = p.read.max(r.ordinal);
                    }
                }
            }
            State::Open(room)
        }
        // The sequence rule admits only events that follow the state they
        // were decided on; keep the state for any other pair.
        (state, _) => state,
    }
}

/// The room decider, for the runtime.
pub struct RoomDecider;

impl crate::Decider for RoomDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &[
        "room.created",
        "room.updated",
        "room.invited",
        "room.joined",
        "room.left",
        "room.member_removed",
        "room.role_changed",
        "room.ownership_transferred",
        "room.message_posted",
        "room.message_edited",
        "room.message_deleted",
        "room.read",
    ];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Create(_) => "room.create",
            Command::Update(_) => "room.update",
            Command::Join { .. } => "room.join",
            Command::Invite { .. } => "room.invite",
            Command::Leave { .. } => "room.leave",
            Command::RemoveMember { .. } => "room.remove_member",
            Command::SetRole { .. } => "room.set_role",
            Command::Transfer { .. } => "room.transfer",
            Command::PostMessage(_) => "room.post_message",
            Command::EditMessage { .. } => "room.edit_message",
            Command::DeleteMessage { .. } => "room.delete_message",
            Command::MarkRead { .. } => "room.mark_read",
            Command::SendDirect { .. } => "room.send_direct",
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

    fn room_id() -> Uuid {
        Uuid::from_u128(100)
    }

    fn owner() -> Uuid {
        Uuid::from_u128(1)
    }

    fn admin() -> Uuid {
        Uuid::from_u128(2)
    }

    fn member() -> Uuid {
        Uuid::from_u128(3)
    }

    fn outsider() -> Uuid {
        Uuid::from_u128(4)
    }

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    fn created(is_private: bool, max: u32) -> Event {
        Event::Created(Created {
            room_id: room_id(),
            kind: Kind::Group,
            owner: Some(owner()),
            participants: vec![owner()],
            name: "lobby".into(),
            description: None,
            avatar_url: None,
            settings: serde_json::Map::new(),
            is_private,
            max_participants: max,
            created_at: at(),
        })
    }

    fn joined(user: Uuid, invited: bool) -> Event {
        Event::Joined(Joined {
            room_id: room_id(),
            user,
            role: Role::Member,
            invited,
            joined_at: at(),
        })
    }

    fn invited(user: Uuid) -> Event {
        Event::Invited(Invited {
            room_id: room_id(),
            user,
            by: owner(),
            invited_at: at(),
        })
    }

    fn promoted(user: Uuid) -> Event {
        Event::RoleChanged(RoleChanged {
            room_id: room_id(),
            user,
            role: Role::Admin,
            by: owner(),
            changed_at: at(),
        })
    }

    /// A public room of 50 with an owner, an admin and a member.
    fn staffed() -> Vec<Event> {
        vec![
            created(false, 50),
            joined(admin(), false),
            promoted(admin()),
            joined(member(), false),
        ]
    }

    fn join(user: Uuid) -> Command {
        Command::Join { user, at: at() }
    }

    fn message(id: u128, author: Uuid, text: &str) -> PostMessage {
        PostMessage {
            message_id: Uuid::from_u128(id),
            author,
            text: text.into(),
            media_ids: vec![],
            at: at(),
        }
    }

    fn posted(id: u128, author: Uuid, ordinal: u64) -> Event {
        Event::MessagePosted(MessagePosted {
            room_id: room_id(),
            message_id: Uuid::from_u128(id),
            author,
            text: "hello".into(),
            media_ids: vec![],
            ordinal,
            posted_at: at(),
        })
    }

    fn with(mut events: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
        events.extend(more);
        events
    }

    #[test]
    fn creating_a_room_makes_its_creator_owner_and_participant() {
        let create = Command::Create(Create {
            room_id: room_id(),
            owner: owner(),
            name: "lobby".into(),
            description: None,
            avatar_url: None,
            settings: serde_json::Map::new(),
            is_private: false,
            max_participants: 50,
            at: at(),
        });
        given([])
            .when(create.clone(), decide)
            .then([created(false, 50)]);
        given([created(false, 50)])
            .when(create, decide)
            .then_err(Error::AlreadyExists);
    }

    #[test]
    fn anyone_joins_a_public_room_once() {
        given([created(false, 50)])
            .when(join(member()), decide)
            .then([joined(member(), false)]);
        given([created(false, 50), joined(member(), false)])
            .when(join(member()), decide)
            .then_err(Error::AlreadyParticipant);
    }

    #[test]
    fn joining_a_full_room_is_rejected() {
        given([created(false, 2), joined(member(), false)])
            .when(join(outsider()), decide)
            .then_err(Error::RoomFull);
    }

    #[test]
    fn two_hundred_joining_a_room_of_fifty_let_exactly_fifty_in() {
        let mut state = evolve(State::default(), &created(false, 50));
        let (mut joined, mut full) = (0, 0);
        for n in 0..200u128 {
            match decide(&join(Uuid::from_u128(1000 + n)), &state) {
                Ok(events) => {
                    joined += 1;
                    state = events.iter().fold(state, evolve);
                }
                Err(Error::RoomFull) => full += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        // The owner is one of the fifty.
        assert_eq!((joined, full), (49, 151));
    }

    #[test]
    fn a_private_room_lets_in_only_whom_it_invited() {
        given([created(true, 50)])
            .when(join(outsider()), decide)
            .then_err(Error::NotFound);
        given([created(true, 50), invited(outsider())])
            .when(join(outsider()), decide)
            .then([joined(outsider(), true)]);
        // The invitation is used up.
        given([
            created(true, 50),
            invited(outsider()),
            joined(outsider(), true),
            Event::Left(Left {
                room_id: room_id(),
                user: outsider(),
                left_at: at(),
            }),
        ])
        .when(join(outsider()), decide)
        .then_err(Error::NotFound);
    }

    #[test]
    fn participants_invite_to_a_private_room_only() {
        let invite = |by| Command::Invite {
            by,
            user: outsider(),
            at: at(),
        };
        given([created(true, 50)])
            .when(invite(owner()), decide)
            .then([invited(outsider())]);
        given([created(true, 50), invited(outsider())])
            .when(invite(owner()), decide)
            .then([]);
        given([created(true, 50)])
            .when(invite(member()), decide)
            .then_err(Error::NotFound);
        given([created(false, 50)])
            .when(invite(owner()), decide)
            .then_err(Error::PublicRoomInvite);
        given([created(true, 50), joined(outsider(), false)])
            .when(invite(owner()), decide)
            .then_err(Error::AlreadyParticipant);
    }

    #[test]
    fn the_owner_transfers_before_leaving() {
        let leave = |user| Command::Leave { user, at: at() };
        given(staffed())
            .when(leave(owner()), decide)
            .then_err(Error::OwnerMustTransfer);
        given(staffed())
            .when(leave(member()), decide)
            .then([Event::Left(Left {
                room_id: room_id(),
                user: member(),
                left_at: at(),
            })]);
        let transferred = Event::OwnershipTransferred(OwnershipTransferred {
            room_id: room_id(),
            from: owner(),
            to: member(),
            transferred_at: at(),
        });
        given(staffed())
            .when(
                Command::Transfer {
                    by: owner(),
                    to: member(),
                    at: at(),
                },
                decide,
            )
            .then([transferred.clone()]);
        given(with(staffed(), [transferred]))
            .when(leave(owner()), decide)
            .then([Event::Left(Left {
                room_id: room_id(),
                user: owner(),
                left_at: at(),
            })]);
        given(staffed())
            .when(
                Command::Transfer {
                    by: admin(),
                    to: member(),
                    at: at(),
                },
                decide,
            )
            .then_err(Error::NotRoomOwner);
    }

    #[test]
    fn only_the_owner_promotes_and_demotes() {
        let set = |by, user, role| Command::SetRole {
            by,
            user,
            role,
            at: at(),
        };
        given(staffed())
            .when(set(owner(), member(), Role::Admin), decide)
            .then([promoted(member())]);
        given(staffed())
            .when(set(admin(), member(), Role::Admin), decide)
            .then_err(Error::NotRoomOwner);
        given(staffed())
            .when(set(member(), member(), Role::Admin), decide)
            .then_err(Error::NotRoomOwner);
        given(staffed())
            .when(set(owner(), owner(), Role::Member), decide)
            .then_err(Error::CannotChangeOwnerRole);
        given(staffed())
            .when(set(owner(), outsider(), Role::Admin), decide)
            .then_err(Error::MemberNotFound);
        given(staffed())
            .when(set(owner(), admin(), Role::Admin), decide)
            .then([]);
        given(staffed())
            .when(set(owner(), member(), Role::Owner), decide)
            .then_err(Error::InvalidRole);
    }

    #[test]
    fn the_owner_removes_anyone_admins_remove_members_members_remove_nobody() {
        let remove = |by, user| Command::RemoveMember { by, user, at: at() };
        let removed = |by, user| {
            Event::MemberRemoved(MemberRemoved {
                room_id: room_id(),
                user,
                by,
                removed_at: at(),
            })
        };
        given(staffed())
            .when(remove(owner(), admin()), decide)
            .then([removed(owner(), admin())]);
        given(staffed())
            .when(remove(admin(), member()), decide)
            .then([removed(admin(), member())]);
        given(with(
            staffed(),
            [joined(outsider(), false), promoted(outsider())],
        ))
        .when(remove(admin(), outsider()), decide)
        .then_err(Error::CannotRemoveAdmin);
        given(staffed())
            .when(remove(admin(), owner()), decide)
            .then_err(Error::CannotRemoveOwner);
        given(staffed())
            .when(remove(member(), admin()), decide)
            .then_err(Error::NotRoomAdmin);
        given(staffed())
            .when(remove(owner(), owner()), decide)
            .then_err(Error::CannotRemoveSelf);
        given(staffed())
            .when(remove(owner(), outsider()), decide)
            .then_err(Error::MemberNotFound);
    }

    #[test]
    fn owner_and_admins_edit_the_room_within_its_cap() {
        let update = |by, max| {
            Command::Update(Update {
                by,
                changes: Changes {
                    name: Some("renamed".into()),
                    max_participants: max,
                    ..Changes::default()
                },
                at: at(),
            })
        };
        given(staffed())
            .when(update(admin(), None), decide)
            .then([Event::Updated(Updated {
                room_id: room_id(),
                by: admin(),
                changes: Changes {
                    name: Some("renamed".into()),
                    ..Changes::default()
                },
                updated_at: at(),
            })]);
        given(staffed())
            .when(update(member(), None), decide)
            .then_err(Error::NotRoomAdmin);
        given(staffed())
            .when(update(owner(), Some(2)), decide)
            .then_err(Error::MaxParticipantsOutOfRange);
        given(staffed())
            .when(update(owner(), Some(MAX_PARTICIPANTS + 1)), decide)
            .then_err(Error::MaxParticipantsOutOfRange);
    }

    #[test]
    fn only_participants_post_and_a_private_room_is_not_found_for_others() {
        let post = |author, text: &str| Command::PostMessage(message(50, author, text));
        given(staffed())
            .when(post(member(), "  hello "), decide)
            .then([posted(50, member(), 1)]);
        given(staffed())
            .when(post(outsider(), "hello"), decide)
            .then_err(Error::NotParticipant);
        given([created(true, 50)])
            .when(post(outsider(), "hello"), decide)
            .then_err(Error::NotFound);
        given(staffed())
            .when(post(member(), " \n "), decide)
            .then_err(Error::InvalidText);
        given(staffed())
            .when(post(member(), &"x".repeat(MAX_MESSAGE + 1)), decide)
            .then_err(Error::InvalidText);
        given(with(staffed(), [posted(50, member(), 1)]))
            .when(post(member(), "again"), decide)
            .then_err(Error::MessageExists);
    }

    #[test]
    fn only_the_author_edits_and_moderators_also_delete() {
        let history = with(staffed(), [posted(50, member(), 1)]);
        let edit = |by| Command::EditMessage {
            message_id: Uuid::from_u128(50),
            by,
            text: "edited".into(),
            at: at(),
        };
        let delete = |by| Command::DeleteMessage {
            message_id: Uuid::from_u128(50),
            by,
            at: at(),
        };
        let deleted = |by| {
            Event::MessageDeleted(MessageDeleted {
                room_id: room_id(),
                message_id: Uuid::from_u128(50),
                author: member(),
                by,
                deleted_at: at(),
            })
        };
        given(history.clone())
            .when(edit(member()), decide)
            .then([Event::MessageEdited(MessageEdited {
                room_id: room_id(),
                message_id: Uuid::from_u128(50),
                author: member(),
                text: "edited".into(),
                edited_at: at(),
            })]);
        given(history.clone())
            .when(edit(owner()), decide)
            .then_err(Error::NotMessageAuthor);
        given(with(history.clone(), [joined(outsider(), false)]))
            .when(delete(outsider()), decide)
            .then_err(Error::NotMessageAuthor);
        given(history.clone())
            .when(delete(admin()), decide)
            .then([deleted(admin())]);
        given(history.clone())
            .when(delete(member()), decide)
            .then([deleted(member())]);
        // A tombstone takes no edit; deleting again is harmless.
        given(with(history.clone(), [deleted(member())]))
            .when(edit(member()), decide)
            .then_err(Error::MessageNotFound);
        given(with(history, [deleted(member())]))
            .when(delete(member()), decide)
            .then([]);
    }

    #[test]
    fn receipts_only_move_forward() {
        let history = with(staffed(), [posted(50, owner(), 1), posted(51, owner(), 2)]);
        let read = |id| Command::MarkRead {
            user: member(),
            message_id: Uuid::from_u128(id),
            at: at(),
        };
        let receipt = Event::Read(Read {
            room_id: room_id(),
            user: member(),
            message_id: Uuid::from_u128(51),
            ordinal: 2,
            read_at: at(),
        });
        given(history.clone())
            .when(read(51), decide)
            .then([receipt.clone()]);
        given(with(history.clone(), [receipt]))
            .when(read(50), decide)
            .then([]);
        given(history)
            .when(read(99), decide)
            .then_err(Error::MessageNotFound);
    }

    #[test]
    fn a_direct_conversation_opens_with_its_first_message_and_only_once() {
        let (alice, bob) = (Uuid::from_u128(7), Uuid::from_u128(8));
        assert_eq!(direct_id(alice, bob), direct_id(bob, alice));
        let send = |from, to, id| Command::SendDirect {
            to,
            message: message(id, from, "hi"),
        };
        let opened = Event::Created(Created {
            room_id: direct_id(alice, bob),
            kind: Kind::Direct,
            owner: None,
            participants: vec![alice, bob],
            name: String::new(),
            description: None,
            avatar_url: None,
            settings: serde_json::Map::new(),
            is_private: true,
            max_participants: 2,
            created_at: at(),
        });
        let first = Event::MessagePosted(MessagePosted {
            room_id: direct_id(alice, bob),
            message_id: Uuid::from_u128(60),
            author: bob,
            text: "hi".into(),
            media_ids: vec![],
            ordinal: 1,
            posted_at: at(),
        });
        given([])
            .when(send(bob, alice, 60), decide)
            .then([opened.clone(), first.clone()]);
        // The other's first message, decided second, only adds a message.
        given([opened.clone(), first.clone()])
            .when(send(alice, bob, 61), decide)
            .then([Event::MessagePosted(MessagePosted {
                room_id: direct_id(alice, bob),
                message_id: Uuid::from_u128(61),
                author: alice,
                text: "hi".into(),
                media_ids: vec![],
                ordinal: 2,
                posted_at: at(),
            })]);
        given([])
            .when(send(alice, alice, 60), decide)
            .then_err(Error::CannotMessageSelf);
        given([opened.clone()])
            .when(join(outsider()), decide)
            .then_err(Error::NotFound);
        given([opened])
            .when(
                Command::Leave {
                    user: alice,
                    at: at(),
                },
                decide,
            )
            .then_err(Error::DirectConversation);
    }

    /// An action of the permission table: its name, the command for an
    /// actor, whether in the private room, and the outcome for each role.
    type Row = (
        &'static str,
        Box<dyn Fn(Uuid) -> Command>,
        bool,
        [Result<(), Option<&'static str>>; 4],
    );

    /// The README's permission table, row by row: what each of the owner,
    /// an admin, a member and someone not in the room may do. `Ok` is
    /// allowed; `Err(Some(code))` is refused with that code; `Err(None)` is
    /// refused (the table's "—").
    #[test]
    fn the_permission_table_holds() {
        use crate::Rejection;
        let target = Uuid::from_u128(5);
        let newcomer = Uuid::from_u128(6);
        let roles = [owner(), admin(), member(), outsider()];
        // A public room: the staff, a member to act on, a message of each.
        let public = with(
            staffed(),
            [
                joined(target, false),
                posted(60, owner(), 1),
                posted(61, admin(), 2),
                posted(62, member(), 3),
                posted(63, target, 4),
            ],
        );
        let private = {
            let mut events = public.clone();
            events[0] = created(true, 50);
            events
        };
        let own = |by: Uuid| {
            Uuid::from_u128(if by == owner() {
                60
            } else if by == admin() {
                61
            } else {
                62
            })
        };
        let rows: Vec<Row> = vec![
            (
                "post a message",
                Box::new(|by| Command::PostMessage(message(70, by, "hi"))),
                false,
                [Ok(()), Ok(()), Ok(()), Err(Some("not_participant"))],
            ),
            (
                "edit one's own message",
                Box::new(move |by| Command::EditMessage {
                    message_id: own(by),
                    by,
                    text: "edited".into(),
                    at: at(),
                }),
                false,
                [Ok(()), Ok(()), Ok(()), Err(None)],
            ),
            (
                "edit another's message",
                Box::new(move |by| Command::EditMessage {
                    message_id: Uuid::from_u128(63),
                    by,
                    text: "edited".into(),
                    at: at(),
                }),
                false,
                [
                    Err(Some("not_message_author")),
                    Err(Some("not_message_author")),
                    Err(Some("not_message_author")),
                    Err(None),
                ],
            ),
            (
                "delete another's message",
                Box::new(|by| Command::DeleteMessage {
                    message_id: Uuid::from_u128(63),
                    by,
                    at: at(),
                }),
                false,
                [Ok(()), Ok(()), Err(Some("not_message_author")), Err(None)],
            ),
            (
                "mark read",
                Box::new(|user| Command::MarkRead {
                    user,
                    message_id: Uuid::from_u128(63),
                    at: at(),
                }),
                false,
                [Ok(()), Ok(()), Ok(()), Err(None)],
            ),
            (
                "invite, public room",
                Box::new(move |by| Command::Invite {
                    by,
                    user: newcomer,
                    at: at(),
                }),
                false,
                [
                    Err(Some("room_is_public")),
                    Err(Some("room_is_public")),
                    Err(Some("room_is_public")),
                    Err(None),
                ],
            ),
            (
                "invite, private room",
                Box::new(move |by| Command::Invite {
                    by,
                    user: newcomer,
                    at: at(),
                }),
                true,
                [Ok(()), Ok(()), Ok(()), Err(Some("room_not_found"))],
            ),
            (
                "edit the room",
                Box::new(|by| {
                    Command::Update(Update {
                        by,
                        changes: Changes {
                            name: Some("renamed".into()),
                            ..Changes::default()
                        },
                        at: at(),
                    })
                }),
                false,
                [Ok(()), Ok(()), Err(Some("not_room_admin")), Err(None)],
            ),
            (
                "remove a member",
                Box::new(move |by| Command::RemoveMember {
                    by,
                    user: target,
                    at: at(),
                }),
                false,
                [Ok(()), Ok(()), Err(Some("not_room_admin")), Err(None)],
            ),
            (
                "make a member admin",
                Box::new(move |by| Command::SetRole {
                    by,
                    user: target,
                    role: Role::Admin,
                    at: at(),
                }),
                false,
                [
                    Ok(()),
                    Err(Some("not_room_owner")),
                    Err(Some("not_room_owner")),
                    Err(None),
                ],
            ),
            (
                "transfer ownership",
                Box::new(move |by| Command::Transfer {
                    by,
                    to: target,
                    at: at(),
                }),
                false,
                [
                    Ok(()),
                    Err(Some("not_room_owner")),
                    Err(Some("not_room_owner")),
                    Err(None),
                ],
            ),
            (
                "leave",
                Box::new(|user| Command::Leave { user, at: at() }),
                false,
                [Err(Some("owner_must_transfer")), Ok(()), Ok(()), Err(None)],
            ),
            (
                "join a public room",
                Box::new(join),
                false,
                [
                    Err(Some("already_participant")),
                    Err(Some("already_participant")),
                    Err(Some("already_participant")),
                    Ok(()),
                ],
            ),
            (
                "join a private room uninvited",
                Box::new(join),
                true,
                [
                    Err(Some("already_participant")),
                    Err(Some("already_participant")),
                    Err(Some("already_participant")),
                    Err(Some("room_not_found")),
                ],
            ),
        ];
        let fold = |events: &[Event]| events.iter().fold(State::default(), evolve);
        let (public, private) = (fold(&public), fold(&private));
        for (action, command, is_private, expected) in rows {
            let state = if is_private { &private } else { &public };
            for (who, expected) in roles.iter().zip(expected) {
                let outcome = decide(&command(*who), state);
                let role = ["owner", "admin", "member", "not in the room"]
                    [roles.iter().position(|r| r == who).expect("a role")];
                match (&outcome, expected) {
                    (Ok(events), Ok(())) => {
                        assert!(
                            !events.is_empty(),
                            "{action}, {role}: allowed but wrote nothing"
                        )
                    }
                    (Err(_), Err(None)) => {}
                    (Err(error), Err(Some(code))) => {
                        assert_eq!(error.code(), code, "{action}, {role}")
                    }
                    (outcome, expected) => {
                        panic!("{action}, {role}: {outcome:?}, expected {expected:?}")
                    }
                }
            }
        }
    }
}
