//! The hub: one task that owns every subscription of this gateway.
//!
//! Sessions and the follower of `tidings.updates` talk to it over a
//! `Command` channel; it hands each update to the sessions subscribed to its
//! channel. A session whose queue is full is too slow to keep up: the hub
//! drops it and tells it so, and the client resumes with `since`.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tidings_projections::outbox::Update;
use tidings_schemas::kafka::{KafkaSettings, ADMIN_TIMEOUT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Updates queued for one session before it counts as too slow.
pub const SESSION_QUEUE: usize = 512;

pub enum Command {
    Subscribe {
        session: Uuid,
        channel: String,
        queue: mpsc::Sender<Update>,
        too_slow: CancellationToken,
    },
    Unsubscribe {
        session: Uuid,
        channel: String,
    },
    Leave {
        session: Uuid,
    },
    Deliver(Update),
}

struct Subscriber {
    queue: mpsc::Sender<Update>,
    too_slow: CancellationToken,
}

/// The handle sessions use.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    /// Cancelled when the gateway shuts down: sessions close with "going
    /// away" so their clients resume on another gateway.
    pub shutdown: CancellationToken,
}

impl Hub {
    /// Starts the hub and the follower of `tidings.updates`.
    pub fn start(kafka: &KafkaSettings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        let consumer: StreamConsumer = kafka.consumer(None).create()?;
        let topic = kafka.topics().updates;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..kafka.partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, partition, ADMIN_TIMEOUT)?;
            assignment.add_partition_offset(&topic, partition, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        tokio::spawn(follow(consumer, tx.clone(), shutdown.clone()));
        Ok(Hub {
            commands: tx,
            shutdown,
        })
    }

    pub fn send(&self, command: Command) {
        // The hub outlives every session; a send fails only at shutdown.
        let _ = self.commands.send(command);
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut channels: HashMap<String, HashMap<Uuid, Subscriber>> = HashMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Subscribe {
                session,
                channel,
                queue,
                too_slow,
            } => {
                channels
                    .entry(channel)
                    .or_default()
                    .insert(session, Subscriber { queue, too_slow });
            }
            Command::Unsubscribe { session, channel } => {
                if let Some(subscribers) = channels.get_mut(&channel) {
                    subscribers.remove(&session);
                    if subscribers.is_empty() {
                        channels.remove(&channel);
                    }
                }
            }
            Command::Leave { session } => {
                channels.retain(|_, subscribers| {
                    subscribers.remove(&session);
                    !subscribers.is_empty()
                });
            }
            Command::Deliver(update) => {
                let Some(subscribers) = channels.get_mut(&update.channel) else {
                    continue;
                };
                subscribers.retain(|_, subscriber| {
                    match subscriber.queue.try_send(update.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            subscriber.too_slow.cancel();
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                });
                if subscribers.is_empty() {
                    channels.remove(&update.channel);
                }
            }
        }
    }
}

async fn follow(
    consumer: StreamConsumer,
    hub: mpsc::UnboundedSender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                match serde_json::from_slice::<Update>(message.payload().unwrap_or_default()) {
                    Ok(update) => {
                        if hub.send(Command::Deliver(update)).is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "unreadable update skipped"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reading updates");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
