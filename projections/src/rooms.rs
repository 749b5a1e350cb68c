//! Rooms, their participants and messages: how room events change the read
//! models and what realtime channels receive, and how the API reads them.
//!
//! Every message (new, edited, deleted) goes to the room's channel
//! (`room:{id}`) and to the own channel (`user:{id}`) of each participant at
//! that moment, so a participant who left or was removed stops receiving it
//! on the user channel. Revocation of the room channel travels as updates
//! too: `room.member_left` / `room.member_removed` on `room:{id}` (in the
//! channel's order, before any later message) and on the user's channel;
//! the gateway drops that user's subscription to the room when it passes
//! one on, on every gateway process alike.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::room::Event;
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::notifications;
use crate::outbox::ChannelUpdate;
use crate::posts::{media_object, Author, PostMedia};
use crate::projection::{Effects, Projection};

mod posted;
pub use posted::Posted;

/// A room as a viewer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RoomView {
    pub id: Uuid,
    /// `group` or `direct` (a two-person conversation).
    pub kind: String,
    pub name: String,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    /// The room's own settings, a JSON object.
    #[schema(value_type = Object)]
    pub settings: sqlx::types::Json<serde_json::Value>,
    pub is_private: bool,
    pub max_participants: i32,
    /// `null` for a direct conversation.
    pub owner_id: Option<Uuid>,
    pub participant_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The viewer's role: `owner`, `admin`, `member`, or `null` when not a
    /// participant.
    pub my_role: Option<String>,
    /// Messages of others after the viewer's last read one; `null` when not
    /// a participant.
    pub unread_count: Option<i64>,
}

/// A participant, with how far they have read (their read receipt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ParticipantView {
    pub user_id: Uuid,
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// `owner`, `admin` or `member`.
    pub role: String,
    pub joined_at: DateTime<Utc>,
    /// The last message read, if any.
    pub last_read_message_id: Option<Uuid>,
    pub read_at: Option<DateTime<Utc>>,
}

/// A message as the room's readers see it. A deleted one is a tombstone:
/// `text` is `null` and `deleted` true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub room_id: Uuid,
    pub author: Author,
    pub text: Option<String>,
    pub media_ids: Vec<Uuid>,
    /// The media items, in order, as a post's (none once deleted).
    pub media: Vec<PostMedia>,
    /// The message's place in the room, from 1.
    pub ordinal: i64,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    room_id: Uuid,
    author_id: Uuid,
    author_username: Option<String>,
    author_display_name: Option<String>,
    author_avatar_url: Option<String>,
    text: Option<String>,
    media_ids: Vec<Uuid>,
    media: sqlx::types::Json<Vec<PostMedia>>,
    ordinal: i64,
    created_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        MessageView {
            id: row.id,
            room_id: row.room_id,
            author: Author {
                id: row.author_id,
                username: row.author_username,
                display_name: row.author_display_name,
                avatar_url: row.author_avatar_url,
            },
            text: row.text,
            media_ids: row.media_ids,
            media: row.media.0,
            ordinal: row.ordinal,
            created_at: row.created_at,
            edited_at: row.edited_at,
            deleted: row.deleted_at.is_some(),
            deleted_at: row.deleted_at,
        }
    }
}

/// A read receipt, as pushed to the room and its other participants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub message_id: Uuid,
    pub read_at: DateTime<Utc>,
}

/// The room read model, as a projection of room events.
pub struct Rooms;

impl Projection for Rooms {
    type Event = Event;
    const TABLES: &'static [&'static str] =
        &["rooms", "room_members", "room_invites", "room_messages"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        apply(tx, envelope, event).await
    }
}

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    event: &Event,
) -> Result<Effects, sqlx::Error> {
    let mut updates = Vec::new();
    let mut notices = Vec::new();
    match event {
        Event::Created(c) => {
            sqlx::query(
                "INSERT INTO rooms (id, kind, name, description, avatar_url, settings, is_private,
                                    max_participants, owner_id, participant_count, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6::text::json, $7, $8, $9, $10, $11, $11)",
            )
            .bind(c.room_id)
            .bind(c.kind.as_str())
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.avatar_url)
            .bind(settings_text(&c.settings))
            .bind(c.is_private)
            .bind(c.max_participants as i32)
            .bind(c.owner)
            .bind(c.participants.len() as i32)
            .bind(c.created_at)
            .execute(&mut **tx)
            .await?;
            let roles: Vec<&str> = c
                .participants
                .iter()
                .map(|p| {
                    if Some(*p) == c.owner {
                        "owner"
                    } else {
                        "member"
                    }
                })
                .collect();
            sqlx::query(
                "INSERT INTO room_members (room_id, user_id, role, joined_at)
                 SELECT $1, u, r, $4 FROM UNNEST($2::uuid[], $3::text[]) AS x(u, r)",
            )
            .bind(c.room_id)
            .bind(&c.participants)
            .bind(&roles)
            .bind(c.created_at)
            .execute(&mut **tx)
            .await?;
        }
        Event::Updated(u) => {
            let c = &u.changes;
            sqlx::query(
                "UPDATE rooms SET name = coalesce($2, name), description = coalesce($3, description),
                        avatar_url = coalesce($4, avatar_url), settings = coalesce($5::text::json, settings),
                        is_private = coalesce($6, is_private), max_participants = coalesce($7, max_participants),
                        updated_at = $8
                 WHERE id = $1",
            )
            .bind(u.room_id)
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.avatar_url)
            .bind(c.settings.as_ref().map(settings_text))
            .bind(c.is_private)
            .bind(c.max_participants.map(|m| m as i32))
            .bind(u.updated_at)
            .execute(&mut **tx)
            .await?;
            if let Some(room) = visible(&mut **tx, u.by, u.room_id).await? {
                // The settings are the client's own JSON: a client reads
                // them over REST; the outbox (jsonb) carries only what
                // Tidings wrote.
                let room = serde_json::json!({
                    "room_id": room.id, "name": room.name, "description": room.description,
                    "avatar_url": room.avatar_url, "settings_changed": c.settings.is_some(),
                    "is_private": room.is_private, "max_participants": room.max_participants,
                    "by": u.by,
                });
                updates.push(ChannelUpdate::new(
                    Channel::Room(u.room_id),
                    "room.updated",
                    room,
                ));
            }
        }
        Event::Invited(i) => {
            sqlx::query(
                "INSERT INTO room_invites (room_id, user_id, invited_by, invited_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(i.room_id)
            .bind(i.user)
            .bind(i.by)
            .bind(i.invited_at)
            .execute(&mut **tx)
            .await?;
            // An invitation is news to the invitee alone.
            let notify = notifications::Notify {
                envelope,
                user_id: i.user,
                kind: notifications::Kind::Invite,
                actor_id: i.by,
                post_id: None,
                comment_id: None,
                reaction: None,
                room_id: Some(i.room_id),
            };
            updates.extend(notify.write(tx).await?);
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM rooms WHERE id = $1")
                .bind(i.room_id)
                .fetch_optional(&mut **tx)
                .await?;
            updates.push(ChannelUpdate::new(
                Channel::User(i.user),
                "room.invited",
                serde_json::json!({"room_id": i.room_id, "name": name, "by": i.by, "invited_at": i.invited_at}),
            ));
        }
        Event::Joined(j) => {
            sqlx::query("DELETE FROM room_invites WHERE room_id = $1 AND user_id = $2")
                .bind(j.room_id)
                .bind(j.user)
                .execute(&mut **tx)
                .await?;
            // A newcomer has read what came before (as the decider holds).
            sqlx::query(
                "INSERT INTO room_members (room_id, user_id, role, joined_at, last_read)
                 VALUES ($1, $2, $3, $4, coalesce((SELECT max(ordinal) FROM room_messages WHERE room_id = $1), 0))",
            )
            .bind(j.room_id)
            .bind(j.user)
            .bind(j.role.as_str())
            .bind(j.joined_at)
            .execute(&mut **tx)
            .await?;
            add_participants(tx, j.room_id, 1).await?;
            let data = serde_json::json!({"room_id": j.room_id, "user_id": j.user, "role": j.role.as_str()});
            updates.push(ChannelUpdate::new(
                Channel::Room(j.room_id),
                "room.member_joined",
                data.clone(),
            ));
            updates.push(ChannelUpdate::new(
                Channel::User(j.user),
                "room.member_joined",
                data,
            ));
        }
        Event::Left(l) => {
            updates.extend(departed(tx, l.room_id, l.user, None).await?);
        }
        Event::MemberRemoved(r) => {
            updates.extend(departed(tx, r.room_id, r.user, Some(r.by)).await?);
        }
        Event::RoleChanged(r) => {
            set_role(tx, r.room_id, r.user, r.role.as_str()).await?;
            updates.push(ChannelUpdate::new(
                Channel::Room(r.room_id),
                "room.role_changed",
                serde_json::json!({"room_id": r.room_id, "user_id": r.user, "role": r.role.as_str(), "by": r.by}),
            ));
        }
        Event::OwnershipTransferred(t) => {
            set_role(tx, t.room_id, t.from, "admin").await?;
            set_role(tx, t.room_id, t.to, "owner").await?;
            sqlx::query("UPDATE rooms SET owner_id = $2, updated_at = $3 WHERE id = $1")
                .bind(t.room_id)
                .bind(t.to)
                .bind(t.transferred_at)
                .execute(&mut **tx)
                .await?;
            updates.push(ChannelUpdate::new(
                Channel::Room(t.room_id),
                "room.ownership_transferred",
                serde_json::json!({"room_id": t.room_id, "from": t.from, "to": t.to}),
            ));
        }
        Event::MessagePosted(m) => {
            sqlx::query(
                "INSERT INTO room_messages (id, room_id, author_id, ordinal, text, media_ids, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(m.message_id)
            .bind(m.room_id)
            .bind(m.author)
            .bind(m.ordinal as i64)
            .bind(&m.text)
            .bind(&m.media_ids)
            .bind(m.posted_at)
            .execute(&mut **tx)
            .await?;
            // One has read what one wrote (as the decider holds).
            sqlx::query(
                "UPDATE room_members SET last_read = $3, last_read_message = $4, read_at = $5
                 WHERE room_id = $1 AND user_id = $2 AND last_read < $3",
            )
            .bind(m.room_id)
            .bind(m.author)
            .bind(m.ordinal as i64)
            .bind(m.message_id)
            .bind(m.posted_at)
            .execute(&mut **tx)
            .await?;
            updates.extend(to_readers(tx, m.room_id, m.message_id, "message.created").await?);
            updates.extend(
                notifications::room_read(tx, m.room_id, m.author, m.ordinal as i64, m.posted_at)
                    .await?,
            );
            notices.extend(
                notifications::message_posted(
                    tx,
                    envelope,
                    m.room_id,
                    m.message_id,
                    m.author,
                    m.ordinal as i64,
                )
                .await?,
            );
        }
        Event::MessageEdited(e) => {
            sqlx::query("UPDATE room_messages SET text = $2, edited_at = $3 WHERE id = $1")
                .bind(e.message_id)
                .bind(&e.text)
                .bind(e.edited_at)
                .execute(&mut **tx)
                .await?;
            updates.extend(to_readers(tx, e.room_id, e.message_id, "message.edited").await?);
        }
        Event::MessageDeleted(d) => {
            sqlx::query(
                "UPDATE room_messages SET text = NULL, media_ids = '{}', deleted_at = $2, deleted_by = $3
                 WHERE id = $1",
            )
            .bind(d.message_id)
            .bind(d.deleted_at)
            .bind(d.by)
            .execute(&mut **tx)
            .await?;
            updates.extend(to_readers(tx, d.room_id, d.message_id, "message.deleted").await?);
        }
        Event::Read(r) => {
            sqlx::query(
                "UPDATE room_members SET last_read = $3, last_read_message = $4, read_at = $5
                 WHERE room_id = $1 AND user_id = $2 AND last_read < $3",
            )
            .bind(r.room_id)
            .bind(r.user)
            .bind(r.ordinal as i64)
            .bind(r.message_id)
            .bind(r.read_at)
            .execute(&mut **tx)
            .await?;
            let receipt = serde_json::to_value(Receipt {
                room_id: r.room_id,
                user_id: r.user,
                message_id: r.message_id,
                read_at: r.read_at,
            })
            .expect("receipts serialize");
            updates.push(ChannelUpdate::new(
                Channel::Room(r.room_id),
                "room.read",
                receipt.clone(),
            ));
            for member in members(tx, r.room_id).await? {
                if member != r.user {
                    updates.push(ChannelUpdate::new(
                        Channel::User(member),
                        "room.read",
                        receipt.clone(),
                    ));
                }
            }
            let unread = unread_count(&mut **tx, r.room_id, r.user).await?;
            updates.push(ChannelUpdate::new(
                Channel::User(r.user),
                "room.unread",
                serde_json::json!({"room_id": r.room_id, "unread_count": unread}),
            ));
            updates.extend(
                notifications::room_read(tx, r.room_id, r.user, r.ordinal as i64, r.read_at)
                    .await?,
            );
        }
    }
    Ok(Effects {
        updates,
        notices,
        ..Effects::default()
    })
}

/// A room's settings as the text stored in its `json` column.
fn settings_text(settings: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(settings).expect("settings serialize")
}

async fn add_participants(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
    n: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE rooms SET participant_count = participant_count + $2 WHERE id = $1")
        .bind(room_id)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn set_role(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
    user: Uuid,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE room_members SET role = $3 WHERE room_id = $1 AND user_id = $2")
        .bind(room_id)
        .bind(user)
        .bind(role)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A participant left (`by` is `None`) or was removed: out of the room, and
/// the revocation on the room's channel and the user's own, which the
/// gateway acts on.
async fn departed(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
    user: Uuid,
    by: Option<Uuid>,
) -> Result<Vec<ChannelUpdate>, sqlx::Error> {
    sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
        .bind(room_id)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    add_participants(tx, room_id, -1).await?;
    // What the room told them goes with them: coming back later, they
    // start from the room's end, and a new message tells them anew.
    sqlx::query("DELETE FROM notifications WHERE user_id = $2 AND room_id = $1")
        .bind(room_id)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    let (event, data) = match by {
        None => (
            REVOKED[0],
            serde_json::json!({"room_id": room_id, "user_id": user}),
        ),
        Some(by) => (
            REVOKED[1],
            serde_json::json!({"room_id": room_id, "user_id": user, "by": by}),
        ),
    };
    Ok(vec![
        ChannelUpdate::new(Channel::Room(room_id), event, data.clone()),
        ChannelUpdate::new(Channel::User(user), event, data),
    ])
}

/// The updates after which `data.user_id` no longer reads the room
/// `data.room_id`: the gateway drops that user's subscription to
/// `room:{room_id}` when it passes one on.
pub const REVOKED: [&str; 2] = ["room.member_left", "room.member_removed"];

/// The room's participants now.
async fn members(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM room_members WHERE room_id = $1")
        .bind(room_id)
        .fetch_all(&mut **tx)
        .await
}

/// A message's view, to the room's channel and each participant's own.
async fn to_readers(
    tx: &mut Transaction<'_, Postgres>,
    room_id: Uuid,
    message_id: Uuid,
    event: &str,
) -> Result<Vec<ChannelUpdate>, sqlx::Error> {
    let Some(view) = message(&mut **tx, message_id).await? else {
        return Ok(vec![]);
    };
    let data = serde_json::to_value(view).expect("messages serialize");
    let members = members(tx, room_id).await?;
    Ok(to_room_and_members(room_id, &members, event, data))
}

/// A change to a room's channel and each participant's own.
fn to_room_and_members(
    room_id: Uuid,
    members: &[Uuid],
    event: &str,
    data: serde_json::Value,
) -> Vec<ChannelUpdate> {
    std::iter::once(Channel::Room(room_id))
        .chain(members.iter().map(|member| Channel::User(*member)))
        .map(|channel| ChannelUpdate::new(channel, event, data.clone()))
        .collect()
}

/// The columns of a [`RoomView`] for the viewer `$1`, from `rooms r` and
/// the viewer's membership `m`.
const ROOM_FROM: &str = "SELECT r.id, r.kind, r.name, r.description, r.avatar_url, r.settings, r.is_private,
        r.max_participants, r.owner_id, r.participant_count, r.created_at, r.updated_at,
        m.role AS my_role,
        CASE WHEN m.user_id IS NULL THEN NULL ELSE
          (SELECT count(*) FROM room_messages x
           WHERE x.room_id = r.id AND x.ordinal > m.last_read AND x.deleted_at IS NULL AND x.author_id <> $1)
        END AS unread_count
    FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id AND m.user_id = $1";

/// A public group room, to anyone.
const PUBLIC: &str = "r.kind = 'group' AND NOT r.is_private";

/// A room, if the viewer may see it: a public group room, or one the viewer
/// is in.
pub async fn visible(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    room_id: Uuid,
) -> Result<Option<RoomView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{ROOM_FROM} WHERE r.id = $2 AND ({PUBLIC} OR m.user_id IS NOT NULL)"
    ))
    .bind(viewer)
    .bind(room_id)
    .fetch_optional(db)
    .await
}

/// A public group room, whoever asks (the preview).
pub async fn public_room(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    room_id: Uuid,
) -> Result<Option<RoomView>, sqlx::Error> {
    sqlx::query_as(&format!("{ROOM_FROM} WHERE r.id = $2 AND {PUBLIC}"))
        .bind(viewer)
        .bind(room_id)
        .fetch_optional(db)
        .await
}

/// Whether the viewer is a participant of the room.
pub async fn is_participant(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    room_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)",
    )
    .bind(room_id)
    .bind(viewer)
    .fetch_one(db)
    .await
}

/// Which rooms a list holds.
#[derive(Debug, Clone, Copy)]
pub enum Listing {
    /// The viewer's rooms (and conversations).
    Mine,
    /// Public group rooms.
    Public,
}

/// Rooms, newest first, after the cursor `(created_at, id)`.
pub async fn list(
    db: impl PgExecutor<'_>,
    viewer: Uuid,
    listing: Listing,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RoomView>, sqlx::Error> {
    let (at, id) = after.unzip();
    let which = match listing {
        Listing::Mine => "m.user_id IS NOT NULL",
        Listing::Public => PUBLIC,
    };
    sqlx::query_as(&format!(
        "{ROOM_FROM} WHERE {which}
           AND ($2::timestamptz IS NULL OR (r.created_at, r.id) < ($2, $3))
         ORDER BY r.created_at DESC, r.id DESC
         LIMIT $4"
    ))
    .bind(viewer)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many public group rooms there are, and how many group rooms in all.
pub async fn totals(db: impl PgExecutor<'_>) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT is_private), count(*) FROM rooms WHERE kind = 'group'",
    )
    .fetch_one(db)
    .await
}

/// A room's participants with their receipts, owner and admins first (at
/// most `domain::room::MAX_PARTICIPANTS`).
pub async fn participants(
    db: impl PgExecutor<'_>,
    room_id: Uuid,
) -> Result<Vec<ParticipantView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.user_id, a.username, a.display_name, m.role, m.joined_at,
                m.last_read_message AS last_read_message_id, m.read_at
         FROM room_members m LEFT JOIN accounts a ON a.id = m.user_id
         WHERE m.room_id = $1
         ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, m.joined_at, m.user_id",
    )
    .bind(room_id)
    .fetch_all(db)
    .await
}

const MESSAGES_FROM: &str = concat!(
    "SELECT x.id, x.room_id, x.author_id, a.username AS author_username,
        a.display_name AS author_display_name, a.avatar_url AS author_avatar_url, x.text, x.media_ids,
        coalesce((SELECT jsonb_agg(",
    media_object!(),
    " ORDER BY i.n)
            FROM unnest(x.media_ids) WITH ORDINALITY AS i(id, n)
            JOIN media m ON m.id = i.id AND m.deleted_at IS NULL), '[]') AS media,
        x.ordinal, x.created_at, x.edited_at, x.deleted_at
    FROM room_messages x LEFT JOIN accounts a ON a.id = x.author_id"
);

/// A room's messages, newest first, before the ordinal `before`, tombstones
/// included. The caller has checked that the viewer may read the room.
pub async fn messages(
    db: impl PgExecutor<'_>,
    room_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageView>, sqlx::Error> {
    let rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "{MESSAGES_FROM} WHERE x.room_id = $1 AND ($2::bigint IS NULL OR x.ordinal < $2)
         ORDER BY x.ordinal DESC LIMIT $3"
    ))
    .bind(room_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(MessageView::from).collect())
}

/// One message.
pub async fn message(
    db: impl PgExecutor<'_>,
    message_id: Uuid,
) -> Result<Option<MessageView>, sqlx::Error> {
    let row: Option<MessageRow> = sqlx::query_as(&format!("{MESSAGES_FROM} WHERE x.id = $1"))
        .bind(message_id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(MessageView::from))
}

/// Events whose data is a message's view as it was posted or edited.
pub const MESSAGE_VIEW_EVENTS: [&str; 2] = ["message.created", "message.edited"];

/// The current views of those of `ids` that were edited or deleted after
/// they were posted. A replay of a channel's history shows these instead of
/// the views its updates carried then: a deleted message's text, and an
/// edited one's earlier text, are not handed out again.
pub async fn changed_since_posted(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<MessageView>, sqlx::Error> {
    let rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "{MESSAGES_FROM} WHERE x.id = ANY($1) AND (x.edited_at IS NOT NULL OR x.deleted_at IS NOT NULL)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(MessageView::from).collect())
}

/// The messages of others after the user's last read one, tombstones left
/// out.
pub async fn unread_count(
    db: impl PgExecutor<'_>,
    room_id: Uuid,
    user: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM room_messages x JOIN room_members m ON m.room_id = x.room_id AND m.user_id = $2
         WHERE x.room_id = $1 AND x.ordinal > m.last_read AND x.deleted_at IS NULL AND x.author_id <> $2",
    )
    .bind(room_id)
    .bind(user)
    .fetch_one(db)
    .await
}
