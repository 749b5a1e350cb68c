//! Media items: how media events change the `media` table, and the queries
//! the API (serving the bytes, checking a post's `media_ids`) and the media
//! sweeper read it with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::media::Event;
use tidings_schemas::EventEnvelope;
use uuid::Uuid;

use crate::projection::{Effects, Projection};

/// Where an item is served: the same for every viewer, relative to the API.
pub fn url(id: Uuid) -> String {
    format!("/media/{id}")
}

pub fn thumbnail_url(id: Uuid) -> String {
    format!("/media/{id}/thumbnail")
}

/// A media item as the `media` table holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MediaRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub content_type: String,
    pub size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub sha256: String,
    pub object_key: String,
    pub thumbnail_key: Option<String>,
    pub thumbnail_content_type: Option<String>,
    pub uploaded_at: DateTime<Utc>,
    pub attached_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A media item as clients see it (the answer of `POST /api/media`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MediaView {
    pub id: Uuid,
    /// Where the bytes are served (`GET /media/{id}`).
    pub url: String,
    pub content_type: String,
    pub size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Images only (`GET /media/{id}/thumbnail`).
    pub thumbnail_url: Option<String>,
}

impl From<&MediaRow> for MediaView {
    fn from(row: &MediaRow) -> Self {
        MediaView {
            id: row.id,
            url: url(row.id),
            content_type: row.content_type.clone(),
            size: row.size,
            width: row.width,
            height: row.height,
            thumbnail_url: row.thumbnail_key.as_ref().map(|_| thumbnail_url(row.id)),
        }
    }
}

/// The media read model, as a projection of media events.
pub struct Media;

impl Projection for Media {
    type Event = Event;
    const TABLES: &'static [&'static str] = &["media"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        _envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        match event {
            Event::Uploaded(u) => {
                let s = &u.stored;
                sqlx::query(
                    "INSERT INTO media (id, owner_id, content_type, size, width, height, sha256, object_key,
                                        thumbnail_key, thumbnail_content_type, uploaded_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(s.media_id)
                .bind(s.owner)
                .bind(&s.content_type)
                .bind(i64::try_from(s.size).unwrap_or(i64::MAX))
                .bind(s.width.and_then(|w| i32::try_from(w).ok()))
                .bind(s.height.and_then(|h| i32::try_from(h).ok()))
                .bind(&s.sha256)
                .bind(&s.object_key)
                .bind(&s.thumbnail_key)
                .bind(&s.thumbnail_content_type)
                .bind(u.uploaded_at)
                .execute(&mut **tx)
                .await?;
            }
            Event::Attached(a) => {
                sqlx::query(
                    "UPDATE media SET attached_at = coalesce(attached_at, $2) WHERE id = $1",
                )
                .bind(a.media_id)
                .bind(a.attached_at)
                .execute(&mut **tx)
                .await?;
            }
            Event::Deleted(d) => {
                sqlx::query("UPDATE media SET deleted_at = $2 WHERE id = $1")
                    .bind(d.media_id)
                    .bind(d.deleted_at)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(Effects::default())
    }
}

/// A media item that is not deleted.
pub async fn live(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<MediaRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM media WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The items of `ids` that exist, deleted or not.
pub async fn by_ids(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<MediaRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM media WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(db)
        .await
}

/// Up to `limit` items uploaded before `before` that no post took and that
/// are not deleted yet, oldest first: what the sweeper proposes to delete.
pub async fn unattached_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT m.id FROM media m
         WHERE m.attached_at IS NULL AND m.deleted_at IS NULL AND m.uploaded_at < $1
           AND NOT EXISTS (SELECT 1 FROM post_media pm WHERE pm.media_id = m.id)
         ORDER BY m.uploaded_at
         LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Up to `limit` deleted items whose objects are still to be removed.
pub async fn deleted(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<MediaRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM media WHERE deleted_at IS NOT NULL ORDER BY deleted_at LIMIT $1")
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Forgets a deleted item once its objects are removed.
pub async fn forget(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM media WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}
