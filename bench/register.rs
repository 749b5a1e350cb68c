//! Register → 201 latency under a small load, against the real stack, with
//! the limits it is made of measured in the same run:
//!
//! - the raw broker round trip (produce one message, consume it back); a
//!   registration makes three command round trips (open the account, both
//!   claims at once, activate), each three broker hops (command, events read
//!   back, result);
//! - one argon2id hash, which it pays once.
//!
//! Run: `scripts/stack up && scripts/stack test-broker-up && cargo bench --bench register`
//! Prints the figures and writes them to `bench/results/register.txt`.
//! `BENCH_USERS` and `BENCH_CONCURRENCY` change the load. For a burst
//! beyond password hashing's capacity, see `bench/register_burst.rs`.

#[path = "../tests/integration/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use support::{Client, World, ALL_ROLES};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> (String, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    let line = format!(
        "{name:<34} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
    (line, p50)
}

async fn broker_round_trips(world: &World, count: usize) -> Vec<Duration> {
    // The pings go to topics of their own: the world's topics are checked
    // against their schemas when it is cleaned up, and a ping is no update.
    let mut kafka = world.settings.kafka();
    kafka.topic_prefix = format!("{}-pings", kafka.topic_prefix);
    kafka.ensure_topics().await.unwrap();
    let topic = kafka.topics().updates;
    let producer: FutureProducer = kafka.producer().create().unwrap();
    let consumer: StreamConsumer = kafka.consumer(None).create().unwrap();
    let (_, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, Offset::Offset(high))
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let payload = format!("ping {i}");
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key("bench")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        loop {
            let message = consumer.recv().await.unwrap();
            if message.payload() == Some(payload.as_bytes()) {
                break;
            }
        }
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() {
    let users: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    // Warm up: group joins, connections, first partition rebuilds.
    for i in 0..8 {
        assert_eq!(
            client
                .register(&format!("warm{i}"), &format!("warm{i}@example.com"))
                .await
                .status,
            201
        );
    }

    let started = Instant::now();
    let latencies: Vec<Duration> = stream::iter(0..users)
        .map(|i| {
            let client = client.clone();
            async move {
                let t = Instant::now();
                let (name, email) = (format!("user{i}"), format!("user{i}@example.com"));
                let mut reply = client.register(&name, &email).await;
                // Past password hashing's capacity (BENCH_CONCURRENCY above
                // 5 per core) a registration is refused with 503 overloaded
                // before anything is done; it is retried (a bounded number of
                // times), as a client would, and its latency counts from the
                // first try.
                for _ in 0..120 {
                    if reply.status != 503 || reply.body["code"] != "overloaded" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    reply = client.register(&name, &email).await;
                }
                assert_eq!(reply.status, 201, "{}", reply.body);
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();

    let raw = broker_round_trips(&world, 200).await;
    let mut hashes = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        tidings_api::auth::hash_password("correct horse battery".into())
            .await
            .unwrap();
        hashes.push(t.elapsed());
    }

    let (register_line, register_p50) = summary("register -> 201", latencies);
    let (raw_line, raw_p50) = summary("broker round trip (produce+consume)", raw);
    let (hash_line, hash_p50) = summary("argon2id hash", hashes);
    let report = format!(
        "Tidings register latency ({users} users, concurrency {concurrency}, broker {})\n{register_line}\n{raw_line}\n{hash_line}\nthroughput: {:.1} registrations/s\nregister p50 / broker round trip p50 = {:.1}x (a registration makes 3 sequential command round trips: open, both claims at once, activate; each is at least a produce+consume of the command, its events and its result)\nregister p50 - argon2 p50 = {:.2} ms\n",
        world.settings.kafka_brokers,
        users as f64 / wall.as_secs_f64(),
        register_p50.as_secs_f64() / raw_p50.as_secs_f64(),
        (register_p50.as_secs_f64() - hash_p50.as_secs_f64()) * 1e3,
    );
    print!("{report}");
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/register.txt", &report).unwrap();
    app.stop().await;
    world.clean_up().await;
}
