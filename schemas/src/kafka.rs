//! Topic names and Kafka client settings shared by every role.
//!
//! The four topics of API.md share one prefix (`tidings` by default), so a
//! test or a second deployment on the same broker takes its own prefix and
//! sees nothing of the others. Commands and events have the same partition
//! count and the same key, which puts an aggregate's commands and events on
//! the same partition number: the single-writer rule rests on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, Rebalance};
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
    /// How long the broker may hold a fetch of a consumer that follows a
    /// topic. A record crossing a topic waits about this long on tansu; see
    /// [`KafkaSettings::consumer`].
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u32,
    /// This process's `group.instance.id` in every group it joins (static
    /// membership): restarted under the same id, it takes its partitions
    /// back at once. tansu 0.6 expires a dead member only inside a later
    /// join, sync or heartbeat of another, and a quick rejoin under a new id
    /// can form a group whose members own nothing.
    #[serde(default)]
    pub instance_id: Option<String>,
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

fn default_fetch_wait_ms() -> u32 {
    500
}

/// The fetch wait of a consumer that reads on purpose, to an end it knows
/// (a rebuild, reading back one's own writes): it parks no fetch for long,
/// and its reads are on a write's path.
pub const READING_FETCH_WAIT_MS: u32 = 10;

/// The shortest session timeout under which members join with their
/// `group.instance.id`. tansu 0.6 holds a static member's join and its sync
/// 3 s each, then checks its session (counted from the join) at the first
/// heartbeat: with a shorter timeout the member expires there, rejoins, and
/// never settles. Below it, members join without (dynamic membership).
pub const STATIC_MEMBERSHIP_MIN_SESSION_MS: u32 = 8_000;

/// How long a client waits on a metadata or admin answer before giving up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a producer holds a record for a batch. Not 0: an idempotent
/// producer has at most 5 requests in flight, and while records wait for a
/// free slot librdkafka wakes its broker thread every `linger.ms` to look
/// again. At 0 that thread spun, about 40 % of Tidings' CPU at a thousand
/// writes per second; at 0.2 ms it wakes at most 5,000 times a second, and a
/// lone record waits 0.2 ms.
pub const LINGER_MS: &str = "0.2";

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
    /// batch it already has, and a record leaves after [`LINGER_MS`] at most.
    pub fn producer(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", LINGER_MS)
            .set("message.timeout.ms", "30000");
        config.remove("allow.auto.create.topics");
        config
    }

    /// A consumer that commits nothing by itself. With a `group` it joins
    /// that consumer group; without, partitions are assigned by hand. It
    /// follows its topic with [`KafkaSettings::fetch_wait_ms`]; one that
    /// reads to a known end sets [`READING_FETCH_WAIT_MS`] instead.
    pub fn consumer(&self, group: Option<&str>) -> ClientConfig {
        let mut config = self.client();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval_ms().to_string(),
            )
            .set("isolation.level", "read_uncommitted");
        // librdkafka needs a group id even to commit nothing; a hand-assigned
        // consumer gets one of its own that never joins.
        config.set("group.id", group.unwrap_or("tidings-unjoined"));
        if let (Some(_), Some(id)) = (group, &self.instance_id) {
            if self.static_membership() {
                config.set("group.instance.id", id);
            }
        }
        config
    }

    /// A static member heartbeats often: tansu 0.6 admits it only after two
    /// 3 s pauses (join, sync) and checks its session, counted from the
    /// join, at the first heartbeat that follows.
    fn heartbeat_interval_ms(&self) -> u32 {
        if self.static_membership() {
            (self.session_timeout_ms / 20).clamp(100, 1_000)
        } else {
            (self.session_timeout_ms / 5).max(100)
        }
    }

    /// Whether group members join under [`KafkaSettings::instance_id`].
    pub fn static_membership(&self) -> bool {
        self.instance_id.is_some() && self.session_timeout_ms >= STATIC_MEMBERSHIP_MIN_SESSION_MS
    }

    /// Checks that the four topics exist with the configured partition
    /// count: commands and events must map a key to the same partition, now
    /// and after every restart, or the single-writer rule breaks. It blocks
    /// on metadata requests: call it off the async workers (`spawn_blocking`).
    pub fn check_topics(&self) -> Result<(), TopicsError> {
        let consumer: BaseConsumer = self
            .client()
            .create()
            .map_err(|e| TopicsError::Unavailable(e.to_string()))?;
        for topic in self.topics().all() {
            let metadata = consumer
                .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
                .map_err(|e| TopicsError::Unavailable(e.to_string()))?;
            let found = metadata.topics().iter().find(|t| t.name() == topic);
            let partitions = match found {
                Some(t) if t.error().is_none() => t.partitions().len() as i32,
                _ => return Err(TopicsError::Missing(topic.to_owned())),
            };
            if partitions == 0 {
                return Err(TopicsError::Missing(topic.to_owned()));
            }
            if partitions != self.partitions {
                return Err(TopicsError::PartitionCount {
                    topic: topic.to_owned(),
                    found: partitions,
                    configured: self.partitions,
                });
            }
        }
        Ok(())
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

/// Why the topics cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("topic {0} does not exist: create the topics with `tidings topics`")]
    Missing(String),
    #[error("topic {topic} has {found} partitions but TIDINGS_PARTITIONS is {configured}: a key would move to another partition and break the single-writer rule; set TIDINGS_PARTITIONS={found} (the count is fixed once the topics exist)")]
    PartitionCount {
        topic: String,
        found: i32,
        configured: i32,
    },
    #[error("the brokers did not answer a metadata request: {0}")]
    Unavailable(String),
}

/// Assigns `consumer` every partition of `topic` at its end as of now (not as
/// of its first fetch: a record written in between is not skipped). It
/// blocks on metadata calls: run it on the blocking pool.
pub fn assign_at_end<C: rdkafka::consumer::Consumer>(
    consumer: &C,
    topic: &str,
    partitions: i32,
) -> rdkafka::error::KafkaResult<()> {
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT)?;
        assignment.add_partition_offset(topic, partition, rdkafka::Offset::Offset(high))?;
    }
    consumer.assign(&assignment)
}

/// How many partitions a consumer-group member owns, kept from its rebalance
/// callbacks, and which of them it halted at an event it cannot read:
/// `/ready` says not ready while a role that should own some owns none, or
/// has halted one. Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    count: Arc<AtomicUsize>,
    halted: Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
}

impl Owned {
    /// Notes a rebalance (eager assignment: an assignment replaces all, a
    /// revocation takes all).
    pub fn rebalanced(&self, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => self.count.store(list.count(), Ordering::Relaxed),
            Rebalance::Revoke(_) => self.clear(),
            Rebalance::Error(_) => {}
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// A role that stops owns nothing any more.
    pub fn clear(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.halted.lock().expect("halted lock").clear();
    }

    /// Notes that the role stopped at an unreadable event of `partition`.
    pub fn halt(&self, partition: i32) {
        self.halted.lock().expect("halted lock").insert(partition);
    }

    /// The partitions the role stopped at an unreadable event.
    pub fn halted(&self) -> Vec<i32> {
        self.halted
            .lock()
            .expect("halted lock")
            .iter()
            .copied()
            .collect()
    }
}
