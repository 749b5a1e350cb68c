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

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tidings_schemas::kafka::{assign_at_end, KafkaSettings, Topics};
use tidings_schemas::shortcut::{self, Shortcut};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{CommandEnvelope, CommandResult, Outcome};

/// Who waits for which command's outcome. Every waiter leaves when its wait
/// ends, answered or not: a request that times out leaves nothing behind.
#[derive(Clone, Default)]
struct Waiters(Arc<Mutex<HashMap<Uuid, Vec<oneshot::Sender<Outcome>>>>>);

/// Why a wait ended without an outcome.
enum Unanswered<E> {
    /// What was to happen before the wait (producing the command) failed.
    Before(E),
    TimedOut,
}

impl Waiters {
    /// Registers a waiter for `command_id`, runs `before` (which makes the
    /// outcome possible), then waits at most `timeout` for the outcome.
    async fn wait<E>(
        &self,
        command_id: Uuid,
        timeout: Duration,
        before: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<Outcome, Unanswered<E>> {
        let mut waiter = self.register(command_id);
        // One bound for the whole wait: a broker that does not take the
        // command (its produce retries for up to `message.timeout.ms`) must
        // not hold the caller past the command timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, before)
            .await
            .map_err(|_| Unanswered::TimedOut)?
            .map_err(Unanswered::Before)?;
        tokio::time::timeout_at(deadline, waiter.outcome())
            .await
            .ok()
            .flatten()
            .ok_or(Unanswered::TimedOut)
    }

    /// Registered before the command is produced, so no outcome slips past.
    fn register(&self, command_id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .expect("waiters lock")
            .entry(command_id)
            .or_default()
            .push(tx);
        Waiter {
            waiters: self.clone(),
            command_id,
            rx: Some(rx),
        }
    }

    /// Drops the closed waiters of a command.
    fn leave(&self, command_id: Uuid) {
        let mut waiters = self.0.lock().expect("waiters lock");
        if let Some(list) = waiters.get_mut(&command_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(&command_id);
            }
        }
    }

    /// Hands an outcome to everyone waiting for it.
    fn answer(&self, result: &CommandResult) {
        let senders = self
            .0
            .lock()
            .expect("waiters lock")
            .remove(&result.command_id);
        for tx in senders.into_iter().flatten() {
            let _ = tx.send(result.outcome.clone());
        }
    }

    /// Commands with someone waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("waiters lock").len()
    }
}

#[derive(Clone)]
pub struct CommandBus {
    producer: FutureProducer,
    topics: Topics,
    waiters: Waiters,
    timeout: Duration,
    /// Each command as appended, to the deciders of this process.
    to_deciders: Shortcut<OwnedMessage>,
}

/// The shortcuts between the command bus and the deciders of its process.
#[derive(Debug, Clone, Default)]
pub struct BusShortcuts {
    /// Commands as appended, bus → deciders.
    pub commands: Shortcut<OwnedMessage>,
    /// Outcomes as decided, deciders → bus.
    pub results: Shortcut<CommandResult>,
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
        shortcuts: BusShortcuts,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let topics = settings.topics();
        let producer: FutureProducer = settings.producer().create()?;
        let consumer: StreamConsumer = settings.consumer(None).create()?;
        // Start exactly at each partition's current end: a result produced
        // in between is not lost.
        let (results, partitions) = (topics.results.clone(), settings.partitions);
        let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<StreamConsumer> {
            assign_at_end(&consumer, &results, partitions)?;
            Ok(consumer)
        })
        .await??;
        let waiters = Waiters::default();
        tokio::spawn(follow_results(consumer, waiters.clone(), shutdown.clone()));
        let mut early = shortcuts.results.open();
        let answering = waiters.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = early.recv() => match result {
                        Some(result) => answering.answer(&result),
                        None => return,
                    },
                }
            }
        });
        Ok(CommandBus {
            producer,
            topics,
            waiters,
            timeout,
            to_deciders: shortcuts.commands,
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
        let key = command.aggregate.key();
        let payload = command.to_json();
        let produce = async {
            let record = FutureRecord::to(&self.topics.commands)
                .key(&key)
                .payload(&payload);
            let delivery = self
                .producer
                .send(record, Duration::from_secs(5))
                .await
                .map_err(|(error, _)| BusError::Unavailable(error))?;
            if self.to_deciders.is_open() {
                self.to_deciders.offer(shortcut::record(
                    &self.topics.commands,
                    delivery.partition,
                    delivery.offset,
                    key.as_bytes(),
                    &payload,
                ));
            }
            Ok(())
        };
        match self
            .waiters
            .wait(command.command_id, self.timeout, produce)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(Unanswered::Before(error)) => Err(error),
            Err(Unanswered::TimedOut) => Err(BusError::Timeout(self.timeout)),
        }
    }
}

/// One wait for an outcome. However it ends (answered, timed out, the
/// produce failed, the caller's future dropped), dropping it removes it.
struct Waiter {
    waiters: Waiters,
    command_id: Uuid,
    rx: Option<oneshot::Receiver<Outcome>>,
}

impl Waiter {
    async fn outcome(&mut self) -> Option<Outcome> {
        self.rx.as_mut()?.await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Closed first, so that `leave` sees this waiter as gone.
        drop(self.rx.take());
        self.waiters.leave(self.command_id);
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
        waiters.answer(&result);
    }
}

#[cfg(test)]
mod tests {
    use tidings_schemas::Position;

    use super::*;

    const SHORT: Duration = Duration::from_millis(20);

    fn accepted() -> Outcome {
        Outcome::Accepted {
            position: Position::default(),
        }
    }

    #[tokio::test]
    async fn a_wait_that_times_out_leaves_no_waiter() {
        let waiters = Waiters::default();
        for _ in 0..3 {
            let outcome = waiters
                .wait(Uuid::new_v4(), SHORT, async { Ok::<_, ()>(()) })
                .await;
            assert!(matches!(outcome, Err(Unanswered::TimedOut)));
        }
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_failed_produce_leaves_no_waiter() {
        let waiters = Waiters::default();
        let outcome = waiters
            .wait(Uuid::new_v4(), SHORT, async { Err("down") })
            .await;
        assert!(matches!(outcome, Err(Unanswered::Before("down"))));
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_no_waiter() {
        let waiters = Waiters::default();
        let abandoned = tokio::time::timeout(
            SHORT,
            waiters.wait(Uuid::new_v4(), Duration::from_secs(60), async {
                Ok::<_, ()>(())
            }),
        )
        .await;
        assert!(abandoned.is_err());
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn every_waiter_of_a_command_gets_its_outcome_and_leaves() {
        let waiters = Waiters::default();
        let command_id = Uuid::new_v4();
        let wait = || {
            waiters.wait(command_id, Duration::from_secs(5), async {
                Ok::<_, ()>(())
            })
        };
        let answer = async {
            while waiters.len() == 0 {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
            waiters.answer(&CommandResult {
                command_id,
                outcome: accepted(),
            });
        };
        let (first, second, ()) = tokio::join!(wait(), wait(), answer);
        assert_eq!(first.ok(), Some(accepted()));
        assert_eq!(second.ok(), Some(accepted()));
        assert_eq!(waiters.len(), 0);
    }
}
