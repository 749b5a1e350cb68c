//! The channel outbox: what each realtime channel receives, and its relay.
//!
//! The projector appends rows inside its transaction, numbering each
//! channel's rows with its own `seq`; the relay publishes unpublished rows to
//! `tidings.updates` keyed by channel and marks them. A gateway fills any gap
//! it sees in a channel's `seq`, and serves a resuming client, from the rows
//! kept here.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use tidings_schemas::kafka::KafkaSettings;
use tidings_schemas::Channel;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL notification the projector raises when it appended rows.
pub const NOTIFY_CHANNEL: &str = "tidings_outbox";
/// Rows the relay publishes per round.
const RELAY_BATCH: i64 = 500;
/// How often the relay looks without being notified (a missed notification,
/// a relay that restarted).
const RELAY_IDLE_POLL: Duration = Duration::from_millis(250);

/// A change a channel should receive, before it is numbered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelUpdate {
    pub channel: String,
    pub event: String,
    pub data: serde_json::Value,
}

impl ChannelUpdate {
    pub fn new(channel: Channel, event: &str, data: serde_json::Value) -> Self {
        ChannelUpdate {
            channel: channel.to_string(),
            event: event.to_owned(),
            data,
        }
    }
}

/// A numbered update, as kept in the outbox and carried on
/// `tidings.updates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Update {
    pub channel: String,
    pub seq: i64,
    pub epoch: i64,
    pub event: String,
    pub data: serde_json::Value,
}

/// Numbers and appends updates inside the projector's transaction.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[ChannelUpdate],
) -> Result<(), sqlx::Error> {
    for update in updates {
        let (seq, epoch): (i64, i64) = sqlx::query_as(
            "INSERT INTO channels (channel, seq) VALUES ($1, 1)
             ON CONFLICT (channel) DO UPDATE SET seq = channels.seq + 1
             RETURNING seq, epoch",
        )
        .bind(&update.channel)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO channel_outbox (channel, seq, epoch, event, data) VALUES ($1, $2, $3, $4, $5)")
            .bind(&update.channel)
            .bind(seq)
            .bind(epoch)
            .bind(&update.event)
            .bind(&update.data)
            .execute(&mut **tx)
            .await?;
    }
    if !updates.is_empty() {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A channel's current `seq` and `epoch` (0 and 1 for a channel that never
/// received anything).
pub async fn head(db: impl PgExecutor<'_>, channel: &str) -> Result<(i64, i64), sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT seq, epoch FROM channels WHERE channel = $1")
            .bind(channel)
            .fetch_optional(db)
            .await?;
    Ok(row.unwrap_or((0, 1)))
}

/// A channel's updates after `since`, oldest first, at most `limit`.
pub async fn since(
    db: impl PgExecutor<'_>,
    channel: &str,
    since: i64,
    limit: i64,
) -> Result<Vec<Update>, sqlx::Error> {
    sqlx::query_as(
        "SELECT channel, seq, epoch, event, data FROM channel_outbox
         WHERE channel = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(channel)
    .bind(since)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Publishes the outbox to `tidings.updates` until `shutdown`.
pub async fn relay(
    db: PgPool,
    kafka: KafkaSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka.producer().create()?;
    let topic = kafka.topics().updates;
    let mut listener = PgListener::connect_with(&db).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    tracing::info!(%topic, "outbox relay started");
    loop {
        match publish_pending(&db, &producer, &topic).await {
            Ok(published) if published >= RELAY_BATCH as usize => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "relaying the outbox");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = listener.recv() => {}
            _ = tokio::time::sleep(RELAY_IDLE_POLL) => {}
        }
    }
}

/// One round: publishes up to a batch of unpublished rows, oldest first, and
/// marks them. Rows locked by another relay are left to it.
async fn publish_pending(
    db: &PgPool,
    producer: &FutureProducer,
    topic: &str,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let rows: Vec<(i64, Update)> =
        sqlx::query_as::<_, (i64, String, i64, i64, String, serde_json::Value)>(
            "SELECT id, channel, seq, epoch, event, data FROM channel_outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(RELAY_BATCH)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, channel, seq, epoch, event, data)| {
            (
                id,
                Update {
                    channel,
                    seq,
                    epoch,
                    event,
                    data,
                },
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let sends = rows.iter().map(|(_, update)| {
        let payload = serde_json::to_vec(update).expect("updates serialize to JSON");
        async move {
            let record = FutureRecord::to(topic)
                .key(&update.channel)
                .payload(&payload);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
        }
    });
    futures_util::future::try_join_all(sends).await?;
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    sqlx::query("UPDATE channel_outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len())
}
