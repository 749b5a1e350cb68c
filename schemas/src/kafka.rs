//! Topic names and Kafka client settings shared by every role.
//!
//! The four topics of API.md share one prefix (`tidings` by default), so a
//! test or a second deployment on the same broker takes its own prefix and
//! sees nothing of the others. Commands and events have the same partition
//! count and the same key, which puts an aggregate's commands and events on
//! the same partition number: the single-writer rule rests on it.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]` of the brokers.
    pub brokers: String,
    pub topic_prefix: String,
    /// Partitions of every topic. Fixed once topics exist: the key →
    /// partition mapping of commands and events must never change.
    pub partitions: i32,
    /// How long a consumer-group member may stay silent before its partitions
    /// move to another; a join takes about half of it, so tests keep it short.
    pub session_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub results: String,
    pub updates: String,
}

impl Topics {
    pub fn all(&self) -> [&str; 4] {
        [&self.commands, &self.events, &self.results, &self.updates]
    }
}

/// How long a client waits on a metadata or admin answer before giving up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSettings {
    pub fn topics(&self) -> Topics {
        let p = &self.topic_prefix;
        Topics {
            commands: format!("{p}.commands"),
            events: format!("{p}.events"),
            results: format!("{p}.command-results"),
            updates: format!("{p}.updates"),
        }
    }

    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "tidings")
            .set("log_level", "3")
            // A missing topic is created by `tidings topics`, never implicitly
            // with the wrong partition count.
            .set("allow.auto.create.topics", "false");
        config
    }

    /// An idempotent producer tuned for latency: the broker drops a retried
    /// batch it already has, and batches leave after 1 ms at most.
    pub fn producer(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000");
        config.remove("allow.auto.create.topics");
        config
    }

    /// A consumer that commits nothing by itself. With a `group` it joins
    /// that consumer group; without, partitions are assigned by hand.
    pub fn consumer(&self, group: Option<&str>) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 5).max(100).to_string(),
            )
            .set("isolation.level", "read_uncommitted");
        // librdkafka needs a group id even to commit nothing; a hand-assigned
        // consumer gets one of its own that never joins.
        config.set("group.id", group.unwrap_or("tidings-unjoined"));
        config
    }

    /// Creates the four topics if they do not exist yet.
    pub async fn ensure_topics(&self) -> Result<(), rdkafka::error::KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let topics = self.topics();
        let new: Vec<NewTopic> = topics
            .all()
            .into_iter()
            .map(|name| NewTopic::new(name, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(rdkafka::error::KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "could not create topic");
                    })
                }
            }
        }
        Ok(())
    }
}
