//! A burst of concurrent registrations against a real `tidings` process:
//! how much its resident memory grows at peak, and how the burst is
//! answered — 201, or 503 `overloaded` with `Retry-After` for what does not
//! fit in password hashing's bound (one hash per core, a short queue).
//!
//! Memory is read from `/proc/<pid>/status`: `VmRSS` before the burst,
//! `VmHWM` (the high-water mark) after it, and `VmRSS` sampled every 10 ms
//! during it. The test `overload::a_thousand_concurrent_registrations_…`
//! asserts the same burst stays under 300 MB of growth.
//!
//! Run: `scripts/stack up && scripts/stack test-broker-up && cargo bench --bench register_burst`
//! Prints the figures and writes them to `bench/results/register_burst.txt`.
//! `BENCH_BURST` changes the number of registrations (default 1000).

#[path = "../tests/integration/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../tests/integration/overload.rs"]
#[allow(dead_code, unused_imports)]
mod overload;

use std::time::Duration;

use support::{Client, World};

fn percentiles(name: &str, mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return format!("{name:<24} n=0\n");
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "{name:<24} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms\n",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    )
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let world = World::new().await;
    let tidings = world.spawn("api,deciders,projector", &[]);
    let base = tidings.base_url();
    let client = Client::new(&base);
    for i in 0..4 {
        client.user(&format!("warm{i}")).await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let burst = overload::registration_burst(&base, tidings.pid(), count).await;
    let mut report = format!(
        "Tidings registration burst (broker {}, {cores} cores)\n{}",
        world.settings.kafka_brokers,
        burst.report()
    );
    report.push_str(&percentiles("201 created", burst.created.clone()));
    report.push_str(&percentiles("503 overloaded", burst.overloaded.clone()));
    for (status, body) in burst.others.iter().take(5) {
        report.push_str(&format!("other answer: {status} {body}\n"));
    }
    print!("{report}");
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/register_burst.txt", &report).unwrap();
    tidings.kill();
    world.clean_up().await;
}
