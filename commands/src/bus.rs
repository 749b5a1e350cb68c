//! The command bus: what the API uses to append a command and await its
//! outcome.
//!
//! Every API process reads all of `tidings.command-results` from where it
//! stood when it started and hands each result to whoever waits for that
//! command id. A waiter registers before its command is produced, so no
//! result can slip past it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tidings_schemas::kafka::{KafkaSettings, Topics, ADMIN_TIMEOUT};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{CommandEnvelope, CommandResult, Outcome};

type Waiters = Arc<Mutex<HashMap<Uuid, Vec<oneshot::Sender<Outcome>>>>>;

#[derive(Clone)]
pub struct CommandBus {
    producer: FutureProducer,
    topics: Topics,
    waiters: Waiters,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// 503: the command could not be appended to the log.
    #[error("the command log is unavailable: {0}")]
    Unavailable(#[source] rdkafka::error::KafkaError),
    /// 503: appended, but no outcome came in time. The command may still be
    /// decided; a retry with the same idempotency key is safe.
    #[error("no outcome within {0:?}")]
    Timeout(Duration),
}

impl CommandBus {
    /// Connects and starts following `tidings.command-results` from its end.
    pub async fn connect(
        settings: &KafkaSettings,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let topics = settings.topics();
        let producer: FutureProducer = settings.producer().create()?;
        let consumer: StreamConsumer = settings.consumer(None).create()?;
        // Start exactly at each partition's current end, resolved now rather
        // than at the first fetch: a result produced in between is not lost.
        let mut assignment = TopicPartitionList::new();
        for partition in 0..settings.partitions {
            let (_, high) = consumer.fetch_watermarks(&topics.results, partition, ADMIN_TIMEOUT)?;
            assignment.add_partition_offset(&topics.results, partition, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let waiters: Waiters = Arc::default();
        tokio::spawn(follow_results(consumer, waiters.clone(), shutdown));
        Ok(CommandBus {
            producer,
            topics,
            waiters,
            timeout,
        })
    }

    /// Whether the broker answers a metadata request for the commands topic.
    pub async fn ping(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topics.commands.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok_and(|m| m.topics().iter().all(|t| t.error().is_none()))
        })
        .await
        .unwrap_or(false)
    }

    /// Appends the command and waits for its outcome.
    pub async fn send(&self, command: &CommandEnvelope) -> Result<Outcome, BusError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .entry(command.command_id)
            .or_default()
            .push(tx);
        let _unregister = Unregister {
            waiters: &self.waiters,
            command_id: command.command_id,
        };
        let key = command.aggregate.key();
        let payload = command.to_json();
        let record = FutureRecord::to(&self.topics.commands)
            .key(&key)
            .payload(&payload);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(error, _)| BusError::Unavailable(error))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Err(BusError::Timeout(self.timeout)),
        }
    }
}

/// Drops the waiters of a command whose caller gave up or got its answer.
struct Unregister<'a> {
    waiters: &'a Waiters,
    command_id: Uuid,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        if let Some(list) = waiters.get_mut(&self.command_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(&self.command_id);
            }
        }
    }
}

async fn follow_results(consumer: StreamConsumer, waiters: Waiters, shutdown: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading command results");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        let result: CommandResult = match serde_json::from_slice(payload) {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(%error, "unreadable command result skipped");
                continue;
            }
        };
        let senders = waiters
            .lock()
            .expect("waiters lock")
            .remove(&result.command_id);
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(result.outcome.clone());
        }
    }
}
