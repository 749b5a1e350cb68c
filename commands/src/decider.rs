//! The decider runtime: the only writer of the aggregates on its partitions.
//!
//! A decider joins the consumer group of `tidings.commands`. For every
//! partition it owns it holds the state of that partition's aggregates,
//! folded from the same partition of `tidings.events` (from a snapshot in
//! PostgreSQL, then to the end of the log) before it decides anything there.
//!
//! For a batch of commands of one partition it:
//! 1. decides each command on the state (commands already handled — a retry
//!    or a redelivery — get their first outcome back, deciding nothing);
//! 2. writes the events to the same partition of `tidings.events` with an
//!    idempotent producer;
//! 3. reads the partition back up to its own writes, folding them under the
//!    sequence rule like every other reader. A command whose events did not
//!    apply lost to another writer (a zombie owner) and is decided again on
//!    the state that won;
//! 4. publishes the outcomes to `tidings.command-results`;
//! 5. commits the commands' offsets.
//!
//! A crash anywhere leaves the commands uncommitted: the next owner rebuilds
//! from the log, finds the commands whose events are already there among the
//! handled ones, and answers them without writing again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::{join_all, try_join_all};
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tidings_domain::ErrorKind;
use tidings_schemas::envelope::{event_id, CURRENT_VERSION};
use tidings_schemas::kafka::{KafkaSettings, Owned, Topics, ADMIN_TIMEOUT};
use tidings_schemas::{faults, EventEnvelope};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Applied};
use crate::envelope::{CommandEnvelope, CommandResult, Outcome};

/// Commands taken from the log in one batch, at most.
const MAX_BATCH: usize = 256;
/// How often a command that lost to another writer is decided again before
/// the client is told to retry.
const MAX_ATTEMPTS: usize = 3;
/// How long reading back one's own writes may take before the decider gives
/// up its state and rebuilds.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DeciderSettings {
    pub kafka: KafkaSettings,
    /// Events folded on a partition between two snapshots of its state.
    pub snapshot_every: u64,
    /// Kept up to date with how many partitions this decider owns.
    pub owned: Owned,
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

/// One owned partition: its aggregates and how far into the events it read.
#[derive(Default)]
struct Partition {
    aggregates: HashMap<String, Aggregate>,
    next_offset: i64,
    since_snapshot: u64,
}

pub struct Decider {
    topics: Topics,
    commands: StreamConsumer<Ownership>,
    tail: StreamConsumer,
    producer: FutureProducer,
    db: PgPool,
    partitions: HashMap<i32, Partition>,
    snapshot_every: u64,
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
    let mut decider = Decider {
        tail: settings.kafka.consumer(None).create()?,
        producer: settings.kafka.producer().create()?,
        topics,
        commands,
        db,
        partitions: HashMap::new(),
        snapshot_every: settings.snapshot_every,
    };
    tracing::info!(%group, "decider started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = decider.commands.recv() => message.map(|m| m.detach()),
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
            match decider.commands.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                _ => break,
            }
        }
        decider.handle(batch).await?;
    }
    decider.commands.unsubscribe();
    Ok(())
}

impl Decider {
    async fn handle(&mut self, batch: Vec<OwnedMessage>) -> anyhow::Result<()> {
        self.drop_revoked();
        let owned: Vec<i32> = self
            .commands
            .assignment()?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let mut by_partition: Vec<(i32, Vec<OwnedMessage>)> = Vec::new();
        for message in batch {
            if !owned.contains(&message.partition()) {
                continue;
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
        let mut commit = TopicPartitionList::new();
        let mut results = Vec::new();
        let mut types: HashMap<Uuid, &'static str> = HashMap::new();
        for (partition, messages) in by_partition {
            self.ensure_loaded(partition).await?;
            let last_offset = messages
                .last()
                .map(|m| m.offset())
                .expect("non-empty group");
            commit.add_partition_offset(
                &self.topics.commands,
                partition,
                Offset::Offset(last_offset + 1),
            )?;
            let mut commands = Vec::with_capacity(messages.len());
            for message in &messages {
                match serde_json::from_slice::<CommandEnvelope>(
                    message.payload().unwrap_or_default(),
                ) {
                    Ok(command) => commands.push(command),
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
        self.publish(&results).await?;
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
        if let Err(error) = self.commands.commit(&commit, CommitMode::Async) {
            // Not fatal: the commands are answered again, from the handled
            // ones, after a rebalance.
            tracing::warn!(%error, "committing command offsets");
        }
        let partitions: Vec<i32> = commit.elements().iter().map(|e| e.partition()).collect();
        for partition in partitions {
            self.maybe_snapshot(partition).await;
        }
        Ok(())
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
        }
        tracing::info!(?revoked, "partitions revoked; their state is dropped");
        if let Err(error) = self.assign_tail() {
            tracing::warn!(%error, "reassigning the events reader");
        }
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
        let (_, high) = self
            .tail
            .fetch_watermarks(&self.topics.events, partition, ADMIN_TIMEOUT)
            .context("reading the end of the events partition")?;
        // A broker may report the end short (tansu's memory engine counts a
        // batch as one offset): then the last few events are folded later, by
        // the reader of the partition, and a decision taken without them
        // loses to them in the read-back below and is taken again.
        self.catch_up(partition, high).await?;
        let aggregates = self.partitions[&partition].aggregates.len();
        tracing::info!(partition, from, to = high, aggregates, elapsed = ?started.elapsed(), "partition rebuilt");
        Ok(())
    }

    /// Points the events reader at every owned partition, each from where
    /// its state stands.
    fn assign_tail(&self) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, state) in &self.partitions {
            list.add_partition_offset(
                &self.topics.events,
                partition,
                Offset::Offset(state.next_offset),
            )?;
        }
        self.tail.assign(&list)?;
        Ok(())
    }

    /// Folds events of owned partitions until `partition` has read up to
    /// (not including) `target`.
    async fn catch_up(&mut self, partition: i32, target: i64) -> anyhow::Result<()> {
        while self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.next_offset < target)
        {
            let message = tokio::time::timeout(READ_BACK_TIMEOUT, self.tail.recv())
                .await
                .context("reading the events back timed out")??
                .detach();
            self.fold(&message);
        }
        Ok(())
    }

    fn fold(&mut self, message: &OwnedMessage) {
        let Some(state) = self.partitions.get_mut(&message.partition()) else {
            return;
        };
        if message.offset() < state.next_offset {
            return;
        }
        state.next_offset = message.offset() + 1;
        state.since_snapshot += 1;
        let envelope = match EventEnvelope::from_json(message.payload().unwrap_or_default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(%error, partition = message.partition(), offset = message.offset(), "not an event envelope; skipped");
                return;
            }
        };
        let aggregate = state
            .aggregates
            .entry(envelope.aggregate.key())
            .or_insert_with(|| Aggregate::new(envelope.aggregate.kind));
        if aggregate.apply(&envelope, Some((message.partition(), message.offset())))
            == Applied::Skipped
        {
            metrics::counter!("tidings_events_skipped_total", "reader" => "decider").increment(1);
            tracing::warn!(
                event_id = %envelope.event_id,
                aggregate = %envelope.aggregate.key(),
                sequence = envelope.sequence,
                version = aggregate.cursor.version,
                "event skipped by the sequence rule"
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
            let this = &*self;
            let writes = join_all(pending.into_iter().map(|(partition, commands)| async move {
                (partition, this.decide_and_write(partition, commands).await)
            }))
            .await;
            let mut targets = Vec::new();
            let mut written_by_partition = Vec::new();
            for (partition, write) in writes {
                let (decided, written) = write?;
                results.extend(decided);
                if let Some(end) = written.iter().map(|w| w.last_offset + 1).max() {
                    targets.push((partition, end));
                }
                written_by_partition.push((partition, written));
            }
            if targets.is_empty() {
                return Ok(results);
            }
            faults::pause_at("decider.after_events");
            for (partition, end) in targets {
                self.catch_up(partition, end).await?;
            }
            pending = Vec::new();
            for (partition, written) in written_by_partition {
                let state = &self.partitions[&partition];
                let mut lost = Vec::new();
                for Written { command, .. } in written {
                    let handled = state
                        .aggregates
                        .get(&command.aggregate.key())
                        .and_then(|a| a.handled(command.command_id));
                    match handled {
                        Some(position) => results.push(CommandResult {
                            command_id: command.command_id,
                            outcome: Outcome::Accepted {
                                position: position.clone(),
                            },
                        }),
                        None => lost.push(command),
                    }
                }
                if !lost.is_empty() {
                    tracing::warn!(
                        partition,
                        attempt,
                        lost = lost.len(),
                        "commands lost to another writer; deciding again"
                    );
                    pending.push((partition, lost));
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

    /// Decides every command on a working copy of the state and writes the
    /// events. Returns the outcomes of the commands answered without writing,
    /// and the commands written.
    async fn decide_and_write(
        &self,
        partition: i32,
        commands: Vec<CommandEnvelope>,
    ) -> anyhow::Result<(Vec<CommandResult>, Vec<Written>)> {
        let mut results = Vec::new();
        let state = &self.partitions[&partition];
        let mut working: HashMap<String, Aggregate> = HashMap::new();
        let mut events: Vec<EventEnvelope> = Vec::new();
        let mut written: Vec<(CommandEnvelope, std::ops::Range<usize>)> = Vec::new();
        for command in commands {
            let key = command.aggregate.key();
            let aggregate = working.entry(key.clone()).or_insert_with(|| {
                state
                    .aggregates
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Aggregate::new(command.aggregate.kind))
            });
            if let Some(position) = aggregate.handled(command.command_id) {
                // Handled before (a retry or a redelivery), or earlier in this
                // very batch: its first outcome stands.
                if !position.is_empty() {
                    results.push(CommandResult {
                        command_id: command.command_id,
                        outcome: Outcome::Accepted {
                            position: position.clone(),
                        },
                    });
                } else {
                    written.push((command, 0..0));
                }
                continue;
            }
            match aggregate.state.decide(&command.command) {
                Err(outcome) => results.push(CommandResult {
                    command_id: command.command_id,
                    outcome,
                }),
                Ok(decided) if decided.is_empty() => results.push(CommandResult {
                    command_id: command.command_id,
                    outcome: Outcome::Accepted {
                        position: Default::default(),
                    },
                }),
                Ok(decided) => {
                    let start = events.len();
                    for (index, event) in decided.into_iter().enumerate() {
                        let (event_type, data) = event.encode();
                        let envelope = EventEnvelope {
                            event_id: event_id(command.command_id, index),
                            event_type,
                            version: CURRENT_VERSION,
                            aggregate: command.aggregate.clone(),
                            sequence: aggregate.cursor.version + 1,
                            occurred_at: command.issued_at,
                            actor: command.actor,
                            command_id: command.command_id,
                            correlation_id: command.correlation_id,
                            data,
                        };
                        aggregate.apply(&envelope, None);
                        events.push(envelope);
                    }
                    let end = events.len();
                    written.push((command, start..end));
                }
            }
        }
        let offsets = self.write_events(partition, &events).await?;
        let written = written
            .into_iter()
            .map(|(command, range)| Written {
                // A command handled earlier in this batch has no events of
                // its own: reading back the whole batch covers it.
                last_offset: if range.is_empty() {
                    offsets.iter().copied().max().unwrap_or(-1)
                } else {
                    offsets[range.end - 1]
                },
                command,
            })
            .collect();
        Ok((results, written))
    }

    async fn write_events(
        &self,
        partition: i32,
        events: &[EventEnvelope],
    ) -> anyhow::Result<Vec<i64>> {
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
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|delivery| delivery.offset)
                .map_err(|(error, _)| error)
        });
        try_join_all(sends).await.context("writing events")
    }

    async fn publish(&self, results: &[CommandResult]) -> anyhow::Result<()> {
        let sends = results.iter().map(|result| {
            let key = result.command_id.to_string();
            let payload = serde_json::to_vec(result).expect("results serialize to JSON");
            async move {
                let record = FutureRecord::to(&self.topics.results)
                    .key(&key)
                    .payload(&payload);
                self.producer
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

    async fn maybe_snapshot(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if state.since_snapshot < self.snapshot_every {
            return;
        }
        let aggregates =
            serde_json::to_value(&state.aggregates).expect("aggregates serialize to JSON");
        let next_offset = state.next_offset;
        let saved = sqlx::query(
            "INSERT INTO decider_snapshots (partition, next_offset, aggregates, taken_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (partition) DO UPDATE
               SET next_offset = EXCLUDED.next_offset, aggregates = EXCLUDED.aggregates, taken_at = now()
             WHERE decider_snapshots.next_offset < EXCLUDED.next_offset",
        )
        .bind(partition)
        .bind(next_offset)
        .bind(aggregates)
        .execute(&self.db)
        .await;
        match saved {
            Ok(_) => {
                state.since_snapshot = 0;
                tracing::debug!(partition, next_offset, "snapshot saved");
            }
            // A missing snapshot only makes the next rebuild longer.
            Err(error) => tracing::warn!(%error, partition, "saving a snapshot"),
        }
    }
}

struct Written {
    command: CommandEnvelope,
    last_offset: i64,
}

async fn load_snapshot(db: &PgPool, partition: i32) -> anyhow::Result<Partition> {
    let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT next_offset, aggregates FROM decider_snapshots WHERE partition = $1",
    )
    .bind(partition)
    .fetch_optional(db)
    .await
    .context("loading a decider snapshot")?;
    let Some((next_offset, aggregates)) = row else {
        return Ok(Partition::default());
    };
    match serde_json::from_value(aggregates) {
        Ok(aggregates) => Ok(Partition {
            aggregates,
            next_offset,
            since_snapshot: 0,
        }),
        Err(error) => {
            // A snapshot from an older layout: the log is the truth.
            tracing::warn!(%error, partition, "snapshot unreadable; rebuilding from the start of the log");
            Ok(Partition::default())
        }
    }
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
