//! Follows: who follows whom, the counts on both profiles, and the follow
//! notification.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::follow::Event;
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::accounts;
use crate::notifications::{Kind, Notify};
use crate::outbox::ChannelUpdate;
use crate::projection::{Effects, FeedChange, Projection};

/// The update on `user:{follower}` when a follow ends, with data
/// `{follower, followee}`.
pub const FOLLOW_REMOVED: &str = "follow.removed";

/// A user in a followers or following list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FollowView {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    /// When the follow began.
    pub followed_at: DateTime<Utc>,
}

/// The follow read model.
pub struct Follows;

impl Projection for Follows {
    type Event = Event;
    const TABLES: &'static [&'static str] = &["follows"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        let mut effects = Effects::default();
        let (follower, followee, delta) = match event {
            Event::Followed {
                follower,
                followee,
                followed_at,
            } => {
                sqlx::query(
                    "INSERT INTO follows (follower_id, followee_id, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(follower)
                .bind(followee)
                .bind(followed_at)
                .execute(&mut **tx)
                .await?;
                let notify = Notify {
                    envelope,
                    user_id: *followee,
                    kind: Kind::Follow,
                    actor_id: *follower,
                    post_id: None,
                    comment_id: None,
                    reaction: None,
                    room_id: None,
                };
                effects.updates.extend(notify.write(tx).await?);
                (follower, followee, 1)
            }
            Event::Unfollowed {
                follower, followee, ..
            } => {
                sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2")
                    .bind(follower)
                    .bind(followee)
                    .execute(&mut **tx)
                    .await?;
                // On the follower's own channel, which every gateway process
                // follows: each drops the follower's subscriptions to the
                // followee's followers-only posts (realtime/src/session.rs).
                effects.updates.push(ChannelUpdate::new(
                    Channel::User(*follower),
                    FOLLOW_REMOVED,
                    serde_json::json!({ "follower": follower, "followee": followee }),
                ));
                (follower, followee, -1)
            }
        };
        effects
            .accounts
            .extend(accounts::add_to_counts(tx, *follower, 0, delta, 0).await?);
        // The follower's feed gains or loses a whole author.
        effects.feeds.push(FeedChange::Reset {
            users: vec![*follower],
        });
        effects
            .accounts
            .extend(accounts::add_to_counts(tx, *followee, delta, 0, 0).await?);
        Ok(effects)
    }
}

/// Whether `follower` follows `followee`.
pub async fn follows(
    db: impl PgExecutor<'_>,
    follower: Uuid,
    followee: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM follows WHERE follower_id = $1 AND followee_id = $2)",
    )
    .bind(follower)
    .bind(followee)
    .fetch_one(db)
    .await
}

/// Which side of the follows of a user a list shows.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// Who follows the user.
    Followers,
    /// Whom the user follows.
    Following,
}

/// The followers or followings of `user_id`, latest first, after the cursor
/// `(followed_at, id)`.
pub async fn list(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    side: Side,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<FollowView>, sqlx::Error> {
    let (mine, theirs) = match side {
        Side::Followers => ("followee_id", "follower_id"),
        Side::Following => ("follower_id", "followee_id"),
    };
    let (at, id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT a.id, a.username, a.display_name, a.avatar_url, f.created_at AS followed_at
         FROM follows f JOIN accounts a ON a.id = f.{theirs}
         WHERE f.{mine} = $1 AND ($2::timestamptz IS NULL OR (f.created_at, a.id) < ($2, $3))
         ORDER BY f.created_at DESC, a.id DESC
         LIMIT $4"
    ))
    .bind(user_id)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}
