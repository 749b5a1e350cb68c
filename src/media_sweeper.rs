//! The media sweeper: deletes media items that no post took within
//! `TIDINGS_MEDIA_UNUSED_SECS` of their upload, then removes their objects
//! from the media store. It only proposes: whether an item is deleted is
//! decided by the item's own decider, which refuses once a post has taken
//! it (`media_in_use`), so a post written at the last moment keeps its
//! media.
//!
//! Two steps per round, each idempotent: `media.delete` for the unused items
//! the read model shows; then, for the items the read model shows deleted,
//! their objects removed and only then their rows. A sweeper that dies
//! between the steps finishes the work in a later round.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use object_store::ObjectStore;
use sqlx::PgPool;
use tidings_commands::{AnyCommand, CommandBus, CommandEnvelope, Outcome};
use tidings_domain::media;
use tidings_projections::media as read;
use tidings_schemas::{AggregateRef, AggregateType};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Items deleted, and items whose objects are removed, per round, at most.
const ROUND: i64 = 100;

pub async fn run(
    bus: CommandBus,
    db: PgPool,
    store: Arc<dyn ObjectStore>,
    unused_for: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = (unused_for / 2).clamp(Duration::from_millis(200), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let before = Utc::now() - chrono::Duration::from_std(unused_for)?;
        match read::unattached_before(&db, before, ROUND).await {
            Ok(unused) => {
                for media_id in unused {
                    delete(&bus, media_id).await;
                }
            }
            Err(error) => tracing::warn!(%error, "looking for unused media"),
        }
        match read::deleted(&db, ROUND).await {
            Ok(gone) => {
                for row in gone {
                    let removed = tidings_api::media::remove_objects(
                        store.as_ref(),
                        &row.object_key,
                        row.thumbnail_key.as_deref(),
                    )
                    .await;
                    if removed {
                        if let Err(error) = read::forget(&db, row.id).await {
                            tracing::warn!(%error, media_id = %row.id, "forgetting a deleted media item");
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "looking for deleted media"),
        }
    }
}

/// Proposes the deletion of one unused item. Its command id follows from
/// the item, so a sweeper that retries sends the same command.
async fn delete(bus: &CommandBus, media_id: Uuid) {
    let command = CommandEnvelope {
        command_id: Uuid::new_v5(&media_id, b"sweep"),
        idempotency_key: None,
        actor: None,
        issued_at: Utc::now(),
        correlation_id: Uuid::new_v4(),
        aggregate: AggregateRef::new(AggregateType::Media, media_id.to_string()),
        command: AnyCommand::Media(media::Command::Delete { at: Utc::now() }),
    };
    match bus.send(&command).await {
        Ok(Outcome::Accepted { .. }) => {
            metrics::counter!("tidings_media_swept_total").increment(1);
            tracing::info!(%media_id, "unused media item deleted");
        }
        Ok(Outcome::Rejected { code, .. }) => {
            tracing::debug!(%media_id, code, "unused media item left as it is")
        }
        Err(error) => tracing::warn!(%error, %media_id, "deleting an unused media item"),
    }
}
