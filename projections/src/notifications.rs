//! Notifications: what a user is told about (a like, a comment, a follow, a
//! mention), derived by the projector from others' events and pushed on the
//! user's channel; and the inbox events by which the owner marks them read.

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
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Like => "like",
            Kind::Reaction => "reaction",
            Kind::Comment => "comment",
            Kind::Follow => "follow",
            Kind::Mention => "mention",
        }
    }
}

/// A notification as its owner reads it (`GET /api/notifications`, and the
/// `notification.created` push on `user:{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    pub id: Uuid,
    /// `like`, `reaction`, `comment`, `follow` or `mention`.
    pub kind: String,
    /// Who did it.
    pub actor_id: Uuid,
    pub actor_username: Option<String>,
    pub post_id: Option<Uuid>,
    pub comment_id: Option<Uuid>,
    /// For `reaction`: which one.
    pub reaction: Option<String>,
    pub created_at: DateTime<Utc>,
    pub read: bool,
}

/// One thing to tell `user_id` about, caused by `envelope`.
pub struct Notify<'a> {
    pub envelope: &'a EventEnvelope,
    pub user_id: Uuid,
    pub kind: Kind,
    pub actor_id: Uuid,
    pub post_id: Option<Uuid>,
    pub comment_id: Option<Uuid>,
    pub reaction: Option<&'a str>,
}

impl Notify<'_> {
    /// Writes the notification (never one for oneself) and returns what the
    /// owner's channel receives. Its id derives from the event and the
    /// owner, so projecting the event again adds nothing.
    pub async fn write(
        self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Option<ChannelUpdate>, sqlx::Error> {
        if self.user_id == self.actor_id {
            return Ok(None);
        }
        let id = Uuid::new_v5(
            &self.envelope.event_id,
            format!("notification:{}:{}", self.kind.as_str(), self.user_id).as_bytes(),
        );
        let written: Option<Notification> = sqlx::query_as(
            "WITH n AS (
               INSERT INTO notifications (id, user_id, kind, actor_id, post_id, comment_id, reaction, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (id) DO NOTHING
               RETURNING *)
             SELECT n.id, n.kind, n.actor_id, a.username AS actor_username, n.post_id, n.comment_id,
                    n.reaction, n.created_at, false AS read
             FROM n LEFT JOIN accounts a ON a.id = n.actor_id",
        )
        .bind(id)
        .bind(self.user_id)
        .bind(self.kind.as_str())
        .bind(self.actor_id)
        .bind(self.post_id)
        .bind(self.comment_id)
        .bind(self.reaction)
        .bind(self.envelope.occurred_at)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(written.map(|n| {
            ChannelUpdate::new(
                Channel::User(self.user_id),
                "notification.created",
                serde_json::to_value(n).expect("notifications serialize"),
            )
        }))
    }
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
pub const SHOWN: &str = "(n.post_id IS NULL OR EXISTS (SELECT 1 FROM posts p WHERE p.id = n.post_id
    AND p.deleted_at IS NULL AND (p.visibility = 'public' OR p.author_id = n.user_id
    OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = n.user_id AND f.followee_id = p.author_id))))";

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
        "SELECT n.id, n.kind, n.actor_id, a.username AS actor_username, n.post_id, n.comment_id,
                n.reaction, n.created_at, n.read_at IS NOT NULL AS read
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
