//! The projector: `tidings.events` → read models, offsets and outbox, in one
//! PostgreSQL transaction per batch.
//!
//! Its offsets live in `projector_offsets`, written in the same transaction
//! as the rows the events produced. On assignment it seeks there; and inside
//! the transaction every event below the stored offset is passed over, so
//! even a message fetched before the seek, or a batch replayed after a crash
//! before commit, is applied exactly once. Each event is also held to the
//! sequence rule, the same one the deciders apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset};
use sqlx::{PgPool, Postgres, Transaction};
use tidings_schemas::kafka::{KafkaSettings, Owned};
use tidings_schemas::{faults, Cursor, DomainEvent, EventEnvelope};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::{self, AccountRow};
use crate::cache::Cache;
use crate::db::Progress;
use crate::outbox::{self, ChannelUpdate};

/// Events per transaction, at most.
const MAX_BATCH: usize = 500;
/// How long the projector keeps collecting a batch once it has one event:
/// a little latency buys fewer, larger transactions under load.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub kafka: KafkaSettings,
    /// Kept up to date with how many partitions this projector owns.
    pub owned: Owned,
    /// Told of every commit, to wake the readers waiting for a position.
    pub progress: Progress,
}

/// Notes partitions the group hands over, for the loop to seek them to the
/// offsets stored in PostgreSQL.
#[derive(Default)]
struct Assignments {
    assigned: Mutex<Vec<i32>>,
    owned: Owned,
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut assigned = self.assigned.lock().expect("assignments lock");
            assigned.extend(list.elements().iter().map(|e| e.partition()));
        }
        self.owned.rebalanced(rebalance);
    }
}

pub async fn run(
    settings: ProjectorSettings,
    db: PgPool,
    cache: Option<Cache>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topic = settings.kafka.topics().events;
    let group = format!("{}.projector", settings.kafka.topic_prefix);
    let consumer: Arc<StreamConsumer<Assignments>> = Arc::new(
        settings
            .kafka
            .consumer(Some(&group))
            .create_with_context(Assignments {
                owned: settings.owned.clone(),
                ..Default::default()
            })
            .context("creating the projector consumer")?,
    );
    consumer.subscribe(&[&topic])?;
    tracing::info!(%group, "projector started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message.map(|m| m.detach()),
        };
        seek_assigned(&consumer, &topic, &db).await;
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                tracing::warn!(%error, "reading events");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let window = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(_)) => break,
                None if tokio::time::Instant::now() < window => tokio::task::yield_now().await,
                None => break,
            }
        }
        let changed = project(&db, &batch).await?;
        // The next offset of each partition of the batch is committed now
        // (at least: events below the stored offset were passed over).
        let mut committed: Vec<(i32, i64)> = Vec::new();
        for message in &batch {
            match committed
                .iter_mut()
                .find(|(p, _)| *p == message.partition())
            {
                Some((_, next)) => *next = (*next).max(message.offset() + 1),
                None => committed.push((message.partition(), message.offset() + 1)),
            }
        }
        settings.progress.advance(committed.iter().copied());
        if let Err(error) = crate::db::announce(&db, &committed).await {
            // Other processes' waiters then hear of it at their next refresh.
            tracing::warn!(%error, "announcing the projector's progress");
        }
        if let Some(cache) = &cache {
            for account in &changed {
                // The row reflects at least the batch's partitions as now
                // committed; it claims nothing of the others.
                cache.put_account(account, &committed).await;
            }
        }
    }
    consumer.unsubscribe();
    Ok(())
}

/// Seeks newly assigned partitions to the offsets stored with the read
/// models. A failed seek costs only re-reading: the transaction passes over
/// what it already applied.
async fn seek_assigned(consumer: &StreamConsumer<Assignments>, topic: &str, db: &PgPool) {
    let assigned: Vec<i32> = std::mem::take(
        &mut *consumer
            .context()
            .assigned
            .lock()
            .expect("assignments lock"),
    );
    if assigned.is_empty() {
        return;
    }
    let stored: Vec<(i32, i64)> = match sqlx::query_as(
        "SELECT partition, next_offset FROM projector_offsets WHERE partition = ANY($1)",
    )
    .bind(&assigned)
    .fetch_all(db)
    .await
    {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "reading projector offsets to seek");
            return;
        }
    };
    for partition in assigned {
        let offset = stored
            .iter()
            .find(|(p, _)| *p == partition)
            .map_or(Offset::Beginning, |(_, next)| Offset::Offset(*next));
        if let Err(error) = consumer.seek(topic, partition, offset, Duration::from_secs(5)) {
            tracing::debug!(%error, partition, "seek failed; reading from the committed position");
        } else {
            tracing::info!(partition, ?offset, "projector seeked to its stored offset");
        }
    }
}

/// Projects one batch in one transaction; returns the accounts to refresh in
/// the cache once it committed.
async fn project(db: &PgPool, batch: &[OwnedMessage]) -> anyhow::Result<Vec<AccountRow>> {
    let mut tx = db.begin().await?;
    let mut partitions: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut offsets: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM projector_offsets WHERE partition = ANY($1) FOR UPDATE",
    )
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut cursors: HashMap<(String, String), Cursor> = HashMap::new();
    let mut changed: Vec<AccountRow> = Vec::new();
    let mut updates: Vec<ChannelUpdate> = Vec::new();
    let mut last_event_at: HashMap<i32, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for message in batch {
        let next = offsets.entry(message.partition()).or_insert(0);
        if message.offset() < *next {
            continue;
        }
        *next = message.offset() + 1;
        let envelope = match EventEnvelope::from_json(message.payload().unwrap_or_default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(%error, partition = message.partition(), offset = message.offset(), "not an event envelope; skipped");
                continue;
            }
        };
        let event = match DomainEvent::decode(&envelope) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, event_id = %envelope.event_id, "unreadable event skipped");
                continue;
            }
        };
        let key = (
            envelope.aggregate.kind.as_str().to_owned(),
            envelope.aggregate.id.clone(),
        );
        let cursor = match cursors.entry(key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let cursor = load_cursor(&mut tx, &entry.key().0, &entry.key().1).await?;
                entry.insert(cursor)
            }
        };
        last_event_at.insert(message.partition(), envelope.occurred_at);
        metrics::counter!("tidings_projector_events_total").increment(1);
        if !cursor.admit(envelope.sequence, envelope.command_id) {
            metrics::counter!("tidings_events_skipped_total", "reader" => "projector").increment(1);
            tracing::warn!(event_id = %envelope.event_id, aggregate = %envelope.aggregate.key(), sequence = envelope.sequence, "event skipped by the sequence rule");
            continue;
        }
        match &event {
            DomainEvent::Account(event) => {
                let applied = accounts::apply(&mut tx, &envelope, event).await?;
                if let Some(account) = applied.account {
                    changed.retain(|a| a.id != account.id);
                    changed.push(account);
                }
                updates.extend(applied.updates);
            }
            // Claims guard uniqueness for the deciders; no read model shows them.
            DomainEvent::Claim(_) => {}
        }
    }
    outbox::append(&mut tx, &updates).await?;
    for ((kind, id), cursor) in &cursors {
        save_cursor(&mut tx, kind, id, cursor).await?;
    }
    for (partition, next) in &offsets {
        sqlx::query(
            "INSERT INTO projector_offsets (partition, next_offset, updated_at, last_event_at) VALUES ($1, $2, now(), $3)
             ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now(),
               last_event_at = coalesce(EXCLUDED.last_event_at, projector_offsets.last_event_at)",
        )
        .bind(partition)
        .bind(next)
        .bind(last_event_at.get(partition))
        .execute(&mut *tx)
        .await?;
    }
    faults::pause_at("projector.before_commit");
    tx.commit().await?;
    Ok(changed)
}

async fn load_cursor(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    id: &str,
) -> Result<Cursor, sqlx::Error> {
    let row: Option<(i64, Option<Uuid>, Vec<Uuid>)> = sqlx::query_as(
        "SELECT version, last_command, lost_commands FROM projected_aggregates
         WHERE aggregate_type = $1 AND aggregate_id = $2 FOR UPDATE",
    )
    .bind(kind)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(
        row.map_or_else(Cursor::default, |(version, last_command, lost_commands)| {
            Cursor {
                version: version as u64,
                last_command,
                lost_commands,
            }
        }),
    )
}

async fn save_cursor(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    id: &str,
    cursor: &Cursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projected_aggregates (aggregate_type, aggregate_id, version, last_command, lost_commands)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
           SET version = EXCLUDED.version, last_command = EXCLUDED.last_command, lost_commands = EXCLUDED.lost_commands",
    )
    .bind(kind)
    .bind(id)
    .bind(cursor.version as i64)
    .bind(cursor.last_command)
    .bind(&cursor.lost_commands)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
