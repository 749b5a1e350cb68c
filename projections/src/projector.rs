//! The projector: `tidings.events` → read models, offsets and outbox, in one
//! PostgreSQL transaction per batch.
//!
//! Its offsets live in `projector_offsets`, written in the same transaction
//! as the rows the events produced. On assignment it seeks there; and inside
//! the transaction every event below the stored offset is passed over, so
//! even a message fetched before the seek, or a batch replayed after a crash
//! before commit, is applied exactly once. Each event is also held to the
//! sequence rule, the same one the deciders apply.
//!
//! Where the deciders run in the same process, their events also arrive
//! straight from them, and are taken in log order with the ones fetched
//! ([`Merge`]); the channel updates of a commit go straight to the gateway
//! of the process, ahead of the outbox relay ([`tidings_schemas::shortcut`]).

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
use tidings_schemas::shortcut::{Merge, Origin, Shortcut};
use tidings_schemas::{faults, Cursor, DomainEvent, EventEnvelope};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bulk::Loader;
use crate::cache::Cache;
use crate::db::Progress;
use crate::notifications;
use crate::outbox;
use crate::projection::{self, Effects};
use crate::rooms;

/// Events per transaction, at most. A batch is what has arrived while the
/// last transaction ran: nothing waits to make it larger.
const MAX_BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub kafka: KafkaSettings,
    /// Kept up to date with how many partitions this projector owns.
    pub owned: Owned,
    /// Told of every commit, to wake the readers waiting for a position.
    pub progress: Progress,
    /// Events as the deciders of this process wrote them.
    pub events: Shortcut<OwnedMessage>,
    /// Channel updates as committed, to the gateway of this process.
    pub updates: Shortcut<outbox::Update>,
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
    let mut early = settings.events.open();
    let mut merge = Merge::default();
    let mut halted: Vec<i32> = Vec::new();
    tracing::info!(%group, "projector started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message.map(|m| (Origin::Log, m.detach())),
            Some(message) = early.recv() => Ok((Origin::Shortcut, message)),
        };
        seek_assigned(&consumer, &topic, &db, &mut merge).await;
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                tracing::warn!(%error, "reading events");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while batch.len() < MAX_BATCH {
            let mut more = false;
            if let Ok(message) = early.try_recv() {
                batch.push((Origin::Shortcut, message));
                more = true;
            }
            if let Some(Ok(message)) = consumer.recv().now_or_never() {
                batch.push((Origin::Log, message.detach()));
                more = true;
            }
            if !more {
                break;
            }
        }
        batch.retain(|(_, message)| !halted.contains(&message.partition()));
        let batch = merge.admit(batch);
        if batch.is_empty() {
            continue;
        }
        let projected = project(&db, cache.as_ref(), &batch).await?;
        for (partition, offset, reason) in &projected.halted {
            halt(&consumer, &topic, *partition, *offset, reason);
            settings.owned.halt(*partition);
            // Nothing more of it is taken, from the log or a shortcut, until
            // a restart with a build that reads the event.
            halted.push(*partition);
            merge.forget(*partition);
        }
        // The next offset of each partition of the batch, as now committed.
        let committed = &projected.offsets;
        for &(partition, next) in committed {
            merge.expect(partition, next);
        }
        if settings.updates.is_open() {
            for update in &projected.numbered {
                settings.updates.offer(update.clone());
            }
        }
        // The cache first: a writer woken by the progress reads its own
        // write from the cache, not from PostgreSQL. The rows reflect at
        // least the batch's partitions as now committed; they claim nothing
        // of the others.
        if let Some(cache) = &cache {
            cache
                .put_accounts(&projected.effects.accounts, committed)
                .await;
            cache
                .put_details(&projected.effects.details, committed)
                .await;
            cache.apply_feeds(&projected.effects.feeds).await;
        }
        settings.progress.advance(committed.iter().copied());
        // After the writers are told: resuming clients read the ring.
        if let Some(cache) = &cache {
            cache.ring_push(&projected.numbered).await;
        }
    }
    consumer.unsubscribe();
    Ok(())
}

/// Stops reading a partition at an event this build cannot read, loudly:
/// its lag grows, the error is logged and `tidings_reader_halted` says so.
/// A restart (with a build that reads the event) resumes from that event.
fn halt(
    consumer: &StreamConsumer<Assignments>,
    topic: &str,
    partition: i32,
    offset: i64,
    reason: &str,
) {
    tracing::error!(
        partition,
        offset,
        %reason,
        "an event this build cannot read: the partition is halted until a build that reads it runs"
    );
    metrics::gauge!("tidings_reader_halted", "reader" => "projector", "partition" => partition.to_string())
        .set(1.0);
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, partition);
    if let Err(error) = consumer.pause(&list) {
        tracing::warn!(%error, partition, "pausing a halted partition");
    }
}

/// Seeks newly assigned partitions to the offsets stored with the read
/// models. A failed seek costs only re-reading: the transaction passes over
/// what it already applied.
async fn seek_assigned(
    consumer: &StreamConsumer<Assignments>,
    topic: &str,
    db: &PgPool,
    merge: &mut Merge,
) {
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
        // Where it stood before it may have moved on in another process.
        merge.forget(partition);
        let offset = stored
            .iter()
            .find(|(p, _)| *p == partition)
            .map_or(Offset::Beginning, |(_, next)| Offset::Offset(*next));
        if let Offset::Offset(next) = offset {
            merge.expect(partition, next);
        }
        if let Err(error) = consumer.seek(topic, partition, offset, Duration::from_secs(5)) {
            tracing::debug!(%error, partition, "seek failed; reading from the committed position");
        } else {
            tracing::info!(partition, ?offset, "projector seeked to its stored offset");
        }
    }
}

/// What one batch did, once committed.
#[derive(Default)]
pub struct Projected {
    /// What the batch's events ask for beyond their rows (the outbox part
    /// is already written).
    pub effects: Effects,
    /// Partitions stopped at an event this build cannot read: `(partition,
    /// offset, why)`. Their offsets stay at that event.
    pub halted: Vec<(i32, i64, String)>,
    /// The next offset of each partition of the batch, as committed.
    pub offsets: Vec<(i32, i64)>,
    /// The channel updates appended to the outbox, numbered.
    pub numbered: Vec<outbox::Update>,
}

/// Projects one batch in one transaction.
///
/// An event this build cannot read (an unknown type or version, or not an
/// envelope at all) is never skipped: its partition stops there — nothing
/// after it is applied and its offset stays on it — and the caller pauses the
/// partition. Skipping would leave the read models silently wrong.
pub async fn project(
    db: &PgPool,
    cache: Option<&Cache>,
    batch: &[OwnedMessage],
) -> anyhow::Result<Projected> {
    project_batch(db, cache, batch, None).await
}

/// Projects one batch in one transaction as [`project`] does, writing the
/// rows of the events that allow it in bulk ([`Loader`]) and making none of
/// their effects: for `tidings rebuild`, which has no subscribers.
pub async fn project_in_bulk(db: &PgPool, batch: &[OwnedMessage]) -> anyhow::Result<Projected> {
    project_batch(db, None, batch, Some(Loader::default())).await
}

async fn project_batch(
    db: &PgPool,
    cache: Option<&Cache>,
    batch: &[OwnedMessage],
    mut loader: Option<Loader>,
) -> anyhow::Result<Projected> {
    let mut tx = db.begin().await?;
    // The commit does not wait for the disk: what a crash of PostgreSQL
    // could lose is the rows *and* the offsets of the last batches together,
    // and the projector projects those events again from the log. The wait
    // was most of a small batch's time (about 3 ms of 3.5 here).
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
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
    let mut projected = Projected::default();
    // Read first, so that the cursors of every aggregate of the batch are
    // locked and read in one statement.
    let mut events = Vec::with_capacity(batch.len());
    let mut event_offsets = Vec::with_capacity(batch.len());
    for message in batch {
        let (partition, offset) = (message.partition(), message.offset());
        if projected.halted.iter().any(|(p, _, _)| *p == partition) {
            continue;
        }
        let next = offsets.entry(partition).or_insert(0);
        if offset < *next {
            continue;
        }
        let decoded = EventEnvelope::from_json(message.payload().unwrap_or_default())
            .and_then(|envelope| DomainEvent::decode(&envelope).map(|event| (envelope, event)));
        match decoded {
            Ok((envelope, event)) => {
                *next = offset + 1;
                events.push((partition, envelope, event));
                event_offsets.push(offset);
            }
            Err(error) => projected
                .halted
                .push((partition, offset, error.to_string())),
        }
    }
    let mut cursors = load_cursors(&mut tx, &events).await?;
    let mut last_event_at: HashMap<i32, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut indexed = EventIndexRows::default();
    // The live projector's runs of posted messages, written together.
    let mut posted = rooms::Posted::default();
    for ((partition, envelope, event), offset) in events.iter().zip(&event_offsets) {
        let key = (
            envelope.aggregate.kind.as_str().to_owned(),
            envelope.aggregate.id.clone(),
        );
        let cursor = cursors.entry(key).or_default();
        last_event_at.insert(*partition, envelope.occurred_at);
        metrics::counter!("tidings_projector_events_total").increment(1);
        if !envelope.admit(cursor) {
            metrics::counter!("tidings_events_skipped_total", "reader" => "projector").increment(1);
            tracing::warn!(event_id = %envelope.event_id, aggregate = %envelope.aggregate.key(), sequence = envelope.sequence, "event skipped by the sequence rule");
            continue;
        }
        indexed.push(*partition, *offset, envelope);
        if let Some(loader) = loader.as_mut() {
            if loader.take(envelope, event) {
                continue;
            }
            loader.flush(&mut tx).await?;
        } else {
            if posted.take(envelope, event) {
                continue;
            }
            projected.effects.extend(posted.flush(&mut tx).await?);
        }
        projected
            .effects
            .extend(projection::apply(&mut tx, envelope, event).await?);
    }
    if let Some(loader) = loader.as_mut() {
        loader.flush(&mut tx).await?;
    }
    projected.effects.extend(posted.flush(&mut tx).await?);
    // Messages tell those of their readers who are offline now: one ask of
    // presence for the batch.
    let notices = std::mem::take(&mut projected.effects.notices);
    if !notices.is_empty() {
        let mut readers: Vec<Uuid> = notices.iter().flat_map(|n| n.readers.clone()).collect();
        readers.sort_unstable();
        readers.dedup();
        let online = match cache {
            Some(cache) => cache.online_among(&readers).await,
            None => None,
        };
        let told = notifications::tell_offline(&mut tx, &notices, online.as_ref()).await?;
        projected.effects.updates.extend(told);
    }
    projected.numbered = outbox::append(&mut tx, &projected.effects.updates).await?;
    save_cursors(&mut tx, &cursors).await?;
    indexed.insert(&mut tx).await?;
    projected.offsets = offsets.into_iter().collect();
    let (parts, nexts): (Vec<i32>, Vec<i64>) = projected.offsets.iter().copied().unzip();
    let times: Vec<Option<chrono::DateTime<chrono::Utc>>> = parts
        .iter()
        .map(|p| last_event_at.get(p).copied())
        .collect();
    sqlx::query(
        "INSERT INTO projector_offsets (partition, next_offset, updated_at, last_event_at)
         SELECT p, n, now(), t FROM UNNEST($1::integer[], $2::bigint[], $3::timestamptz[]) AS u(p, n, t)
         ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now(),
           last_event_at = coalesce(EXCLUDED.last_event_at, projector_offsets.last_event_at)",
    )
    .bind(&parts)
    .bind(&nexts)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    // Waiters in other processes hear of the commit with it.
    crate::db::announce(&mut tx, &projected.offsets).await?;
    faults::pause_at("projector.before_commit");
    tx.commit().await?;
    Ok(projected)
}

type AggregateKey = (String, String);

/// The rows of `event_index` a batch adds: where each admitted event stands
/// in the log, written in one statement with the batch (migration 0013).
#[derive(Default)]
struct EventIndexRows {
    kinds: Vec<&'static str>,
    ids: Vec<String>,
    sequences: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    times: Vec<chrono::DateTime<chrono::Utc>>,
}

impl EventIndexRows {
    fn push(&mut self, partition: i32, offset: i64, envelope: &EventEnvelope) {
        self.kinds.push(envelope.aggregate.kind.as_str());
        self.ids.push(envelope.aggregate.id.clone());
        self.sequences.push(envelope.sequence as i64);
        self.partitions.push(partition);
        self.offsets.push(offset);
        self.times.push(envelope.occurred_at);
    }

    async fn insert(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        // A batch projected again after a crash finds its rows there.
        sqlx::query(
            r#"INSERT INTO event_index (aggregate_type, aggregate_id, sequence, partition, "offset", occurred_at)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::integer[], $5::bigint[], $6::timestamptz[])
               ON CONFLICT DO NOTHING"#,
        )
        .bind(&self.kinds)
        .bind(&self.ids)
        .bind(&self.sequences)
        .bind(&self.partitions)
        .bind(&self.offsets)
        .bind(&self.times)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Locks and reads the cursors of every aggregate the events touch, in one
/// statement; an aggregate not projected yet starts from the beginning.
async fn load_cursors(
    tx: &mut Transaction<'_, Postgres>,
    events: &[(i32, EventEnvelope, DomainEvent)],
) -> Result<HashMap<AggregateKey, Cursor>, sqlx::Error> {
    let mut kinds = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    for (_, envelope, _) in events {
        kinds.push(envelope.aggregate.kind.as_str().to_owned());
        ids.push(envelope.aggregate.id.clone());
    }
    let rows: Vec<(String, String, i64, Option<Uuid>)> = sqlx::query_as(
        "SELECT p.aggregate_type, p.aggregate_id, p.version, p.last_event
         FROM projected_aggregates p
         JOIN (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[])) AS k(aggregate_type, aggregate_id)
           ON p.aggregate_type = k.aggregate_type AND p.aggregate_id = k.aggregate_id
         ORDER BY p.aggregate_type, p.aggregate_id
         FOR UPDATE OF p",
    )
    .bind(&kinds)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, id, version, last_event)| {
            let cursor = Cursor {
                version: version as u64,
                last_event,
            };
            ((kind, id), cursor)
        })
        .collect())
}

/// Stores the cursors of a batch, in one statement.
async fn save_cursors(
    tx: &mut Transaction<'_, Postgres>,
    cursors: &HashMap<AggregateKey, Cursor>,
) -> Result<(), sqlx::Error> {
    if cursors.is_empty() {
        return Ok(());
    }
    let mut kinds = Vec::with_capacity(cursors.len());
    let mut ids = Vec::with_capacity(cursors.len());
    let mut versions = Vec::with_capacity(cursors.len());
    let mut lasts = Vec::with_capacity(cursors.len());
    for ((kind, id), cursor) in cursors {
        kinds.push(kind.as_str());
        ids.push(id.as_str());
        versions.push(cursor.version as i64);
        lasts.push(cursor.last_event);
    }
    sqlx::query(
        "INSERT INTO projected_aggregates (aggregate_type, aggregate_id, version, last_event)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::uuid[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
           SET version = EXCLUDED.version, last_event = EXCLUDED.last_event",
    )
    .bind(&kinds)
    .bind(&ids)
    .bind(&versions)
    .bind(&lasts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The projector's batch against a real PostgreSQL, with the records it
    //! would have fetched built by hand.

    use chrono::Utc;
    use rdkafka::message::Timestamp;
    use tidings_domain::account;
    use tidings_schemas::envelope::{current_version, event_id};
    use tidings_schemas::AggregateRef;

    use super::*;

    /// A fresh, migrated database, dropped by [`Db::drop`].
    struct Db {
        pool: PgPool,
        name: String,
    }

    const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    impl Db {
        async fn new() -> Db {
            let name = format!("tidings_test_{}", Uuid::new_v4().simple());
            let admin = crate::db::connect(ADMIN, 1)
                .await
                .expect("PostgreSQL is up");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let pool = crate::db::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"), 2)
                .await
                .unwrap();
            crate::db::migrate(&pool).await.unwrap();
            Db { pool, name }
        }

        async fn drop(self) {
            self.pool.close().await;
            let admin = crate::db::connect(ADMIN, 1).await.unwrap();
            sqlx::query(&format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name))
                .execute(&admin)
                .await
                .unwrap();
        }

        async fn next_offset(&self, partition: i32) -> Option<i64> {
            sqlx::query_scalar("SELECT next_offset FROM projector_offsets WHERE partition = $1")
                .bind(partition)
                .fetch_optional(&self.pool)
                .await
                .unwrap()
        }

        async fn display_name(&self, user: Uuid) -> Option<String> {
            sqlx::query_scalar("SELECT display_name FROM accounts WHERE id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await
                .unwrap()
        }
    }

    /// The history of one account, as a decider would write it.
    struct History {
        user: Uuid,
        events: Vec<EventEnvelope>,
    }

    impl History {
        fn new(user: u128) -> History {
            let mut history = History {
                user: Uuid::from_u128(user),
                events: Vec::new(),
            };
            let opened = account::Opened {
                user_id: history.user,
                username: format!("user{user}"),
                email: format!("user{user}@example.com"),
                display_name: "first".into(),
                opened_at: Utc::now(),
            };
            history.push(account::Event::Opened(opened.clone()));
            history.push(account::Event::Registered(account::Registered {
                user_id: opened.user_id,
                username: opened.username,
                email: opened.email,
                display_name: opened.display_name,
                registered_at: Utc::now(),
            }));
            history
        }

        fn push(&mut self, event: account::Event) -> EventEnvelope {
            let (event_type, data) = DomainEvent::Account(event).encode();
            let command_id = Uuid::new_v4();
            let envelope = EventEnvelope {
                event_id: event_id(command_id, 0),
                version: current_version(&event_type),
                event_type,
                aggregate: AggregateRef::account(self.user),
                sequence: self.events.len() as u64 + 1,
                previous: self.events.last().map(|e| e.event_id),
                occurred_at: Utc::now(),
                actor: Some(self.user),
                command_id,
                correlation_id: command_id,
                data,
            };
            self.events.push(envelope.clone());
            envelope
        }

        fn rename(&mut self, name: &str) -> EventEnvelope {
            self.push(account::Event::ProfileUpdated(account::ProfileUpdated {
                display_name: name.into(),
                bio: None,
                avatar_url: None,
                updated_at: Utc::now(),
            }))
        }
    }

    fn record(partition: i32, offset: i64, payload: Vec<u8>) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload),
            None,
            "events".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    fn records(partition: i32, from: i64, events: &[EventEnvelope]) -> Vec<OwnedMessage> {
        (from..)
            .zip(events)
            .map(|(offset, e)| record(partition, offset, e.to_json()))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_fetched_again_is_applied_once() {
        let db = Db::new().await;
        let mut history = History::new(1);
        history.rename("second");
        let batch = records(0, 0, &history.events);
        project(&db.pool, None, &batch).await.unwrap();
        // The same records again (a fetch from before a seek, a replay after
        // a crash): passed over.
        let again = project(&db.pool, None, &batch).await.unwrap();
        assert!(again.effects.updates.is_empty());
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM channel_outbox")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(outbox, 1);
        assert_eq!(db.next_offset(0).await, Some(3));
        db.drop().await;
    }

    #[tokio::test]
    async fn an_event_off_the_chain_is_skipped() {
        let db = Db::new().await;
        let mut history = History::new(1);
        let owner = history.rename("owner");
        // A zombie wrote the same sequence on the same predecessor, later.
        let mut zombie = owner.clone();
        zombie.event_id = Uuid::new_v4();
        zombie.command_id = Uuid::new_v4();
        zombie.data["display_name"] = "zombie".into();
        let mut events = history.events.clone();
        events.push(zombie);
        project(&db.pool, None, &records(0, 0, &events))
            .await
            .unwrap();
        assert_eq!(
            db.display_name(history.user).await.as_deref(),
            Some("owner")
        );
        db.drop().await;
    }

    #[tokio::test]
    async fn an_unknown_event_halts_its_partition_and_no_other() {
        let db = Db::new().await;
        let mut halted = History::new(1);
        let mut unknown = halted.rename("never shown");
        unknown.event_type = "account.teleported".into();
        let after = {
            halted.events.pop();
            halted.events.push(unknown.clone());
            halted.rename("after the unknown one")
        };
        let mut other = History::new(2);
        other.rename("other partition");
        let mut batch = records(0, 0, &halted.events[..2]);
        batch.push(record(0, 2, unknown.to_json()));
        batch.push(record(0, 3, after.to_json()));
        batch.extend(records(1, 0, &other.events));
        let projected = project(&db.pool, None, &batch).await.unwrap();
        assert_eq!(
            projected
                .halted
                .iter()
                .map(|(p, o, _)| (*p, *o))
                .collect::<Vec<_>>(),
            [(0, 2)]
        );
        // Partition 0 stops at the unknown event: its offset stays there and
        // nothing after it is applied. Partition 1 goes on.
        assert_eq!(db.next_offset(0).await, Some(2));
        assert_eq!(db.display_name(halted.user).await.as_deref(), Some("first"));
        assert_eq!(db.next_offset(1).await, Some(3));
        assert_eq!(
            db.display_name(other.user).await.as_deref(),
            Some("other partition")
        );
        db.drop().await;
    }

    /// One post's or room's events, chained as its decider writes them.
    struct Chain {
        id: Uuid,
        kind: tidings_schemas::AggregateType,
        events: Vec<EventEnvelope>,
    }

    impl Chain {
        fn post(id: u128) -> Chain {
            Chain {
                id: Uuid::from_u128(id),
                kind: tidings_schemas::AggregateType::Post,
                events: Vec::new(),
            }
        }

        fn room(id: u128) -> Chain {
            Chain {
                kind: tidings_schemas::AggregateType::Room,
                ..Chain::post(id)
            }
        }

        fn push(&mut self, actor: Uuid, event: tidings_domain::post::Event) {
            self.push_event(actor, DomainEvent::Post(event));
        }

        fn push_room(&mut self, actor: Uuid, event: tidings_domain::room::Event) {
            self.push_event(actor, DomainEvent::Room(event));
        }

        /// A public group room opened by `owner`.
        fn open_room(&mut self, owner: Uuid) {
            let room_id = self.id;
            self.push_room(
                owner,
                tidings_domain::room::Event::Created(tidings_domain::room::Created {
                    room_id,
                    kind: tidings_domain::room::Kind::Group,
                    owner: Some(owner),
                    participants: vec![owner],
                    name: "r".into(),
                    description: None,
                    avatar_url: None,
                    settings: Default::default(),
                    is_private: false,
                    max_participants: 1_000,
                    created_at: Utc::now(),
                }),
            );
        }

        fn join(&mut self, user: Uuid) {
            let room_id = self.id;
            self.push_room(
                user,
                tidings_domain::room::Event::Joined(tidings_domain::room::Joined {
                    room_id,
                    user,
                    role: tidings_domain::room::Role::Member,
                    invited: false,
                    joined_at: Utc::now(),
                }),
            );
        }

        /// The room's message number `ordinal`, by `author`, without media.
        fn message(&mut self, ordinal: u64, author: Uuid) {
            let room_id = self.id;
            self.push_room(
                author,
                tidings_domain::room::Event::MessagePosted(tidings_domain::room::MessagePosted {
                    room_id,
                    message_id: Uuid::new_v4(),
                    author,
                    text: format!("message {ordinal}"),
                    media_ids: vec![],
                    ordinal,
                    posted_at: Utc::now(),
                }),
            );
        }

        fn push_event(&mut self, actor: Uuid, event: DomainEvent) {
            let (event_type, data) = event.encode();
            let command_id = Uuid::new_v4();
            self.events.push(EventEnvelope {
                event_id: event_id(command_id, 0),
                version: current_version(&event_type),
                event_type,
                aggregate: AggregateRef::new(self.kind, self.id.to_string()),
                sequence: self.events.len() as u64 + 1,
                previous: self.events.last().map(|e| e.event_id),
                occurred_at: Utc::now(),
                actor: Some(actor),
                command_id,
                correlation_id: command_id,
                data,
            });
        }
    }

    /// Every rebuilt table of `db` as text, row by row, sorted (but the
    /// projector's offsets, whose times are the commit's, and what else a
    /// rebuild leaves out of its digests).
    async fn tables_as_text(db: &PgPool) -> Vec<(String, Vec<String>)> {
        let mut tables = Vec::new();
        for table in crate::rebuild::rebuilt_tables() {
            if table == "projector_offsets" {
                continue;
            }
            // The rows a rebuild's digest covers (`message` notifications
            // are the live projector's, carried over at the switch).
            let part = crate::rebuild::NOT_FROM_THE_LOG
                .iter()
                .find(|n| n.table == table)
                .and_then(|n| n.rows)
                .map(|rows| format!("WHERE {rows}"))
                .unwrap_or_default();
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {table} t {part} ORDER BY 1"))
                    .fetch_all(db)
                    .await
                    .unwrap();
            tables.push((table.to_owned(), rows));
        }
        tables
    }

    #[tokio::test]
    async fn loading_in_bulk_writes_the_rows_applying_one_by_one_writes() {
        use tidings_domain::post::{self, Reaction, Visibility};
        use tidings_domain::room;
        let (ann, bob) = (History::new(1), History::new(2));
        let (a, b) = (ann.user, bob.user);
        let now = Utc::now;
        let mut plain = Chain::post(10);
        let p = plain.id;
        plain.push(
            a,
            post::Event::Created(post::Created {
                post_id: p,
                author: a,
                text: "first".into(),
                visibility: Visibility::Public,
                media: vec![],
                created_at: now(),
            }),
        );
        let comment = |id: u128, author: Uuid, text: &str| {
            post::Event::Commented(post::Commented {
                post_id: p,
                post_author: a,
                comment_id: Uuid::from_u128(id),
                author,
                text: text.into(),
                commented_at: now(),
            })
        };
        let react = |user: Uuid, reaction: Reaction, previous: Option<Reaction>| {
            post::Event::Reacted(post::Reacted {
                post_id: p,
                post_author: a,
                user,
                reaction,
                previous,
                reacted_at: now(),
            })
        };
        plain.push(b, comment(100, b, "nice"));
        plain.push(a, comment(101, a, "thanks"));
        // A mention is applied alone, between gathered ones.
        plain.push(b, comment(102, b, "@user1 look"));
        plain.push(b, react(b, Reaction::Like, None));
        plain.push(a, react(a, Reaction::Haha, None));
        // The same user's second reaction to the post in one load.
        plain.push(b, react(b, Reaction::Love, Some(Reaction::Like)));
        plain.push(b, comment(103, b, "again"));
        plain.push(
            a,
            post::Event::Unreacted(post::Unreacted {
                post_id: p,
                user: a,
                reaction: Reaction::Haha,
                unreacted_at: now(),
            }),
        );
        plain.push(b, react(b, Reaction::Like, Some(Reaction::Love)));
        let mut mentioning = Chain::post(11);
        mentioning.push(
            b,
            post::Event::Created(post::Created {
                post_id: mentioning.id,
                author: b,
                text: "hi @user1".into(),
                visibility: Visibility::Public,
                media: vec![],
                created_at: now(),
            }),
        );
        mentioning.push(
            b,
            post::Event::Deleted(post::Deleted {
                post_id: mentioning.id,
                author: b,
                deleted_at: now(),
            }),
        );
        let mut room = Chain::room(20);
        let r = room.id;
        room.open_room(a);
        room.join(b);
        let message = |ordinal: u64, author: Uuid, media_ids: Vec<Uuid>| {
            room::Event::MessagePosted(room::MessagePosted {
                room_id: r,
                message_id: Uuid::from_u128(200 + u128::from(ordinal)),
                author,
                text: format!("message {ordinal}"),
                media_ids,
                ordinal,
                posted_at: now(),
            })
        };
        room.push_room(a, message(1, a, vec![]));
        room.push_room(b, message(2, b, vec![]));
        room.push_room(a, message(3, a, vec![]));
        // A message with media is applied alone.
        room.push_room(b, message(4, b, vec![Uuid::from_u128(9)]));
        room.push_room(a, message(5, a, vec![]));
        let mut batch = records(0, 0, &ann.events);
        batch.extend(records(1, 0, &bob.events));
        let mut posts_log = plain.events.clone();
        posts_log.extend(mentioning.events.clone());
        batch.extend(records(2, 0, &posts_log));
        batch.extend(records(3, 0, &room.events));

        let (one_by_one, in_bulk) = (Db::new().await, Db::new().await);
        project(&one_by_one.pool, None, &batch).await.unwrap();
        let bulk = project_in_bulk(&in_bulk.pool, &batch).await.unwrap();
        assert!(
            bulk.effects
                .updates
                .iter()
                .all(|u| u.event != "notification.created"
                    || u.data["comment_id"] == serde_json::json!(Uuid::from_u128(102))
                    || u.data["kind"] == "mention"),
            "only the events applied alone push"
        );
        let (expected, loaded) = (
            tables_as_text(&one_by_one.pool).await,
            tables_as_text(&in_bulk.pool).await,
        );
        assert_eq!(expected, loaded);
        let (comments, likes): (i64, i64) =
            sqlx::query_as("SELECT comment_count, like_count FROM posts WHERE id = $1")
                .bind(p)
                .fetch_one(&in_bulk.pool)
                .await
                .unwrap();
        assert_eq!((comments, likes), (4, 1));
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM notifications ORDER BY kind")
            .fetch_all(&in_bulk.pool)
            .await
            .unwrap();
        // Bob's three comments (one mentioning her) and first like to Ann,
        // and his post mentioning her; her own comment and reaction, and
        // Bob's changed reactions, tell no one.
        assert_eq!(kinds, ["comment", "comment", "comment", "like", "mention"]);
        let read: Vec<(Uuid, i64)> =
            sqlx::query_as("SELECT user_id, last_read FROM room_members ORDER BY last_read")
                .fetch_all(&in_bulk.pool)
                .await
                .unwrap();
        assert_eq!(read, [(b, 4), (a, 5)]);
        one_by_one.drop().await;
        in_bulk.drop().await;
    }

    /// `run` projected after `setup` in two databases: applied one event
    /// at a time in one, gathered by [`rooms::Posted`] in the other. Checks
    /// that both leave the same tables; returns the effects of each.
    async fn applied_and_gathered(
        setup: &[OwnedMessage],
        run: &[&EventEnvelope],
    ) -> (Effects, Effects) {
        let (one_by_one, gathered) = (Db::new().await, Db::new().await);
        for db in [&one_by_one, &gathered] {
            project(&db.pool, None, setup).await.unwrap();
        }
        let mut applied = Effects::default();
        let mut tx = one_by_one.pool.begin().await.unwrap();
        for envelope in run {
            let event = DomainEvent::decode(envelope).unwrap();
            applied.extend(projection::apply(&mut tx, envelope, &event).await.unwrap());
        }
        tx.commit().await.unwrap();
        let mut posted = rooms::Posted::default();
        let mut tx = gathered.pool.begin().await.unwrap();
        for envelope in run {
            assert!(posted.take(envelope, &DomainEvent::decode(envelope).unwrap()));
        }
        let flushed = posted.flush(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            tables_as_text(&one_by_one.pool).await,
            tables_as_text(&gathered.pool).await
        );
        one_by_one.drop().await;
        gathered.drop().await;
        (applied, flushed)
    }

    #[tokio::test]
    async fn a_run_of_posted_messages_writes_and_pushes_what_applying_them_one_by_one_does() {
        use tidings_schemas::Channel;
        let (ann, bob, cy) = (History::new(1), History::new(2), History::new(3));
        let (a, b, c) = (ann.user, bob.user, cy.user);
        let mut chains = [Chain::room(20), Chain::room(21)];
        for chain in &mut chains {
            chain.open_room(a);
            chain.join(b);
        }
        let [mut first, mut second] = chains;
        first.join(c);
        // Bob's first message tells Ann and Cy (no presence: everyone is
        // told), so that Ann's message after it reads her notification.
        first.message(1, b);
        let mut setup = records(0, 0, &ann.events);
        setup.extend(records(1, 0, &bob.events));
        setup.extend(records(2, 0, &cy.events));
        setup.extend(records(3, 0, &first.events));
        setup.extend(records(4, 0, &second.events));
        let (from_first, from_second) = (first.events.len(), second.events.len());
        first.message(2, a);
        second.message(1, b);
        first.message(3, c);
        second.message(2, a);
        first.message(4, a);
        first.message(5, b);
        // Interleaved as two partitions' events arrive in one batch.
        let run: Vec<&EventEnvelope> = [
            &first.events[from_first],
            &second.events[from_second],
            &first.events[from_first + 1],
            &second.events[from_second + 1],
            &first.events[from_first + 2],
            &first.events[from_first + 3],
        ]
        .into();

        let (applied, flushed) = applied_and_gathered(&setup, &run).await;
        // The same pushes, but each reader's unread count once, as the run
        // leaves it.
        let pushes = |effects: &Effects| {
            let mut pushes: Vec<(String, String, String)> = effects
                .updates
                .iter()
                .filter(|u| u.event != "notifications.read")
                .map(|u| (u.channel.clone(), u.event.clone(), u.data.to_string()))
                .collect();
            pushes.sort();
            pushes
        };
        // Four messages to a room of three, two to a room of two.
        assert_eq!(pushes(&applied).len(), 4 * 4 + 2 * 3);
        assert_eq!(pushes(&applied), pushes(&flushed));
        let read = |effects: &Effects| {
            let mut last: Vec<(String, String)> = Vec::new();
            for u in effects
                .updates
                .iter()
                .filter(|u| u.event == "notifications.read")
            {
                last.retain(|(channel, _)| *channel != u.channel);
                last.push((u.channel.clone(), u.data.to_string()));
            }
            last.sort();
            last
        };
        // Ann's and Cy's messages read the notification of Bob's first.
        let zero = r#"{"unread_count":0}"#.to_owned();
        let mut expected = vec![
            (Channel::User(a).to_string(), zero.clone()),
            (Channel::User(c).to_string(), zero),
        ];
        expected.sort();
        assert_eq!(read(&applied), expected);
        assert_eq!(read(&applied), read(&flushed));
        assert_eq!(
            flushed
                .updates
                .iter()
                .filter(|u| u.event == "notifications.read")
                .count(),
            2
        );
        let notices = |effects: &Effects| {
            let mut notices = effects.notices.clone();
            for notice in &mut notices {
                notice.readers.sort();
            }
            notices
        };
        assert_eq!(notices(&applied).len(), 6);
        assert_eq!(notices(&applied), notices(&flushed));
    }

    #[tokio::test]
    async fn a_run_in_a_room_too_big_to_notify_makes_the_pushes_and_no_notices() {
        let crowd = crate::notifications::MESSAGE_ROOM_MAX as u128 + 1;
        let people: Vec<History> = (1..=crowd).map(History::new).collect();
        let (a, b) = (people[0].user, people[1].user);
        let mut room = Chain::room(30);
        room.open_room(a);
        for person in &people[1..] {
            room.join(person.user);
        }
        let accounts: Vec<EventEnvelope> = people.iter().flat_map(|p| p.events.clone()).collect();
        let mut setup = records(0, 0, &accounts);
        setup.extend(records(1, 0, &room.events));
        let from = room.events.len();
        room.message(1, a);
        room.message(2, b);
        room.message(3, a);
        let run: Vec<&EventEnvelope> = room.events[from..].iter().collect();

        let (applied, flushed) = applied_and_gathered(&setup, &run).await;
        let pushes = |effects: &Effects| {
            let mut pushes: Vec<(String, String, String)> = effects
                .updates
                .iter()
                .map(|u| (u.channel.clone(), u.event.clone(), u.data.to_string()))
                .collect();
            pushes.sort();
            pushes
        };
        // Each message to the room's channel and each participant's own.
        assert_eq!(pushes(&applied).len(), 3 * (1 + crowd as usize));
        assert_eq!(pushes(&applied), pushes(&flushed));
        // In a crowd, the unread count is the signal: nobody is told.
        assert!(applied.notices.is_empty());
        assert!(flushed.notices.is_empty());
    }

    #[test]
    fn a_loader_takes_plain_posts_comments_and_one_reaction_per_user_and_post() {
        use tidings_domain::post::{self, Reaction, Visibility};
        let (a, b, p) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut chain = Chain::post(3);
        let mut loader = Loader::default();
        let mut take = |chain: &mut Chain, event: post::Event| {
            chain.push(a, event.clone());
            loader.take(chain.events.last().unwrap(), &DomainEvent::Post(event))
        };
        let created = |text: &str, media: Vec<Uuid>| {
            post::Event::Created(post::Created {
                post_id: p,
                author: a,
                text: text.into(),
                visibility: Visibility::Public,
                media,
                created_at: Utc::now(),
            })
        };
        assert!(take(&mut chain, created("plain", vec![])));
        assert!(!take(
            &mut chain,
            created("with media", vec![Uuid::from_u128(9)])
        ));
        assert!(!take(&mut chain, created("to @someone", vec![])));
        let react = |reaction| {
            post::Event::Reacted(post::Reacted {
                post_id: p,
                post_author: a,
                user: b,
                reaction,
                previous: None,
                reacted_at: Utc::now(),
            })
        };
        assert!(take(&mut chain, react(Reaction::Like)));
        assert!(
            !take(&mut chain, react(Reaction::Sad)),
            "a second reaction waits for the flush"
        );
        assert!(!take(
            &mut chain,
            post::Event::Deleted(post::Deleted {
                post_id: p,
                author: a,
                deleted_at: Utc::now(),
            })
        ));
        assert_eq!(loader.len(), 2);
    }
}
