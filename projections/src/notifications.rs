//! Notifications: what a user is told about (a like, a comment, a follow, a
//! mention, messages in a room), derived by the projector from others'
//! events and pushed on the user's channel; and the inbox events by which
//! the owner marks them read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::inbox::Event;
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::outbox::ChannelUpdate;
use crate::projection::{Effects, Projection};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Like,
    Reaction,
    Comment,
    Follow,
    Mention,
    Message,
    Invite,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Like => "like",
            Kind::Reaction => "reaction",
            Kind::Comment => "comment",
            Kind::Follow => "follow",
            Kind::Mention => "mention",
            Kind::Message => "message",
            Kind::Invite => "invite",
        }
    }
}

/// A notification as its owner reads it (`GET /api/notifications`, and the
/// `notification.created` push on `user:{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    pub id: Uuid,
    /// `like`, `reaction`, `comment`, `follow`, `mention`, `message` or
    /// `invite`.
    pub kind: String,
    /// Who did it.
    pub actor_id: Uuid,
    pub actor_username: Option<String>,
    pub post_id: Option<Uuid>,
    pub comment_id: Option<Uuid>,
    /// For `reaction`: which one.
    pub reaction: Option<String>,
    /// For `message`: the room, and its first message the user has not
    /// read (one notification stands for every message after it, until
    /// the user reads the room). For `invite`: the room.
    pub room_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub read: bool,
}

/// The columns of a [`Notification`] from `notifications n`, with the
/// actor's account `a`.
const COLUMNS: &str =
    "n.id, n.kind, n.actor_id, a.username AS actor_username, n.post_id, n.comment_id,
    n.reaction, n.room_id, n.message_id, n.created_at";

/// One thing to tell `user_id` about, caused by `envelope`.
pub struct Notify<'a> {
    pub envelope: &'a EventEnvelope,
    pub user_id: Uuid,
    pub kind: Kind,
    pub actor_id: Uuid,
    pub post_id: Option<Uuid>,
    pub comment_id: Option<Uuid>,
    pub reaction: Option<&'static str>,
    pub room_id: Option<Uuid>,
}

/// A notification's row as [`Notify`] adds it (`tidings rebuild` adds many
/// at once: `bulk.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: &'static str,
    pub actor_id: Uuid,
    pub post_id: Option<Uuid>,
    pub comment_id: Option<Uuid>,
    pub reaction: Option<&'static str>,
    pub room_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl Notify<'_> {
    /// The row to add: never one for oneself. Its id derives from the event
    /// and the owner, so projecting the event again adds nothing.
    pub fn row(&self) -> Option<NotificationRow> {
        if self.user_id == self.actor_id {
            return None;
        }
        Some(NotificationRow {
            id: Uuid::new_v5(
                &self.envelope.event_id,
                format!("notification:{}:{}", self.kind.as_str(), self.user_id).as_bytes(),
            ),
            user_id: self.user_id,
            kind: self.kind.as_str(),
            actor_id: self.actor_id,
            post_id: self.post_id,
            comment_id: self.comment_id,
            reaction: self.reaction,
            room_id: self.room_id,
            created_at: self.envelope.occurred_at,
        })
    }

    /// Writes the notification ([`Notify::row`]) and returns what the
    /// owner's channel receives.
    pub async fn write(
        self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Option<ChannelUpdate>, sqlx::Error> {
        let Some(row) = self.row() else {
            return Ok(None);
        };
        let written: Option<Notification> = sqlx::query_as(&format!(
            "WITH n AS (
               INSERT INTO notifications (id, user_id, kind, actor_id, post_id, comment_id, reaction, room_id, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (id) DO NOTHING
               RETURNING *)
             SELECT {COLUMNS}, false AS read
             FROM n LEFT JOIN accounts a ON a.id = n.actor_id",
        ))
        .bind(row.id)
        .bind(row.user_id)
        .bind(row.kind)
        .bind(row.actor_id)
        .bind(row.post_id)
        .bind(row.comment_id)
        .bind(row.reaction)
        .bind(row.room_id)
        .bind(row.created_at)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(written.map(|n| {
            ChannelUpdate::new(
                Channel::User(row.user_id),
                "notification.created",
                serde_json::to_value(n).expect("notifications serialize"),
            )
        }))
    }
}

/// Rooms with more participants than this notify no one of their
/// messages: in a crowd, the room's unread count is the signal.
pub const MESSAGE_ROOM_MAX: i32 = 100;

/// A message whose other participants are to be told of it if they are
/// offline. Who is offline is asked of presence once per batch, before the
/// projector commits ([`tell_offline`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageNotice {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub author: Uuid,
    pub ordinal: i64,
    /// The other participants, of a room small enough to notify.
    pub readers: Vec<Uuid>,
}

/// A message in a room: whom it may notify (see [`tell_offline`]).
pub async fn message_posted(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    room_id: Uuid,
    message_id: Uuid,
    author: Uuid,
    ordinal: i64,
) -> Result<Option<MessageNotice>, sqlx::Error> {
    let readers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT m.user_id FROM room_members m JOIN rooms r ON r.id = m.room_id
         WHERE m.room_id = $1 AND m.user_id <> $2 AND r.participant_count <= $3",
    )
    .bind(room_id)
    .bind(author)
    .bind(MESSAGE_ROOM_MAX)
    .fetch_all(&mut **tx)
    .await?;
    Ok((!readers.is_empty()).then_some(MessageNotice {
        event_id: envelope.event_id,
        at: envelope.occurred_at,
        room_id,
        message_id,
        author,
        ordinal,
        readers,
    }))
}

/// Tells the readers of each message who are offline (not in `online`;
/// everyone when presence is unknown: better told twice than never) and
/// have not read it yet: one `message` notification per participant and
/// room while it is unread, so later messages add none. Its id derives from
/// the event and the participant, so projecting again adds nothing.
/// Returns the pushes of the notifications written.
pub async fn tell_offline(
    tx: &mut Transaction<'_, Postgres>,
    notices: &[MessageNotice],
    online: Option<&std::collections::HashSet<Uuid>>,
) -> Result<Vec<ChannelUpdate>, sqlx::Error> {
    // One row per notice and reader told, in the notices' order: the first
    // message of a room in the batch makes a reader's notification, and the
    // later ones add none (`ON CONFLICT`), as they would one by one.
    let mut ids = Vec::new();
    let mut users = Vec::new();
    let mut actors = Vec::new();
    let mut rooms = Vec::new();
    let mut messages = Vec::new();
    let mut at = Vec::new();
    let mut ordinals = Vec::new();
    for notice in notices {
        let told = notice
            .readers
            .iter()
            .copied()
            .filter(|user| online.is_none_or(|online| !online.contains(user)));
        for user in told {
            ids.push(Uuid::new_v5(
                &notice.event_id,
                format!("notification:message:{user}").as_bytes(),
            ));
            users.push(user);
            actors.push(notice.author);
            rooms.push(notice.room_id);
            messages.push(notice.message_id);
            at.push(notice.at);
            ordinals.push(notice.ordinal);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // Still a participant who has not read the message (a receipt
    // projected since, in the same batch, says otherwise).
    let written: Vec<NotificationOf> = sqlx::query_as(&format!(
        "WITH n AS (
           INSERT INTO notifications (id, user_id, kind, actor_id, room_id, message_id, created_at)
           SELECT u.id, u.user_id, 'message', u.actor_id, u.room_id, u.message_id, u.created_at
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::timestamptz[], $7::bigint[])
             WITH ORDINALITY AS u(id, user_id, actor_id, room_id, message_id, created_at, ordinal, n)
           JOIN room_members m ON m.room_id = u.room_id AND m.user_id = u.user_id AND m.last_read < u.ordinal
           ORDER BY u.n
           ON CONFLICT DO NOTHING
           RETURNING *)
         SELECT n.user_id AS owner, {COLUMNS}, false AS read
         FROM n LEFT JOIN accounts a ON a.id = n.actor_id
         ORDER BY n.created_at, n.id"
    ))
    .bind(&ids)
    .bind(&users)
    .bind(&actors)
    .bind(&rooms)
    .bind(&messages)
    .bind(&at)
    .bind(&ordinals)
    .fetch_all(&mut **tx)
    .await?;
    Ok(written
        .into_iter()
        .map(|row| {
            ChannelUpdate::new(
                Channel::User(row.owner),
                "notification.created",
                serde_json::to_value(row.notification).expect("notifications serialize"),
            )
        })
        .collect())
}

/// A notification with the user it is for.
#[derive(sqlx::FromRow)]
struct NotificationOf {
    owner: Uuid,
    #[sqlx(flatten)]
    notification: Notification,
}

/// `user` read `room_id` up to the message at `ordinal`: their `message`
/// notification of the room is read once the marker reaches the message it
/// points at. Returns the new unread count for the user's channel if it
/// changed.
pub async fn room_read(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
    user: Uuid,
    ordinal: i64,
    at: DateTime<Utc>,
) -> Result<Option<ChannelUpdate>, sqlx::Error> {
    Ok(rooms_read(tx, &[room_id], &[user], &[ordinal], &[at])
        .await?
        .pop())
}

/// [`room_read`] for many marks (room, user, ordinal, time) in one
/// statement: the new unread count of each user whose notifications it
/// read, once per user.
pub async fn rooms_read(
    tx: &mut Transaction<'_, Postgres>,
    rooms: &[Uuid],
    users: &[Uuid],
    ordinals: &[i64],
    at: &[DateTime<Utc>],
) -> Result<Vec<ChannelUpdate>, sqlx::Error> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let mut marked: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE notifications n SET read_at = u.at
         FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[]) AS u(room_id, user_id, o, at)
         WHERE n.user_id = u.user_id AND n.room_id = u.room_id AND n.kind = 'message' AND n.read_at IS NULL
           AND (SELECT x.ordinal FROM room_messages x WHERE x.id = n.message_id) <= u.o
         RETURNING n.user_id",
    )
    .bind(rooms)
    .bind(users)
    .bind(ordinals)
    .bind(at)
    .fetch_all(&mut **tx)
    .await?;
    marked.sort_unstable();
    marked.dedup();
    let mut updates = Vec::with_capacity(marked.len());
    for user in marked {
        let unread = unread_count(&mut **tx, user).await?;
        updates.push(ChannelUpdate::new(
            Channel::User(user),
            "notifications.read",
            serde_json::json!({ "unread_count": unread }),
        ));
    }
    Ok(updates)
}

/// The usernames `text` mentions (`@name`, not inside a word or an email),
/// lowercased, each once.
pub fn mentions(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        let starts = c == '@' && !previous.is_some_and(|p| p.is_alphanumeric() || p == '_');
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if (3..=32).contains(&name.len()) {
            let name = name.to_lowercase();
            if !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

/// The inbox read model: marking read.
pub struct Inbox;

impl Projection for Inbox {
    type Event = Event;
    const TABLES: &'static [&'static str] = &["notifications"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        _envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        let Event::MarkedRead {
            user_id,
            ids,
            all_until,
            marked_at,
        } = event;
        sqlx::query(
            "UPDATE notifications SET read_at = $4
             WHERE user_id = $1 AND read_at IS NULL
               AND (id = ANY($2) OR ($3::timestamptz IS NOT NULL AND created_at <= $3))",
        )
        .bind(user_id)
        .bind(ids)
        .bind(all_until)
        .bind(marked_at)
        .execute(&mut **tx)
        .await?;
        let unread = unread_count(&mut **tx, *user_id).await?;
        Ok(Effects {
            updates: vec![ChannelUpdate::new(
                Channel::User(*user_id),
                "notifications.read",
                serde_json::json!({ "unread_count": unread }),
            )],
            ..Effects::default()
        })
    }
}

/// Hides notifications (`notifications n`) about a post that is gone, or
/// that their user may no longer see (a followers-only post of an author
/// they unfollowed): in lists, counts and mailed digests alike.
/// Notifications about a room are shown to its participants, and an
/// invitation to whom it still invites.
pub const SHOWN: &str = "(n.post_id IS NULL OR EXISTS (SELECT 1 FROM posts p WHERE p.id = n.post_id
    AND p.deleted_at IS NULL AND (p.visibility = 'public' OR p.author_id = n.user_id
    OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = n.user_id AND f.followee_id = p.author_id))))
    AND (n.room_id IS NULL
    OR EXISTS (SELECT 1 FROM room_members rm WHERE rm.room_id = n.room_id AND rm.user_id = n.user_id)
    OR (n.kind = 'invite' AND EXISTS (SELECT 1 FROM room_invites ri
        WHERE ri.room_id = n.room_id AND ri.user_id = n.user_id)))";

/// How many of the user's notifications are unread.
pub async fn unread_count(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM notifications n WHERE n.user_id = $1 AND n.read_at IS NULL AND {SHOWN}"
    ))
    .bind(user_id)
    .fetch_one(db)
    .await
}

/// The user's notifications, newest first, after the cursor `(created_at,
/// id)`.
pub async fn list(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    unread_only: bool,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Notification>, sqlx::Error> {
    let (at, id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, n.read_at IS NOT NULL AS read
         FROM notifications n LEFT JOIN accounts a ON a.id = n.actor_id
         WHERE n.user_id = $1 AND {SHOWN}
           AND (NOT $2 OR n.read_at IS NULL)
           AND ($3::timestamptz IS NULL OR (n.created_at, n.id) < ($3, $4))
         ORDER BY n.created_at DESC, n.id DESC
         LIMIT $5"
    ))
    .bind(user_id)
    .bind(unread_only)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_names_after_an_at_sign_outside_words() {
        assert_eq!(
            mentions("hi @Alice and @bob_2, not mail@example.com nor @ab; @alice again"),
            ["alice", "bob_2"]
        );
    }
}
