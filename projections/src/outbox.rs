//! The channel outbox: what each realtime channel receives, and its relay.
//!
//! The projector appends rows inside its transaction, numbering each
//! channel's rows with its own `seq`; the relay publishes them to
//! `tidings.updates` keyed by channel and moves its one position past them
//! (`outbox_relay`): it reads, in order of (writing transaction, `id`),
//! only rows of transactions older than every transaction still running, so
//! no row can appear behind that position later (see the migration
//! `0015_outbox_watermark.sql`). A gateway fills any gap it sees in a
//! channel's `seq`, and serves a resuming client, from the rows kept here.
//!
//! A write transaction that runs long anywhere in the database holds the
//! relay back until it ends (a rebuild writes in transactions of one
//! batch); the projector hands each commit to the gateways directly as
//! well (Redis), so only what that handoff missed waits.
//!
//! What is kept ([`Retention`]): a published row stays while it is among the
//! last [`Retention::per_channel`] rows of its channel *and* younger than
//! [`Retention::max_age`]; an unpublished row always stays. So a client can
//! resume with `since` after a short absence (a reconnect, a phone asleep
//! for a while) on even the busiest channel, and the table is bounded by
//! channels × `per_channel`, not by history. A `since` older than what is
//! kept is answered `recovered: false`: the client reads the current state
//! over REST and goes on from the head.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use tidings_schemas::kafka::KafkaSettings;
use tidings_schemas::{Channel, Position};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL notification the projector raises when it appended rows.
pub const NOTIFY_CHANNEL: &str = "tidings_outbox";
/// Rows the relay publishes per round.
const RELAY_BATCH: i64 = 500;
/// How often the relay looks without being notified (a missed notification,
/// a relay that restarted).
const RELAY_IDLE_POLL: Duration = Duration::from_millis(250);
/// How often the relay prunes delivered rows.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Rows deleted per statement when pruning: short statements, short locks.
const PRUNE_BATCH: i64 = 5_000;

/// How much delivered history the outbox keeps for resuming clients (see
/// the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub per_channel: i64,
    pub max_age: Duration,
}

impl Default for Retention {
    /// The last 1,000 updates of each channel, for at most 7 days: more than
    /// a client replays on reconnect before reading the state afresh is
    /// cheaper.
    fn default() -> Self {
        Retention {
            per_channel: 1_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

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

/// A row of the outbox: its id (the order the relay publishes in) and the
/// update.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    #[sqlx(flatten)]
    update: Update,
}

/// Numbers and appends updates inside the projector's transaction, in one
/// statement whatever their number, and returns them numbered, in order.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[ChannelUpdate],
) -> Result<Vec<Update>, sqlx::Error> {
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let mut channels = Vec::with_capacity(updates.len());
    let mut events = Vec::with_capacity(updates.len());
    let mut data = Vec::with_capacity(updates.len());
    for update in updates {
        channels.push(update.channel.as_str());
        events.push(update.event.as_str());
        data.push(&update.data);
    }
    // Each channel's counter moves once by its number of updates; the
    // updates take the numbers below the new value in their order. Only
    // the numbers come back: the rest is what was sent (a message's view
    // goes to its room and to each participant, so reading it back parsed
    // that JSON once more per copy).
    let mut numbers: Vec<(i64, i64, i64)> = sqlx::query_as(
        "WITH input AS (
           SELECT channel, event, data, ord
           FROM UNNEST($1::text[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS u(channel, event, data, ord)
         ), counts AS (
           SELECT channel, count(*) AS n FROM input GROUP BY channel
         ), bumped AS (
           INSERT INTO channels (channel, seq) SELECT channel, n FROM counts ORDER BY channel
           ON CONFLICT (channel) DO UPDATE SET seq = channels.seq + EXCLUDED.seq
           RETURNING channel, seq, epoch
         ), numbered AS (
           SELECT i.ord, i.channel,
                  b.seq - c.n + row_number() OVER (PARTITION BY i.channel ORDER BY i.ord) AS seq,
                  b.epoch, i.event, i.data
           FROM input i JOIN counts c USING (channel) JOIN bumped b USING (channel)
         ), written AS (
           INSERT INTO channel_outbox (channel, seq, epoch, event, data)
           SELECT channel, seq, epoch, event, data FROM numbered ORDER BY ord
           RETURNING channel, seq, epoch
         )
         SELECT n.ord, w.seq, w.epoch
         FROM written w JOIN numbered n ON n.channel = w.channel AND n.seq = w.seq",
    )
    .bind(&channels)
    .bind(&events)
    .bind(&data)
    .fetch_all(&mut **tx)
    .await?;
    numbers.sort_unstable_by_key(|&(ord, ..)| ord);
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(numbers
        .into_iter()
        .map(|(ord, seq, epoch)| {
            let update = &updates[ord as usize - 1];
            Update {
                channel: update.channel.clone(),
                seq,
                epoch,
                event: update.event.clone(),
                data: update.data.clone(),
            }
        })
        .collect())
}

/// Where a channel stands: its last `seq`, its `epoch`, and the oldest `seq`
/// the outbox still keeps (see [`prune`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub epoch: i64,
    /// `seq + 1` when nothing is kept.
    pub oldest_kept: i64,
    /// How far the read models were when the head was read: a REST read
    /// with this `X-Min-Position` shows at least everything up to `seq`.
    pub position: Position,
}

impl Head {
    /// Whether a client that has everything up to `since` can be given
    /// everything after it from the outbox.
    pub fn can_resume(&self, since: i64) -> bool {
        since >= self.oldest_kept - 1 && since <= self.seq
    }
}

/// A channel's `seq`, `epoch` and oldest kept `seq` (none when it never
/// received anything), and the projector's partitions and next offsets.
type HeadRow = (Option<i64>, Option<i64>, Option<i64>, Vec<i32>, Vec<i64>);

/// A channel's head (`seq` 0 and `epoch` 1 for a channel that never received
/// anything), and the projector's offsets read in the same statement (one
/// snapshot): the commit that wrote `seq` is among them.
pub async fn head(db: impl PgExecutor<'_>, channel: &str) -> Result<Head, sqlx::Error> {
    let row: HeadRow = sqlx::query_as(
        "SELECT c.seq, c.epoch,
                (SELECT min(o.seq) FROM channel_outbox o WHERE o.channel = $1),
                (SELECT coalesce(array_agg(partition ORDER BY partition), '{}') FROM projector_offsets),
                (SELECT coalesce(array_agg(next_offset ORDER BY partition), '{}') FROM projector_offsets)
         FROM (SELECT 1) AS one LEFT JOIN channels c ON c.channel = $1",
    )
    .bind(channel)
    .fetch_one(db)
    .await?;
    let (seq, epoch, oldest, partitions, offsets) = row;
    let (seq, epoch) = (seq.unwrap_or(0), epoch.unwrap_or(1));
    let mut position = Position::default();
    for (partition, next) in partitions.into_iter().zip(offsets) {
        if next > 0 {
            position.include(partition, next - 1);
        }
    }
    Ok(Head {
        seq,
        epoch,
        oldest_kept: oldest.unwrap_or(seq + 1),
        position,
    })
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

/// Deletes delivered rows beyond `retention`; how many.
pub async fn prune(db: &PgPool, retention: Retention) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM channel_outbox WHERE id IN (
               SELECT o.id FROM channel_outbox o JOIN channels c ON c.channel = o.channel,
                 outbox_relay r
               WHERE (o.tx, o.id) <= (r.tx, r.id)
                 AND (o.seq <= c.seq - $1 OR o.created_at < now() - make_interval(secs => $2))
               LIMIT $3)",
        )
        .bind(retention.per_channel)
        .bind(retention.max_age.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// Publishes the outbox to `tidings.updates` until `shutdown`, and prunes
/// what was delivered beyond `retention`.
pub async fn relay(
    db: PgPool,
    kafka: KafkaSettings,
    retention: Retention,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka.producer().create()?;
    let topic = kafka.topics().updates;
    let mut listener = PgListener::connect_with(&db).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    tracing::info!(%topic, "outbox relay started");
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            match prune(&db, retention).await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "outbox pruned"),
                Err(error) => tracing::warn!(%error, "pruning the outbox"),
            }
        }
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

/// The rows the relay has not published yet.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM channel_outbox o WHERE (o.tx, o.id) > {PAST_POSITION}"
    ))
    .fetch_one(db)
    .await
}

/// The relay's position as a row to compare `(o.tx, o.id)` with. Two
/// scalar subqueries, so that PostgreSQL plans them first and the
/// comparison bounds the scan of the index on (tx, id): compared with a
/// joined `outbox_relay` row instead, it filtered every row kept before the
/// position on each round (40 ms for 20,000 kept rows, growing with what
/// the outbox keeps, against under 1 ms this way).
const PAST_POSITION: &str = "((SELECT tx FROM outbox_relay), (SELECT id FROM outbox_relay))";

/// One relay at a time, whichever process it runs in (an advisory lock:
/// it takes no transaction id, which would hold back the rows a round may
/// read).
const RELAY_LOCK: i64 = 0x7469_6469_6e67_7372; // "tidingsr"

/// One round: publishes up to a batch of rows past the relay's position,
/// oldest first, and moves the position past them. While another relay
/// holds the round, publishes nothing.
async fn publish_pending(
    db: &PgPool,
    producer: &FutureProducer,
    topic: &str,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    // A position lost with a crash of PostgreSQL only publishes its rows
    // again; readers drop what they have by `seq`.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(0);
    }
    // The transaction ids go as text: sqlx has no xid8.
    let rows: Vec<RelayRow> = sqlx::query_as(&format!(
        "SELECT o.tx::text AS tx, o.id, o.channel, o.seq, o.epoch, o.event, o.data
         FROM channel_outbox o
         WHERE (o.tx, o.id) > {PAST_POSITION} AND o.tx < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY o.tx, o.id LIMIT $1"
    ))
    .bind(RELAY_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last() else {
        return Ok(0);
    };
    let (last_tx, last_id) = (last.tx.clone(), last.row.id);
    let sends = rows.iter().map(|row| {
        let update = &row.row.update;
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
    sqlx::query("UPDATE outbox_relay SET tx = $1::text::xid8, id = $2, published_at = now()")
        .bind(&last_tx)
        .bind(last_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// An outbox row with the transaction that wrote it.
#[derive(sqlx::FromRow)]
struct RelayRow {
    tx: String,
    #[sqlx(flatten)]
    row: OutboxRow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_resumes_only_from_what_is_kept() {
        let head = Head {
            seq: 10,
            epoch: 1,
            oldest_kept: 4,
            position: Position::default(),
        };
        assert!(head.can_resume(3), "3 has everything before 4");
        assert!(head.can_resume(10));
        assert!(!head.can_resume(2), "seq 3 is no longer kept");
        assert!(!head.can_resume(11), "ahead of the channel");
        let empty = Head {
            seq: 0,
            epoch: 1,
            oldest_kept: 1,
            position: Position::default(),
        };
        assert!(empty.can_resume(0));
    }
}
