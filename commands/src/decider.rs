//! The decider runtime: the only writer of the aggregates on its partitions.
//!
//! A decider joins the consumer group of `tidings.commands`. For every
//! partition it owns it holds the state of that partition's aggregates,
//! folded from the same partition of `tidings.events` (from a snapshot in
//! PostgreSQL, then to the end of the log) before it decides anything there.
//!
//! For a batch of commands of one partition it:
//! 1. answers the commands it handled before (a retry or a redelivery) with
//!    their first outcome, deciding nothing. It knows *every* command whose
//!    events are in the log: those folded since the last snapshot in memory,
//!    the older ones in `decider_commands` (written with the snapshot). A
//!    command older than that table keeps ([`HANDLED_KEPT_HOURS`]) is refused
//!    as `command_expired` rather than risk deciding it twice;
//! 2. decides the others in order on a working copy of the state — a command
//!    on top of the earlier ones of the batch — each event naming the event
//!    it follows (`previous`, the chain of the sequence rule);
//! 3. writes the events to the same partition of `tidings.events` with an
//!    idempotent producer;
//! 4. reads the partition back up to its own writes (and, where a command was
//!    rejected or changed nothing, up to the end of the partition), folding
//!    under the sequence rule like every other reader. A command stands only
//!    if the history it was decided on is the one in the log: its events
//!    applied, or — for a rejection or a no-op — no other event came before
//!    the point it was decided at. The others lost to another writer (a
//!    zombie owner) and are decided again on the state that won; past
//!    [`MAX_ATTEMPTS`] they are answered `write_conflict`, and a retry is
//!    decided afresh;
//! 5. publishes the outcomes to `tidings.command-results`;
//! 6. commits the commands' offsets — steps 5 and 6 in the background while
//!    the next batch is decided, one batch at a time and in order.
//!
//! Where the API runs in the same process, commands also arrive straight
//! from its command bus as the broker acknowledged them, and are taken in
//! log order with the ones fetched from the topic ([`Merge`]); outcomes go
//! straight back to the bus, and the events straight to the projector
//! ([`tidings_schemas::shortcut`]). Reading back one's own writes needs no
//! fetch when they landed right where the state stands: the broker's
//! offsets say that nothing came between, and the decider folds what it
//! wrote. Only when another writer came between does it read the log.
//!
//! A crash anywhere leaves the commands uncommitted: the next owner rebuilds
//! from the log, finds the commands whose events are already there among the
//! handled ones, and answers them without writing again.
//!
//! An event this build cannot read halts its partition (error log, the
//! `tidings_reader_halted` gauge, no more commands decided or committed
//! there) instead of being skipped: deciding on a state that misses an event
//! would break the aggregate's rules silently.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::future::{join_all, try_join_all};
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tidings_domain::ErrorKind;
use tidings_schemas::envelope::{current_version, event_id};
use tidings_schemas::kafka::{KafkaSettings, Owned, Topics, ADMIN_TIMEOUT, READING_FETCH_WAIT_MS};
use tidings_schemas::shortcut::{self, Merge, Origin, Shortcut};
use tidings_schemas::{faults, EventEnvelope, Position};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Applied};
use crate::bus::BusShortcuts;
use crate::envelope::{CommandEnvelope, CommandResult, Outcome};

/// Commands taken from the log in one batch, at most.
const MAX_BATCH: usize = 256;
/// How often a command that lost to another writer is decided again before
/// the client is told to retry.
const MAX_ATTEMPTS: usize = 3;
/// How long reading back one's own writes may take before the decider gives
/// up its state and rebuilds.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rebuild reads on past the reported end of a partition before
/// it takes the partition as read: a few fetch waits.
const REBUILD_QUIET: Duration = Duration::from_millis(60);
/// How long handled commands are remembered in `decider_commands`. Longer
/// than an `Idempotency-Key` lives (24 h), with an hour to spare for clocks.
pub const HANDLED_KEPT_HOURS: i64 = 25;
/// A command issued longer ago than this is refused: whether it was handled
/// may already be forgotten.
const COMMAND_EXPIRES_HOURS: i64 = 24;
/// The snapshot layout this build writes; an older one is ignored and the
/// partition rebuilt from the log.
const SNAPSHOT_LAYOUT: u32 = 2;

#[derive(Debug, Clone)]
pub struct DeciderSettings {
    pub kafka: KafkaSettings,
    /// Events folded on a partition between two snapshots of its state.
    pub snapshot_every: u64,
    /// Kept up to date with how many partitions this decider owns.
    pub owned: Owned,
    pub shortcuts: DeciderShortcuts,
}

/// The shortcuts of the deciders to the other roles of their process.
#[derive(Debug, Clone, Default)]
pub struct DeciderShortcuts {
    /// Commands from, and outcomes to, the command bus.
    pub bus: BusShortcuts,
    /// Events as written, to the projector.
    pub events: Shortcut<OwnedMessage>,
}

/// Records which partitions the group took away, for the loop to drop their
/// state: another member may write there before they come back.
#[derive(Default)]
struct Ownership {
    revoked: Mutex<Vec<i32>>,
    owned: Owned,
}

impl ClientContext for Ownership {}

impl ConsumerContext for Ownership {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().expect("ownership lock");
            revoked.extend(list.elements().iter().map(|e| e.partition()));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.owned.rebalanced(rebalance);
    }
}

/// A command whose events applied: where they are, and when it was issued
/// (to forget it once it can no longer come back).
#[derive(Debug, Clone)]
struct Handled {
    position: Position,
    issued_at: DateTime<Utc>,
}

/// One owned partition: its aggregates and how far into the events it read.
#[derive(Default)]
struct Partition {
    aggregates: HashMap<String, Aggregate>,
    next_offset: i64,
    since_snapshot: u64,
    /// Every command whose events were folded since the snapshot; the ones
    /// before it are in `decider_commands`.
    handled: HashMap<Uuid, Handled>,
    /// Whether a snapshot exists, so older handled commands may be stored.
    snapshotted: bool,
    /// Why the partition stopped: an event this build cannot read.
    halted: Option<String>,
}

impl Partition {
    /// Answers the commands folded since the snapshot with their first
    /// outcome; returns those answers and the other commands, each once, in
    /// order. A copy of a command earlier in the batch (a retry sent while
    /// the first was in flight) is dropped: the first one's result answers
    /// both, as results are keyed by command id.
    fn recall(&self, commands: Vec<CommandEnvelope>) -> (Vec<CommandResult>, Vec<CommandEnvelope>) {
        let mut seen = HashSet::new();
        let mut answered = Vec::new();
        let mut unknown = Vec::new();
        for command in commands {
            if !seen.insert(command.command_id) {
                continue;
            }
            match self.handled.get(&command.command_id) {
                Some(handled) => answered.push(accepted(command.command_id, &handled.position)),
                None => unknown.push(command),
            }
        }
        (answered, unknown)
    }

    /// Folds one record of the partition's events under the sequence rule;
    /// an unreadable one halts the partition.
    fn fold(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        if offset < self.next_offset || self.halted.is_some() {
            return;
        }
        let envelope = match EventEnvelope::from_json(payload) {
            Ok(envelope) => envelope,
            Err(error) => return self.halt(partition, offset, error.to_string()),
        };
        let aggregate = self
            .aggregates
            .entry(envelope.aggregate.key())
            .or_insert_with(|| Aggregate::new(envelope.aggregate.kind));
        match aggregate.apply(&envelope) {
            Ok(Applied::Yes) => {
                self.handled
                    .entry(envelope.command_id)
                    .or_insert_with(|| Handled {
                        position: Position::default(),
                        issued_at: envelope.occurred_at,
                    })
                    .position
                    .include(partition, offset);
            }
            Ok(Applied::Skipped) => {
                metrics::counter!("tidings_events_skipped_total", "reader" => "decider")
                    .increment(1);
                tracing::warn!(
                    event_id = %envelope.event_id,
                    aggregate = %envelope.aggregate.key(),
                    sequence = envelope.sequence,
                    version = aggregate.cursor.version,
                    "event skipped by the sequence rule"
                );
            }
            Err(error) => return self.halt(partition, offset, error.to_string()),
        }
        self.next_offset = offset + 1;
        self.since_snapshot += 1;
    }

    /// Decides every command on a working copy of the state, each on top of
    /// the ones before it, and builds their events.
    fn decide(&self, partition: i32, commands: Vec<CommandEnvelope>) -> Decided {
        let mut working: HashMap<String, Aggregate> = HashMap::new();
        let mut events: Vec<EventEnvelope> = Vec::new();
        let mut decisions = Vec::with_capacity(commands.len());
        for command in commands {
            let key = command.aggregate.key();
            let aggregate = working.entry(key.clone()).or_insert_with(|| {
                self.aggregates
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Aggregate::new(command.aggregate.kind))
            });
            let answer = match aggregate.state.decide(&command.command) {
                Err(rejected) => Some(rejected.into()),
                Ok(decided) if decided.is_empty() => Some(Outcome::Accepted {
                    position: Position::default(),
                }),
                Ok(decided) => {
                    for (index, event) in decided.into_iter().enumerate() {
                        let (event_type, data) = event.encode();
                        let envelope = EventEnvelope {
                            event_id: event_id(command.command_id, index),
                            version: current_version(&event_type),
                            event_type,
                            aggregate: command.aggregate.clone(),
                            sequence: aggregate.cursor.version + 1,
                            previous: aggregate.cursor.last_event,
                            occurred_at: command.issued_at,
                            actor: command.actor,
                            command_id: command.command_id,
                            correlation_id: command.correlation_id,
                            data,
                        };
                        aggregate
                            .apply(&envelope)
                            .expect("an event this build just encoded reads back");
                        events.push(envelope);
                    }
                    None
                }
            };
            decisions.push(Decision {
                version_after: aggregate.cursor.version,
                command,
                key,
                answer,
            });
        }
        Decided {
            partition,
            decisions,
            events,
        }
    }

    /// Sorts a partition's decisions, once read back, into those that stand
    /// (with their outcomes) and those to decide again.
    ///
    /// Per aggregate, in order: a command that wrote stands if its events
    /// applied (it is handled now); the first one that did not breaks the
    /// chain, and every later decision on that aggregate was taken on a
    /// history that lost. A rejection or no-op stands when a later write of
    /// the batch applied after it, or — after the last write — when the
    /// aggregate's version in the log is still the one it was decided at.
    fn check(&self, decisions: Vec<Decision>) -> (Vec<CommandResult>, Vec<CommandEnvelope>) {
        if self.halted.is_some() {
            return (Vec::new(), Vec::new());
        }
        let mut stood = Vec::new();
        let mut lost = Vec::new();
        let mut broken: HashSet<String> = HashSet::new();
        // Per aggregate, the rejections and no-ops since its last write.
        let mut waiting: HashMap<String, Vec<Decision>> = HashMap::new();
        for decision in decisions {
            if broken.contains(&decision.key) {
                lost.push(decision.command);
                continue;
            }
            if decision.answer.is_some() {
                waiting
                    .entry(decision.key.clone())
                    .or_default()
                    .push(decision);
                continue;
            }
            let before = waiting.remove(&decision.key).unwrap_or_default();
            match self.handled.get(&decision.command.command_id) {
                Some(handled) => {
                    stood.extend(before.into_iter().map(answer));
                    stood.push(accepted(decision.command.command_id, &handled.position));
                }
                None => {
                    broken.insert(decision.key.clone());
                    lost.extend(before.into_iter().map(|d| d.command));
                    lost.push(decision.command);
                }
            }
        }
        for (key, trailing) in waiting {
            let version = self.aggregates.get(&key).map_or(0, |a| a.cursor.version);
            for decision in trailing {
                if decision.version_after == version {
                    stood.push(answer(decision));
                } else {
                    lost.push(decision.command);
                }
            }
        }
        (stood, lost)
    }

    fn halt(&mut self, partition: i32, offset: i64, reason: String) {
        tracing::error!(
            partition,
            offset,
            %reason,
            "an event this build cannot read: the partition is halted until a build that reads it runs"
        );
        metrics::gauge!("tidings_reader_halted", "reader" => "decider", "partition" => partition.to_string())
            .set(1.0);
        self.halted = Some(reason);
    }
}

/// The layout of a snapshot in `decider_snapshots.aggregates`.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    layout: u32,
    aggregates: HashMap<String, Aggregate>,
}

pub struct Decider {
    topics: Topics,
    commands: Arc<StreamConsumer<Ownership>>,
    tail: StreamConsumer,
    /// For the ends of partitions: metadata calls block, so they run on the
    /// blocking pool with this client.
    meta: Arc<BaseConsumer>,
    producer: FutureProducer,
    db: PgPool,
    partitions: HashMap<i32, Partition>,
    snapshot_every: u64,
    /// Commands from the log and from the bus, in log order.
    merge: Merge,
    shortcuts: DeciderShortcuts,
    /// Whether `tail` is assigned: only while it reads (a rebuild, a
    /// read-back past another writer), so that it parks no fetch otherwise.
    tail_assigned: bool,
    /// The last batch's outcomes going to `tidings.command-results`, then its
    /// offsets being committed: the next batch is decided meanwhile, and
    /// waits for it before it sends its own (one at a time, in order).
    sending: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Runs a decider until `shutdown`.
pub async fn run(
    settings: DeciderSettings,
    db: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = settings.kafka.topics();
    let group = format!("{}.deciders", settings.kafka.topic_prefix);
    let commands: StreamConsumer<Ownership> = settings
        .kafka
        .consumer(Some(&group))
        .create_with_context(Ownership {
            owned: settings.owned.clone(),
            ..Default::default()
        })
        .context("creating the commands consumer")?;
    commands.subscribe(&[&topics.commands])?;
    let commands = Arc::new(commands);
    let mut decider = Decider {
        tail: settings
            .kafka
            .consumer(None)
            .set("fetch.wait.max.ms", READING_FETCH_WAIT_MS.to_string())
            .create()?,
        meta: Arc::new(settings.kafka.consumer(None).create()?),
        producer: settings.kafka.producer().create()?,
        topics,
        commands,
        db,
        partitions: HashMap::new(),
        snapshot_every: settings.snapshot_every,
        merge: Merge::default(),
        shortcuts: settings.shortcuts.clone(),
        tail_assigned: false,
        sending: None,
    };
    let mut early = settings.shortcuts.bus.commands.open();
    tracing::info!(%group, "decider started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = decider.commands.recv() => message.map(|m| (Origin::Log, m.detach())),
            Some(message) = early.recv() => Ok((Origin::Shortcut, message)),
        };
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(error) => {
                tracing::warn!(%error, "reading commands");
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
            if let Some(Ok(message)) = decider.commands.recv().now_or_never() {
                batch.push((Origin::Log, message.detach()));
                more = true;
            }
            if !more {
                break;
            }
        }
        decider.handle(batch).await?;
    }
    decider.sent().await?;
    decider.commands.unsubscribe();
    Ok(())
}

/// One command's decision in a batch, held until the read-back says whether
/// the history it was decided on is the one in the log.
struct Decision {
    command: CommandEnvelope,
    key: String,
    /// The outcome of a command that wrote nothing (a rejection or a no-op);
    /// `None` for one that wrote events.
    answer: Option<Outcome>,
    /// The aggregate's version right after this decision, as decided.
    version_after: u64,
}

/// Publishes outcomes to `tidings.command-results`, for the API processes
/// that wait for them.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    results: &[CommandResult],
) -> anyhow::Result<()> {
    let sends = results.iter().map(|result| {
        let key = result.command_id.to_string();
        let payload = serde_json::to_vec(result).expect("results serialize to JSON");
        async move {
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
        }
    });
    try_join_all(sends)
        .await
        .context("publishing command results")?;
    Ok(())
}

/// One event as the broker took it.
struct Written {
    offset: i64,
    key: String,
    payload: Vec<u8>,
}

/// What one partition of a batch decided and wrote.
struct Decided {
    partition: i32,
    decisions: Vec<Decision>,
    events: Vec<EventEnvelope>,
}

impl Decider {
    async fn handle(&mut self, batch: Vec<(Origin, OwnedMessage)>) -> anyhow::Result<()> {
        self.drop_revoked();
        let owned: Vec<i32> = self
            .commands
            .assignment()?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let batch = batch
            .into_iter()
            .filter(|(_, message)| owned.contains(&message.partition()))
            .collect();
        let mut by_partition: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        // Commands handed over by the command bus of this process: their
        // senders wait here, and hear the outcome without the results topic.
        let mut local: HashSet<(i32, i64)> = HashSet::new();
        for (origin, message) in self.merge.admit_with_origin(batch) {
            if origin == Origin::Shortcut {
                local.insert((message.partition(), message.offset()));
            }
            match by_partition
                .iter_mut()
                .find(|(p, _)| *p == message.partition())
            {
                Some((_, messages)) => messages.push(message),
                None => by_partition.push((message.partition(), vec![message])),
            }
        }
        // Every partition of the batch is decided and written at once, and
        // read back in one wait: a round trip to the broker per batch, not
        // per partition.
        let mut groups: Vec<(i32, Vec<CommandEnvelope>)> = Vec::with_capacity(by_partition.len());
        let mut ends: Vec<(i32, i64)> = Vec::new();
        let mut results = Vec::new();
        let mut types: HashMap<Uuid, &'static str> = HashMap::new();
        let mut local_ids: HashSet<Uuid> = HashSet::new();
        let mut remote_ids: HashSet<Uuid> = HashSet::new();
        for (partition, messages) in by_partition {
            self.ensure_loaded(partition).await?;
            if self.is_halted(partition) {
                // Neither decided nor committed: they wait for a build that
                // reads the partition (their senders time out and may retry).
                continue;
            }
            let last_offset = messages
                .last()
                .map(|m| m.offset())
                .expect("non-empty group");
            ends.push((partition, last_offset + 1));
            let mut commands = Vec::with_capacity(messages.len());
            for message in &messages {
                match serde_json::from_slice::<CommandEnvelope>(
                    message.payload().unwrap_or_default(),
                ) {
                    Ok(command) => {
                        if local.contains(&(message.partition(), message.offset())) {
                            local_ids.insert(command.command_id);
                        } else {
                            remote_ids.insert(command.command_id);
                        }
                        commands.push(command)
                    }
                    Err(error) => results.extend(malformed(message, error)),
                }
            }
            types.extend(
                commands
                    .iter()
                    .map(|c| (c.command_id, c.command.type_name())),
            );
            groups.push((partition, commands));
        }
        results.extend(self.process(groups).await?);
        // The waiting API hears first; the topic is for the other processes.
        // A command sent by this process's bus has its sender here, so its
        // outcome goes on the topic only when the handover failed, or when a
        // copy of it (the same id, sent again) came from elsewhere in this
        // batch: that sender waits on the topic.
        let mut to_publish = Vec::with_capacity(results.len());
        let handover = self.shortcuts.bus.results.is_open();
        for result in &results {
            let handed = handover && self.shortcuts.bus.results.offer(result.clone());
            let only_here =
                local_ids.contains(&result.command_id) && !remote_ids.contains(&result.command_id);
            if !(handed && only_here) {
                to_publish.push(result.clone());
            }
        }
        metrics::counter!("tidings_results_kept_local_total")
            .increment((results.len() - to_publish.len()) as u64);
        for result in &results {
            let kind = types
                .get(&result.command_id)
                .copied()
                .unwrap_or("malformed");
            let outcome = match &result.outcome {
                Outcome::Accepted { .. } => "accepted".to_owned(),
                Outcome::Rejected { code, .. } => code.clone(),
            };
            metrics::counter!("tidings_commands_total", "type" => kind, "outcome" => outcome)
                .increment(1);
        }
        let mut commit = TopicPartitionList::new();
        for &(partition, end) in &ends {
            // A partition that halted while reading back answered nothing.
            if !self.is_halted(partition) {
                commit.add_partition_offset(
                    &self.topics.commands,
                    partition,
                    Offset::Offset(end),
                )?;
            }
        }
        self.sent().await?;
        let (producer, topic, commands) = (
            self.producer.clone(),
            self.topics.results.clone(),
            self.commands.clone(),
        );
        self.sending = Some(tokio::spawn(async move {
            publish(&producer, &topic, &to_publish).await?;
            if commit.count() > 0 {
                if let Err(error) = commands.commit(&commit, CommitMode::Async) {
                    // Not fatal: the commands are answered again, from the
                    // handled ones, after a rebalance.
                    tracing::warn!(%error, "committing command offsets");
                }
            }
            Ok(())
        }));
        for (&partition, state) in &self.partitions {
            if state.halted.is_some() {
                self.commands.context().owned.halt(partition);
            }
        }
        for (partition, _) in ends {
            self.maybe_snapshot(partition).await;
        }
        Ok(())
    }

    fn is_halted(&self, partition: i32) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|p| p.halted.is_some())
    }

    fn drop_revoked(&mut self) {
        let revoked: Vec<i32> = std::mem::take(
            &mut *self
                .commands
                .context()
                .revoked
                .lock()
                .expect("ownership lock"),
        );
        if revoked.is_empty() {
            return;
        }
        for partition in &revoked {
            self.partitions.remove(partition);
            self.merge.forget(*partition);
            metrics::gauge!("tidings_reader_halted", "reader" => "decider", "partition" => partition.to_string())
                .set(0.0);
        }
        tracing::info!(?revoked, "partitions revoked; their state is dropped");
        self.release_tail();
    }

    /// The end of a partition of the events, read on the blocking pool.
    async fn end_of(&self, partition: i32) -> anyhow::Result<i64> {
        let meta = self.meta.clone();
        let topic = self.topics.events.clone();
        let (_, high) = tokio::task::spawn_blocking(move || {
            meta.fetch_watermarks(&topic, partition, ADMIN_TIMEOUT)
        })
        .await
        .context("reading the end of the events partition")?
        .context("reading the end of the events partition")?;
        Ok(high)
    }

    /// Rebuilds a newly owned partition: snapshot, then the log to its end.
    async fn ensure_loaded(&mut self, partition: i32) -> anyhow::Result<()> {
        if self.partitions.contains_key(&partition) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let loaded = load_snapshot(&self.db, partition).await?;
        let from = loaded.next_offset;
        self.partitions.insert(partition, loaded);
        self.assign_tail()?;
        let high = self.end_of(partition).await?;
        self.catch_up(partition, high).await?;
        // A broker may report the end short (tansu's memory engine counts a
        // batch as one offset), so read on until the partition is quiet. A
        // command whose events were still missed would be decided again: its
        // copy loses to the first in the read-back (the command applies
        // once), but the log would hold its events twice.
        let mut quiet_since = tokio::time::Instant::now();
        let give_up = quiet_since + 20 * REBUILD_QUIET;
        while quiet_since.elapsed() < REBUILD_QUIET && tokio::time::Instant::now() < give_up {
            match tokio::time::timeout(REBUILD_QUIET, self.tail.recv()).await {
                Ok(Ok(message)) => {
                    let message = message.detach();
                    if message.partition() == partition {
                        quiet_since = tokio::time::Instant::now();
                    }
                    self.fold(&message);
                }
                Ok(Err(error)) => return Err(error).context("reading the events to rebuild"),
                Err(_) => break,
            }
        }
        self.release_tail();
        let aggregates = self.partitions[&partition].aggregates.len();
        tracing::info!(partition, from, to = high, aggregates, elapsed = ?started.elapsed(), "partition rebuilt");
        Ok(())
    }

    /// Points the events reader at every owned partition, each from where
    /// its state stands.
    fn assign_tail(&mut self) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, state) in &self.partitions {
            list.add_partition_offset(
                &self.topics.events,
                partition,
                Offset::Offset(state.next_offset),
            )?;
        }
        self.tail.assign(&list)?;
        self.tail_assigned = true;
        Ok(())
    }

    /// Stops the events reader until it is needed again; the next
    /// [`Decider::assign_tail`] starts it where the states then stand.
    fn release_tail(&mut self) {
        if !self.tail_assigned {
            return;
        }
        if let Err(error) = self.tail.unassign() {
            tracing::warn!(%error, "releasing the events reader");
        }
        self.tail_assigned = false;
    }

    /// Folds events of owned partitions until `partition` has read up to
    /// (not including) `target`, or halted.
    async fn catch_up(&mut self, partition: i32, target: i64) -> anyhow::Result<()> {
        while self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.next_offset < target && p.halted.is_none())
        {
            if !self.tail_assigned {
                self.assign_tail()?;
            }
            let message = tokio::time::timeout(READ_BACK_TIMEOUT, self.tail.recv())
                .await
                .context("reading the events back timed out")??
                .detach();
            self.fold(&message);
        }
        Ok(())
    }

    fn fold(&mut self, message: &OwnedMessage) {
        if let Some(state) = self.partitions.get_mut(&message.partition()) {
            state.fold(
                message.partition(),
                message.offset(),
                message.payload().unwrap_or_default(),
            );
        }
    }

    /// Decides, writes and reads back a batch of commands, partition by
    /// partition at once.
    async fn process(
        &mut self,
        groups: Vec<(i32, Vec<CommandEnvelope>)>,
    ) -> anyhow::Result<Vec<CommandResult>> {
        let mut results = Vec::new();
        let mut pending = groups;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut batches = Vec::with_capacity(pending.len());
            for (partition, answered, fresh) in self.answer_handled(pending).await? {
                results.extend(answered);
                batches.push(self.partitions[&partition].decide(partition, fresh));
            }
            let this = &*self;
            let writes = join_all(
                batches
                    .iter()
                    .map(|batch| this.write_events(batch.partition, &batch.events)),
            )
            .await;
            let mut targets = Vec::with_capacity(batches.len());
            let mut wrote = Vec::with_capacity(batches.len());
            for (batch, written) in batches.iter().zip(writes) {
                let written = written?;
                let mut end = written
                    .iter()
                    .map(|w| w.offset)
                    .max()
                    .map_or(0, |last| last + 1);
                // A rejection or a no-op was decided on what this decider had
                // read: it stands only if nothing else was written before it,
                // so read to the end of the partition, not just to our writes.
                if batch.decisions.iter().any(|d| d.answer.is_some()) {
                    end = end.max(self.end_of(batch.partition).await?);
                }
                targets.push((batch.partition, end));
                wrote.push((batch.partition, written));
            }
            if batches.iter().any(|b| !b.events.is_empty()) {
                faults::pause_at("decider.after_events");
            }
            for (partition, written) in wrote {
                self.take_own_writes(partition, &written);
            }
            for (partition, end) in targets {
                self.catch_up(partition, end).await?;
            }
            self.release_tail();
            pending = Vec::new();
            for batch in batches {
                let (stood, lost) = self.partitions[&batch.partition].check(batch.decisions);
                results.extend(stood);
                if !lost.is_empty() {
                    tracing::warn!(
                        partition = batch.partition,
                        attempt,
                        lost = lost.len(),
                        "commands decided on a history that lost to another writer; deciding again"
                    );
                    pending.push((batch.partition, lost));
                }
            }
            if pending.is_empty() {
                return Ok(results);
            }
        }
        results.extend(
            pending
                .into_iter()
                .flat_map(|(_, lost)| lost)
                .map(|command| CommandResult {
                    command_id: command.command_id,
                    outcome: Outcome::Rejected {
                        code: "write_conflict".into(),
                        kind: ErrorKind::Conflict,
                        message: "another writer changed this at the same time; retry".into(),
                    },
                }),
        );
        Ok(results)
    }

    /// Answers the commands handled before (from memory, then from
    /// `decider_commands`, one lookup for every partition of the batch) and
    /// the expired ones; returns, per partition, the outcomes and the
    /// commands left to decide, each once, in order.
    async fn answer_handled(
        &self,
        groups: Vec<(i32, Vec<CommandEnvelope>)>,
    ) -> anyhow::Result<Vec<(i32, Vec<CommandResult>, Vec<CommandEnvelope>)>> {
        let mut recalled = Vec::with_capacity(groups.len());
        let mut lookup: Vec<Uuid> = Vec::new();
        for (partition, commands) in groups {
            let state = &self.partitions[&partition];
            let (answered, unknown) = state.recall(commands);
            if state.snapshotted {
                lookup.extend(unknown.iter().map(|c| c.command_id));
            }
            recalled.push((partition, answered, unknown));
        }
        let stored = match lookup.is_empty() {
            true => HashMap::new(),
            false => stored_handled(&self.db, &lookup).await?,
        };
        let expired_before = Utc::now() - chrono::Duration::hours(COMMAND_EXPIRES_HOURS);
        let mut answers = Vec::with_capacity(recalled.len());
        for (partition, mut answered, unknown) in recalled {
            let mut fresh = Vec::with_capacity(unknown.len());
            for command in unknown {
                match stored.get(&command.command_id) {
                    Some((handled_in, position)) if *handled_in == partition => {
                        answered.push(accepted(command.command_id, position));
                    }
                    _ if command.issued_at < expired_before => {
                        answered.push(CommandResult {
                            command_id: command.command_id,
                            outcome: Outcome::Rejected {
                                code: "command_expired".into(),
                                kind: ErrorKind::Invalid,
                                message: format!(
                                    "the command was issued more than {COMMAND_EXPIRES_HOURS} hours ago"
                                ),
                            },
                        });
                    }
                    _ => fresh.push(command),
                }
            }
            answers.push((partition, answered, fresh));
        }
        Ok(answers)
    }

    /// Folds what this decider just wrote without reading it back, when
    /// the broker put it right where the partition's state stands: nothing
    /// came between, so the log holds exactly these records there. Otherwise
    /// [`Decider::catch_up`] reads the log. Either way the projector of this
    /// process gets the records at once.
    fn take_own_writes(&mut self, partition: i32, written: &[Written]) {
        if self.shortcuts.events.is_open() {
            for w in written {
                self.shortcuts.events.offer(shortcut::record(
                    &self.topics.events,
                    partition,
                    w.offset,
                    w.key.as_bytes(),
                    &w.payload,
                ));
            }
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let start = state.next_offset;
        let in_place = written
            .iter()
            .enumerate()
            .all(|(i, w)| w.offset == start + i as i64);
        if in_place {
            for w in written {
                state.fold(partition, w.offset, &w.payload);
            }
        }
    }

    async fn write_events(
        &self,
        partition: i32,
        events: &[EventEnvelope],
    ) -> anyhow::Result<Vec<Written>> {
        let sends = events.iter().map(|envelope| async move {
            let key = envelope.aggregate.key();
            let payload = envelope.to_json();
            let version = envelope.version.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "type",
                    value: Some(envelope.event_type.as_str()),
                })
                .insert(Header {
                    key: "version",
                    value: Some(version.as_str()),
                });
            let record = FutureRecord::to(&self.topics.events)
                .partition(partition)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            let offset = self
                .producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|delivery| delivery.offset)
                .map_err(|(error, _)| error)?;
            Ok::<_, rdkafka::error::KafkaError>(Written {
                offset,
                key,
                payload,
            })
        });
        try_join_all(sends).await.context("writing events")
    }

    /// Waits until the last batch's outcomes are published and its offsets
    /// committed.
    async fn sent(&mut self) -> anyhow::Result<()> {
        match self.sending.take() {
            Some(sending) => sending.await.context("publishing command results")?,
            None => Ok(()),
        }
    }

    /// Saves the partition's state, and the commands handled since the last
    /// snapshot, in one transaction; prunes commands past their time.
    async fn maybe_snapshot(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.since_snapshot < self.snapshot_every || state.halted.is_some() {
            return;
        }
        match save_snapshot(&self.db, partition, state).await {
            Ok(()) => {
                state.since_snapshot = 0;
                state.handled.clear();
                state.snapshotted = true;
                tracing::debug!(partition, next_offset = state.next_offset, "snapshot saved");
            }
            // A missing snapshot only makes the next rebuild longer; the
            // handled commands stay in memory until one is saved.
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), partition, "saving a snapshot")
            }
        }
    }
}

fn accepted(command_id: Uuid, position: &Position) -> CommandResult {
    CommandResult {
        command_id,
        outcome: Outcome::Accepted {
            position: position.clone(),
        },
    }
}

/// The result of a decision that wrote nothing.
fn answer(decision: Decision) -> CommandResult {
    CommandResult {
        command_id: decision.command.command_id,
        outcome: decision.answer.expect("a decision that wrote nothing"),
    }
}

async fn save_snapshot(db: &PgPool, partition: i32, state: &Partition) -> anyhow::Result<()> {
    let snapshot = serde_json::json!({
        "layout": SNAPSHOT_LAYOUT,
        "aggregates": &state.aggregates,
    });
    let mut ids = Vec::with_capacity(state.handled.len());
    let mut positions = Vec::with_capacity(state.handled.len());
    let mut issued = Vec::with_capacity(state.handled.len());
    for (id, handled) in &state.handled {
        ids.push(*id);
        positions.push(handled.position.to_string());
        issued.push(handled.issued_at);
    }
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO decider_commands (command_id, partition, position, issued_at)
         SELECT * FROM UNNEST($1::uuid[], $2::integer[], $3::text[], $4::timestamptz[])
         ON CONFLICT (command_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(vec![partition; ids.len()])
    .bind(&positions)
    .bind(&issued)
    .execute(&mut *tx)
    .await
    .context("storing handled commands")?;
    sqlx::query(
        "INSERT INTO decider_snapshots (partition, next_offset, aggregates, taken_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (partition) DO UPDATE
           SET next_offset = EXCLUDED.next_offset, aggregates = EXCLUDED.aggregates, taken_at = now()
         WHERE decider_snapshots.next_offset < EXCLUDED.next_offset",
    )
    .bind(partition)
    .bind(state.next_offset)
    .bind(snapshot)
    .execute(&mut *tx)
    .await
    .context("storing the snapshot")?;
    sqlx::query(
        "DELETE FROM decider_commands
         WHERE partition = $1 AND issued_at < now() - make_interval(hours => $2)",
    )
    .bind(partition)
    .bind(HANDLED_KEPT_HOURS as i32)
    .execute(&mut *tx)
    .await
    .context("pruning handled commands")?;
    tx.commit().await?;
    Ok(())
}

async fn load_snapshot(db: &PgPool, partition: i32) -> anyhow::Result<Partition> {
    let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT next_offset, aggregates FROM decider_snapshots WHERE partition = $1",
    )
    .bind(partition)
    .fetch_optional(db)
    .await
    .context("loading a decider snapshot")?;
    let Some((next_offset, snapshot)) = row else {
        return Ok(Partition::default());
    };
    match serde_json::from_value::<Snapshot>(snapshot) {
        Ok(snapshot) if snapshot.layout == SNAPSHOT_LAYOUT => Ok(Partition {
            aggregates: snapshot.aggregates,
            next_offset,
            snapshotted: true,
            ..Partition::default()
        }),
        outcome => {
            // A snapshot from another layout: the log is the truth. The
            // handled commands stored with it still count.
            let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(%error, partition, "snapshot of another layout; rebuilding from the start of the log");
            Ok(Partition {
                snapshotted: true,
                ..Partition::default()
            })
        }
    }
}

/// The commands of `ids` handled before their partition's snapshot, with
/// that partition. Looked up by the primary key alone, one index probe per
/// id: as `partition = $1 AND command_id = ANY($2)` the lookup took 1.5 to
/// 4 ms a batch under load, nearly always finding nothing.
async fn stored_handled(
    db: &PgPool,
    ids: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, (i32, Position)>> {
    let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
        "SELECT c.command_id, c.partition, c.position
         FROM UNNEST($1::uuid[]) AS u(id) JOIN decider_commands c ON c.command_id = u.id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
    .context("looking up handled commands")?;
    rows.into_iter()
        .map(|(id, partition, position)| {
            let position = position
                .parse()
                .map_err(|_| anyhow::anyhow!("stored position of {id} is not a position"))?;
            Ok((id, (partition, position)))
        })
        .collect()
}

/// The rejection of a command that is not a readable envelope, if it has a
/// command id to answer to.
fn malformed(message: &OwnedMessage, error: serde_json::Error) -> Option<CommandResult> {
    tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "malformed command");
    let value: serde_json::Value = serde_json::from_slice(message.payload()?).ok()?;
    let command_id = value.get("command_id")?.as_str()?.parse().ok()?;
    Some(CommandResult {
        command_id,
        outcome: Outcome::Rejected {
            code: "malformed_command".into(),
            kind: ErrorKind::Invalid,
            message: error.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    //! The decider's core without a broker: decide a batch on a partition's
    //! state, fold what the log then holds, and check which decisions stand.

    use tidings_domain::account;
    use tidings_schemas::AggregateRef;

    use super::*;
    use crate::envelope::AnyCommand;

    const PARTITION: i32 = 0;

    fn user() -> Uuid {
        Uuid::from_u128(42)
    }

    fn command(id: u128, command: account::Command) -> CommandEnvelope {
        CommandEnvelope {
            command_id: Uuid::from_u128(id),
            idempotency_key: None,
            actor: Some(user()),
            issued_at: Utc::now(),
            correlation_id: Uuid::from_u128(id),
            aggregate: AggregateRef::account(user()),
            command: AnyCommand::Account(command),
        }
    }

    fn open(id: u128) -> CommandEnvelope {
        command(
            id,
            account::Command::Open(account::Register {
                user_id: user(),
                username: "ada".into(),
                email: "ada@example.com".into(),
                display_name: "Ada".into(),
                at: Utc::now(),
            }),
        )
    }

    fn activate(id: u128) -> CommandEnvelope {
        command(id, account::Command::Activate { at: Utc::now() })
    }

    fn rename(id: u128, name: &str) -> CommandEnvelope {
        command(
            id,
            account::Command::UpdateProfile(account::UpdateProfile {
                display_name: Some(name.into()),
                ..Default::default()
            }),
        )
    }

    /// A partition with its log: what is appended is folded in order.
    #[derive(Default)]
    struct Log {
        state: Partition,
        next: i64,
    }

    impl Log {
        fn append(&mut self, events: &[EventEnvelope]) {
            for event in events {
                self.state.fold(PARTITION, self.next, &event.to_json());
                self.next += 1;
            }
        }

        /// Decides `commands`, appends what they wrote, folds and checks.
        fn run(&mut self, commands: Vec<CommandEnvelope>) -> (Vec<CommandResult>, Vec<Uuid>) {
            let (mut answered, fresh) = self.state.recall(commands);
            let decided = self.state.decide(PARTITION, fresh);
            self.append(&decided.events);
            let (stood, lost) = self.state.check(decided.decisions);
            answered.extend(stood);
            (answered, ids(&lost))
        }

        fn version(&self) -> u64 {
            self.state.aggregates[&AggregateRef::account(user()).key()]
                .cursor
                .version
        }
    }

    fn ids(commands: &[CommandEnvelope]) -> Vec<Uuid> {
        commands.iter().map(|c| c.command_id).collect()
    }

    fn accepted_ids(results: &[CommandResult]) -> Vec<Uuid> {
        results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Accepted { .. }))
            .map(|r| r.command_id)
            .collect()
    }

    /// What a zombie owner, deciding on the same state, wrote first.
    fn zombie(log: &Log) -> Vec<EventEnvelope> {
        log.state
            .decide(PARTITION, vec![rename(99, "zombie")])
            .events
    }

    fn active_account() -> Log {
        let mut log = Log::default();
        let (stood, lost) = log.run(vec![open(1), activate(2)]);
        assert_eq!((stood.len(), lost.len()), (2, 0));
        log
    }

    #[test]
    fn a_batch_larger_than_any_horizon_is_remembered_whole() {
        let mut log = active_account();
        let renames: Vec<CommandEnvelope> = (0..600)
            .map(|n| rename(1000 + n, &format!("name {n}")))
            .collect();
        let (stood, lost) = log.run(renames.clone());
        assert_eq!((accepted_ids(&stood).len(), lost.len()), (600, 0));
        assert_eq!(log.version(), 602);
        // Redelivered, every one of them gets its first outcome and nothing
        // is decided again.
        let (answered, lost) = log.run(renames);
        assert_eq!((accepted_ids(&answered).len(), lost.len()), (600, 0));
        assert_eq!(log.version(), 602);
    }

    #[test]
    fn a_command_decided_on_top_of_one_that_lost_loses_too() {
        let mut log = active_account();
        let decided = log
            .state
            .decide(PARTITION, vec![rename(10, "mine"), rename(11, "mine too")]);
        assert_eq!(decided.events.len(), 2);
        // A zombie took the next sequence before our writes landed.
        log.append(&zombie(&log));
        log.append(&decided.events);
        let (stood, lost) = log.state.check(decided.decisions);
        assert!(stood.is_empty(), "{stood:?}");
        assert_eq!(ids(&lost), [Uuid::from_u128(10), Uuid::from_u128(11)]);
        assert_eq!(log.version(), 3, "only the zombie's event applied");
        // Decided again, on the state that won, both stand.
        let (stood, lost) = log.run(vec![rename(10, "mine"), rename(11, "mine too")]);
        assert_eq!((stood.len(), lost.len()), (2, 0));
        assert_eq!(log.version(), 5);
    }

    #[test]
    fn a_rejection_from_a_stale_view_is_decided_again() {
        let mut log = Log::default();
        // Decided on an empty state: there is no account to update.
        let decided = log.state.decide(PARTITION, vec![rename(10, "early")]);
        assert!(decided.events.is_empty());
        // Meanwhile another writer had opened it.
        let elsewhere = Log::default().state.decide(PARTITION, vec![open(1)]);
        log.append(&elsewhere.events);
        let (stood, lost) = log.state.check(decided.decisions);
        assert!(stood.is_empty(), "{stood:?}");
        assert_eq!(ids(&lost), [Uuid::from_u128(10)]);
    }

    #[test]
    fn a_rejection_after_the_batchs_own_write_stands() {
        let mut log = Log::default();
        let (stood, lost) = log.run(vec![open(1), open(2)]);
        assert!(lost.is_empty());
        assert_eq!(stood.len(), 2);
        let second = stood.iter().find(|r| r.command_id == Uuid::from_u128(2));
        assert!(
            matches!(&second.unwrap().outcome, Outcome::Rejected { code, .. } if code == "account_exists"),
            "{second:?}"
        );
    }

    #[test]
    fn a_retry_of_a_command_that_lost_is_decided_afresh() {
        let mut log = active_account();
        let decided = log.state.decide(PARTITION, vec![rename(10, "mine")]);
        log.append(&zombie(&log));
        log.append(&decided.events);
        let (_, lost) = log.state.check(decided.decisions);
        assert_eq!(ids(&lost), [Uuid::from_u128(10)]);
        assert!(!log.state.handled.contains_key(&Uuid::from_u128(10)));
        let (stood, lost) = log.run(vec![rename(10, "mine")]);
        assert_eq!(
            (accepted_ids(&stood), lost),
            (vec![Uuid::from_u128(10)], vec![])
        );
    }

    #[test]
    fn a_copy_of_a_command_in_the_same_batch_is_decided_once() {
        let mut log = active_account();
        let (stood, lost) = log.run(vec![rename(10, "once"), rename(10, "once")]);
        assert_eq!(
            (accepted_ids(&stood), lost),
            (vec![Uuid::from_u128(10)], vec![])
        );
        assert_eq!(log.version(), 3);
    }

    #[test]
    fn an_unreadable_event_halts_the_partition_where_it_stands() {
        let mut log = active_account();
        let mut unknown = log.state.decide(PARTITION, vec![rename(10, "x")]).events[0].clone();
        unknown.event_type = "account.teleported".into();
        log.append(&[unknown]);
        assert!(log.state.halted.is_some());
        assert_eq!(
            log.state.next_offset, 2,
            "the offset stays on the unreadable event"
        );
        let later = log.state.decide(PARTITION, vec![rename(11, "y")]).events;
        log.append(&later);
        assert_eq!(log.state.next_offset, 2, "nothing after it is folded");
        assert_eq!(log.version(), 2);
    }
}
