//! The limits Tidings is compared with, each measured in the same run on
//! the same cores: one broker produce (acks=all) and one PostgreSQL commit,
//! the broker's raw produce rate, a broker round trip, and raw argon2id
//! hashes per second. The WebSocket echo floor is in `ws`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::tidings::ADMIN_DB;

/// Partitions of the scratch topic: as many as Tidings' topics by default,
/// so the raw produce spreads as Tidings' commands do.
pub const SCRATCH_PARTITIONS: i32 = 4;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

fn client(broker: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("client.id", "tidings-bench")
        .set("log_level", "3");
    config
}

/// A producer configured as Tidings' own (`schemas/src/kafka.rs`):
/// idempotent, acks=all, batches leave after 1 ms at most.
pub fn producer(broker: &str) -> anyhow::Result<FutureProducer> {
    Ok(client(broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// A hand-assigned consumer configured as Tidings' own: a fetch waits
/// 10 ms at most.
fn consumer(broker: &str) -> anyhow::Result<StreamConsumer> {
    Ok(client(broker)
        .set("group.id", "tidings-bench-unjoined")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .create()?)
}

/// Creates `topic` unless it exists.
pub async fn ensure_topic(broker: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(broker).create()?;
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(anyhow!("creating {topic}: {code:?}")),
        }
    }
    Ok(())
}

/// A scratch topic on a broker and a scratch table in a database of its
/// own: what one write of Tidings costs at the least (one produce, one
/// commit), measured beside it.
pub struct Scratch {
    pub broker: String,
    pub topic: String,
    producer: FutureProducer,
    database: String,
    db: sqlx::PgPool,
}

impl Scratch {
    pub async fn create(broker: &str, prefix: &str) -> anyhow::Result<Scratch> {
        let topic = format!("{prefix}.bench-scratch");
        ensure_topic(broker, &topic, SCRATCH_PARTITIONS)
            .await
            .with_context(|| format!("the broker on {broker}"))?;
        let database = format!("{prefix}_scratch");
        let admin = sqlx::PgPool::connect(ADMIN_DB).await?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await?;
        admin.close().await;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("postgres://postgres@127.0.0.1:5432/{database}"))
            .await?;
        // A plain logged table, as Tidings' read models: its commit waits
        // for the WAL as theirs do.
        sqlx::query("CREATE TABLE scratch (id bigserial PRIMARY KEY, payload text NOT NULL)")
            .execute(&db)
            .await?;
        Ok(Scratch {
            broker: broker.to_owned(),
            topic,
            producer: producer(broker)?,
            database,
            db,
        })
    }

    pub async fn produce(&self, key: &str, payload: &str) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(payload),
                KAFKA_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// One insert of one row, committed (autocommit: one statement, one
    /// transaction).
    pub async fn commit(&self, payload: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO scratch (payload) VALUES ($1)")
            .bind(payload)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// `count` sequential (produce, commit) pairs: the time of each
    /// produce, each commit and each pair.
    pub async fn produce_then_commit(
        &self,
        count: usize,
        payload: &str,
    ) -> anyhow::Result<[Vec<Duration>; 3]> {
        let mut out = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..count {
            let started = Instant::now();
            self.produce(&format!("k{i}"), payload).await?;
            let produced = started.elapsed();
            self.commit(payload).await?;
            let both = started.elapsed();
            out[0].push(produced);
            out[1].push(both - produced);
            out[2].push(both);
        }
        Ok(out)
    }

    /// `count` round trips through the broker: produce a record, consume
    /// it back (a consumer configured as Tidings'): the cost of one log hop.
    pub async fn round_trips(&self, count: usize) -> anyhow::Result<Vec<Duration>> {
        let consumer = consumer(&self.broker)?;
        let (_, high) = consumer.fetch_watermarks(&self.topic, 0, KAFKA_TIMEOUT)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, 0, Offset::Offset(high))?;
        consumer.assign(&list)?;
        let mut stream = consumer.stream();
        let mut samples = Vec::with_capacity(count);
        for i in 0..count {
            let payload = format!("ping {i} {}", std::process::id());
            let started = Instant::now();
            self.producer
                .send(
                    FutureRecord::to(&self.topic)
                        .partition(0)
                        .key("ping")
                        .payload(&payload),
                    KAFKA_TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)?;
            loop {
                let message = tokio::time::timeout(KAFKA_TIMEOUT, stream.next())
                    .await
                    .map_err(|_| anyhow!("no record back within {KAFKA_TIMEOUT:?}"))?
                    .ok_or_else(|| anyhow!("the consumer ended"))??;
                if message.payload() == Some(payload.as_bytes()) {
                    break;
                }
            }
            samples.push(started.elapsed());
        }
        Ok(samples)
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        self.db.close().await;
        crate::tidings::drop_database(&self.database).await
    }
}

/// How many records at once the raw produce keeps in flight: enough to keep
/// librdkafka's batches full, bounded.
const RAW_PRODUCE_WINDOW: usize = 1024;

/// Records/s the broker accepts from one producer configured as Tidings',
/// `payloads` sent round-robin (keyed at random, as commands are keyed by
/// aggregate) for `duration`, [`RAW_PRODUCE_WINDOW`] in flight.
pub async fn raw_produce_rate(
    broker: &str,
    topic: &str,
    payloads: &[String],
    duration: Duration,
) -> anyhow::Result<f64> {
    let producer = producer(broker)?;
    let started = Instant::now();
    let deadline = started + duration;
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    futures_util::stream::iter(0usize..)
        .take_while(|_| futures_util::future::ready(Instant::now() < deadline))
        .for_each_concurrent(RAW_PRODUCE_WINDOW, |i| {
            let (producer, done, failed) = (&producer, &done, &failed);
            let payload = &payloads[i % payloads.len()];
            async move {
                let key = uuid::Uuid::new_v4().to_string();
                let sent = producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(payload),
                        KAFKA_TIMEOUT,
                    )
                    .await;
                match sent {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(anyhow!("{failed} raw produces failed"));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

/// Up to `count` records of `topic` whose payload contains `needle`, read
/// from the end of each partition: the command payloads Tidings wrote, to
/// produce the same bytes raw.
pub async fn capture(
    broker: &str,
    topic: &str,
    needle: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let broker = broker.to_owned();
    let topic = topic.to_owned();
    let needle = needle.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client(&broker)
            .set("group.id", "tidings-bench-unjoined")
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), KAFKA_TIMEOUT)?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)?;
            // The last few records of each partition (tansu's memory engine
            // reports a high watermark short of a batch's later records;
            // reading from a little before it is still inside the log).
            let from = (high - count as i64).max(low);
            if high > low {
                list.add_partition_offset(&topic, partition, Offset::Offset(from))?;
            }
        }
        consumer.assign(&list)?;
        let mut found = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while found.len() < count && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                if let Some(Ok(text)) = message.payload_view::<str>() {
                    if text.contains(&needle) {
                        found.push(text.to_owned());
                    }
                }
            }
        }
        Ok(found)
    })
    .await?
}

/// Raw argon2id hashes per second on `threads` OS threads for `duration`,
/// with the parameters Tidings uses (`api/src/auth.rs`: `Argon2::default()`,
/// m = 19456 KiB, t = 2, p = 1), each thread reusing one working memory as
/// Tidings does; and the time of each hash.
pub fn argon2_rate(threads: usize, duration: Duration) -> (f64, Vec<Duration>) {
    use argon2::{Argon2, Block};
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let argon = Argon2::default();
                let mut memory = vec![Block::default(); argon.params().block_count()];
                let mut out = [0u8; 32];
                let salt = format!("tidings-bench-salt-{t}");
                let mut times = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let one = Instant::now();
                    argon
                        .hash_password_into_with_memory(
                            b"correct horse battery",
                            salt.as_bytes(),
                            &mut out,
                            &mut memory,
                        )
                        .expect("valid argon2 parameters");
                    times.push(one.elapsed());
                }
                times
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let times: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    // Hashes that ended after the deadline are counted over the time they
    // really took.
    let elapsed = started.elapsed().as_secs_f64();
    (times.len() as f64 / elapsed, times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_hashes_are_counted() {
        let (rate, times) = argon2_rate(1, Duration::from_millis(200));
        assert!(rate > 0.0);
        assert!(!times.is_empty());
    }
}
