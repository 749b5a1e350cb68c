//! The account read model: how account events change it, and how the API
//! reads it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use tidings_domain::account::Event;
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::outbox::ChannelUpdate;
use crate::projection::{Effects, Projection};

/// One row of `accounts`, as the API and the cache use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AccountRow {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub token_version: i32,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The row's version: it goes up with every change to the row (the
    /// account's own events and the counts others' events move), and orders
    /// the cache's writes.
    pub version: i64,
}

/// `GET /api/profile`: the owner's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
}

/// `GET /api/users/{id}`: what anyone may see (no email).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicProfile {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
}

impl AccountRow {
    pub fn profile(&self) -> Profile {
        Profile {
            id: self.id,
            username: self.username.clone(),
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            bio: self.bio.clone(),
            avatar_url: self.avatar_url.clone(),
            created_at: self.created_at,
            followers_count: self.followers_count,
            following_count: self.following_count,
            posts_count: self.posts_count,
        }
    }

    pub fn public_profile(&self) -> PublicProfile {
        PublicProfile {
            id: self.id,
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            bio: self.bio.clone(),
            avatar_url: self.avatar_url.clone(),
            created_at: self.created_at,
            followers_count: self.followers_count,
            following_count: self.following_count,
            posts_count: self.posts_count,
        }
    }
}

/// The account read model, as a projection of account events.
pub struct Accounts;

impl Projection for Accounts {
    type Event = Event;
    const TABLES: &'static [&'static str] =
        &["accounts", "pending_registrations", "account_details"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        apply(tx, envelope, event).await
    }
}

/// Applies one admitted account event inside the projector's transaction.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    event: &Event,
) -> Result<Effects, sqlx::Error> {
    let id: Uuid = envelope
        .aggregate
        .id
        .parse()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let version = envelope.sequence as i64;
    match event {
        Event::Opened(o) => {
            sqlx::query(
                "INSERT INTO pending_registrations (user_id, email, username, opened_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(id)
            .bind(&o.email)
            .bind(&o.username)
            .bind(o.opened_at)
            .execute(&mut **tx)
            .await?;
            Ok(Effects::default())
        }
        Event::Abandoned { .. } => {
            finish_pending(tx, id).await?;
            Ok(Effects::default())
        }
        Event::Registered(r) => {
            finish_pending(tx, id).await?;
            // Written before v2, the event carried the hash: it moves to the
            // private store (the upcast event no longer has it).
            if let (1, Some(hash)) = (envelope.version, envelope.data["password_hash"].as_str()) {
                crate::credentials::store(&mut **tx, id, hash).await?;
            }
            // Follows and posts of this account can be projected before it
            // (they are on other partitions): its counts start from them.
            let account = sqlx::query_as::<_, AccountRow>(
                "INSERT INTO accounts (id, username, email, display_name, created_at, updated_at, version,
                                       followers_count, following_count, posts_count)
                 VALUES ($1, $2, $3, $4, $5, $5, $6,
                         (SELECT count(*) FROM follows WHERE followee_id = $1),
                         (SELECT count(*) FROM follows WHERE follower_id = $1),
                         (SELECT count(*) FROM posts WHERE author_id = $1 AND deleted_at IS NULL))
                 RETURNING *",
            )
            .bind(id)
            .bind(&r.username)
            .bind(&r.email)
            .bind(&r.display_name)
            .bind(r.registered_at)
            .bind(version)
            .fetch_one(&mut **tx)
            .await?;
            Ok(Effects {
                accounts: vec![account],
                ..Effects::default()
            })
        }
        Event::ProfileUpdated(u) => {
            let account = sqlx::query_as::<_, AccountRow>(
                "UPDATE accounts SET display_name = $2, bio = $3, avatar_url = $4, updated_at = $5, version = version + 1
                 WHERE id = $1
                 RETURNING *",
            )
            .bind(id)
            .bind(&u.display_name)
            .bind(&u.bio)
            .bind(&u.avatar_url)
            .bind(u.updated_at)
            .fetch_one(&mut **tx)
            .await?;
            let update = ChannelUpdate::new(
                Channel::User(id),
                "profile.updated",
                serde_json::to_value(account.profile()).expect("profiles serialize"),
            );
            Ok(Effects {
                accounts: vec![account],
                updates: vec![update],
                ..Effects::default()
            })
        }
        Event::DetailsUpdated(u) => Ok(Effects {
            details: vec![crate::details::apply(tx, id, version, u).await?],
            ..Effects::default()
        }),
        Event::PasswordChanged(changed) => {
            crate::credentials::put_in_force(tx, envelope, id, changed).await
        }
    }
}

/// Moves an account's counts (followers, following, posts) by the deltas,
/// as others' events change them; `None` when the account is not projected
/// yet (its registration then counts them). The row's version goes up with
/// every change, so the refreshed cache entry replaces the old one.
pub async fn add_to_counts(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    followers: i64,
    following: i64,
    posts: i64,
) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE accounts SET followers_count = followers_count + $2, following_count = following_count + $3,
                posts_count = posts_count + $4, version = version + 1
         WHERE id = $1
         RETURNING *",
    )
    .bind(id)
    .bind(followers)
    .bind(following)
    .bind(posts)
    .fetch_optional(&mut **tx)
    .await
}

/// A registration that ended, either way, is no longer pending.
async fn finish_pending(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM pending_registrations WHERE user_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Registrations opened before `before` and still pending: `(user id,
/// email, username)`.
pub async fn pending_before(
    db: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, email, username FROM pending_registrations
         WHERE opened_at < $1 ORDER BY opened_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The account a login names: a username, or an email (it has an `@`).
pub async fn by_login(db: &PgPool, login: &str) -> Result<Option<AccountRow>, sqlx::Error> {
    let query = if login.contains('@') {
        "SELECT * FROM accounts WHERE lower(email) = lower($1)"
    } else {
        "SELECT * FROM accounts WHERE lower(username) = lower($1)"
    };
    sqlx::query_as(query)
        .bind(login.trim())
        .fetch_optional(db)
        .await
}
