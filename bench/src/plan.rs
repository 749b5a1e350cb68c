//! The command line, and the plan of a run: how long and how large each
//! scenario is, for a full run or a quick one (`--quick`, what CI runs to
//! prove the bench still works: seconds per scenario, small counts).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::tidings::Engine;

/// The scenarios, in the order they run. Write → frame goes last: its
/// open-loop rate may be past what Tidings can take, and what an overload
/// leaves behind must not be what the others measure (gateways runs Tidings
/// processes of its own, stopped when it ends; it goes before fan-out, whose
/// 10,000 subscriptions leave the other Tidings holding many PostgreSQL
/// connections).
pub const SCENARIOS: [&str; 10] = [
    "unloaded",
    "throughput",
    "idle",
    "social",
    "rooms",
    "registrations",
    "sockets",
    "gateways",
    "fanout",
    "write-to-frame",
];

/// Runs the benchmark suite of Tidings against a running stack: each
/// scenario beside the limit it is compared with, measured in the same run.
/// Prints a table and writes results.json, results.md and PNG plots.
///
/// Either give `--tidings-bin` (the bench starts a `tidings serve` of its
/// own per broker engine, with its own database, topic and Redis prefixes,
/// and removes them at the end; `scripts/bench` does this), or `--base` of
/// a Tidings that already runs.
#[derive(Debug, Parser)]
#[command(name = "tidings-bench", version)]
pub struct Args {
    /// Seconds per scenario and small counts: proves the bench works,
    /// says nothing about speed.
    #[arg(long)]
    pub quick: bool,
    /// The `tidings` binary to start (all roles, 127.0.0.1, a free port).
    #[arg(long, conflicts_with = "base")]
    pub tidings_bin: Option<PathBuf>,
    /// A running Tidings (`http://127.0.0.1:8080`) instead.
    #[arg(long)]
    pub base: Option<String>,
    /// The engine of the broker the running Tidings of `--base` uses.
    #[arg(long, value_enum, default_value = "durable", requires = "base")]
    pub engine: Engine,
    /// The topic prefix of the running Tidings of `--base` (its command
    /// payloads are read there to produce the same bytes raw).
    #[arg(long, default_value = "tidings", requires = "base")]
    pub topic_prefix: String,
    /// The pid of the Tidings under test (default: found in /proc, by the
    /// name `tidings` and its port).
    #[arg(long)]
    pub tidings_pid: Option<u32>,
    /// The pid of the durable broker (default: the process named `tansu`
    /// that listens on `--kafka`).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// The durable broker (tansu, SQLite engine) of `scripts/stack`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// The memory-engine broker (tansu, `scripts/stack test-broker-up`) for
    /// the memory-engine throughput; `none` leaves that scenario out.
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub memory_kafka: String,
    /// Where the npm peers are installed.
    #[arg(long, default_value = "bench/peers")]
    pub peers: PathBuf,
    /// Where results go (default `bench/results`, `bench/results/quick`
    /// with `--quick`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only these scenarios (comma-separated): unloaded, throughput, idle,
    /// social, rooms, registrations, sockets, fanout, gateways,
    /// write-to-frame.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Idle WebSockets per server in the memory scenario.
    #[arg(long)]
    pub sockets: Option<usize>,
    /// Rounds of opening and closing them.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Sockets of the one channel in the fan-out scenario.
    #[arg(long)]
    pub fanout_sockets: Option<usize>,
    /// Writes (broadcasts) per second in the fan-out scenario.
    #[arg(long)]
    pub fanout_rate: Option<u32>,
    /// Messages per second (in all) in the gateways scenario.
    #[arg(long)]
    pub gateway_rate: Option<u32>,
    /// Sockets (half on each gateway) in the gateways scenario.
    #[arg(long)]
    pub gateway_sockets: Option<usize>,
    /// Rooms of the gateways scenario's spread layout (each takes the
    /// rate over the rooms: one room's messages are decided one after
    /// another by its aggregate).
    #[arg(long)]
    pub gateway_rooms: Option<usize>,
    /// `TIDINGS_KAFKA_FETCH_WAIT_MS` of the gateways scenario's processes
    /// (default: Tidings' own).
    #[arg(long)]
    pub gateway_fetch_wait_ms: Option<u32>,
    /// Concurrent registrations in the registrations scenario.
    #[arg(long)]
    pub burst: Option<usize>,
    /// Seconds each load step runs (open-loop rates, concurrency steps).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Rewrites the results block of this README (between its markers)
    /// with the table and plots of this run.
    #[arg(long)]
    pub readme: Option<PathBuf>,
    /// The commit measured, written with the results.
    #[arg(long, env = "BENCH_COMMIT")]
    pub commit: Option<String>,
}

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Users registered before the scenarios: writes are spread over them.
    pub users: usize,
    pub register_concurrency: usize,
    pub latency_rates: Vec<u32>,
    pub step: Duration,
    pub unloaded_writes: usize,
    pub unloaded_registrations: usize,
    pub concurrency: Vec<usize>,
    pub max_concurrency: usize,
    pub raw_produce: Duration,
    pub burst: usize,
    pub argon2: Duration,
    pub idle: Duration,
    pub idle_settle: Duration,
    pub sockets: usize,
    pub rounds: usize,
    pub close_settle: Duration,
    pub connect_concurrency: usize,
    pub fanout_sockets: usize,
    pub fanout_rate: u32,
    /// Open-loop message rates to one room, rising until one is not held.
    pub room_rates: Vec<u32>,
    /// Gateways: messages per second in all, over `gateway_writers`
    /// writers, to `gateway_sockets` sockets (half on each gateway); the
    /// spread variant over `gateway_rooms` rooms.
    pub gateway_rate: u32,
    pub gateway_sockets: usize,
    pub gateway_rooms: usize,
    pub gateway_writers: usize,
    /// Users whose sockets read the rooms (each opens several).
    pub gateway_readers: usize,
    /// Whether gateways also runs on the memory-engine broker.
    pub gateway_memory: bool,
    pub gateway_fetch_wait_ms: Option<u32>,
    /// How long deliveries still in flight are waited for after a load.
    pub drain: Duration,
    /// How long the bench waits at most, before each scenario, for Tidings
    /// to work off what the previous one left (an overload leaves a
    /// backlog of commands in the log).
    pub settle: Duration,
}

impl Plan {
    pub fn new(args: &Args) -> Plan {
        let mut plan = if args.quick {
            Plan {
                quick: true,
                users: 12,
                register_concurrency: 6,
                latency_rates: vec![20, 100],
                step: Duration::from_secs(2),
                unloaded_writes: 30,
                unloaded_registrations: 3,
                concurrency: vec![1, 4, 16],
                max_concurrency: 16,
                raw_produce: Duration::from_secs(1),
                burst: 40,
                argon2: Duration::from_secs(1),
                idle: Duration::from_secs(2),
                idle_settle: Duration::from_secs(1),
                sockets: 300,
                rounds: 2,
                close_settle: Duration::from_secs(1),
                connect_concurrency: 64,
                fanout_sockets: 100,
                fanout_rate: 10,
                room_rates: vec![20],
                gateway_rate: 50,
                gateway_sockets: 20,
                gateway_rooms: 2,
                gateway_writers: 2,
                gateway_readers: 2,
                gateway_memory: false,
                gateway_fetch_wait_ms: None,
                drain: Duration::from_secs(5),
                settle: Duration::from_secs(15),
            }
        } else {
            Plan {
                quick: false,
                users: 200,
                register_concurrency: 8,
                latency_rates: vec![100, 1_000],
                step: Duration::from_secs(10),
                unloaded_writes: 300,
                unloaded_registrations: 20,
                concurrency: vec![1, 4, 16, 64, 256],
                // Past this the generator's own sockets and tasks, not
                // Tidings, would be what is measured on 2 cores.
                max_concurrency: 4_096,
                raw_produce: Duration::from_secs(5),
                burst: 1_000,
                argon2: Duration::from_secs(5),
                idle: Duration::from_secs(10),
                idle_settle: Duration::from_secs(5),
                sockets: 10_000,
                rounds: 3,
                close_settle: Duration::from_secs(5),
                connect_concurrency: 128,
                fanout_sockets: 10_000,
                fanout_rate: 10,
                room_rates: vec![25, 50, 60, 70, 80, 90, 100, 150, 200, 400],
                gateway_rate: 1_000,
                gateway_sockets: 100,
                gateway_rooms: 10,
                gateway_writers: 8,
                gateway_readers: 10,
                gateway_memory: true,
                gateway_fetch_wait_ms: None,
                drain: Duration::from_secs(10),
                settle: Duration::from_secs(180),
            }
        };
        if let Some(n) = args.sockets {
            plan.sockets = n;
        }
        if let Some(n) = args.rounds {
            plan.rounds = n.max(1);
        }
        if let Some(n) = args.fanout_sockets {
            plan.fanout_sockets = n;
        }
        if let Some(n) = args.fanout_rate {
            plan.fanout_rate = n.max(1);
        }
        if let Some(n) = args.gateway_rate {
            plan.gateway_rate = n.max(1);
        }
        if let Some(n) = args.gateway_sockets {
            plan.gateway_sockets = n.max(2);
        }
        if let Some(n) = args.gateway_rooms {
            plan.gateway_rooms = n.max(2);
        }
        plan.gateway_fetch_wait_ms = args.gateway_fetch_wait_ms;
        if let Some(n) = args.burst {
            plan.burst = n;
        }
        if let Some(s) = args.seconds {
            plan.step = Duration::from_secs_f64(s.max(0.5));
        }
        plan
    }

    /// Whether `scenario` is to run.
    pub fn runs(args: &Args, scenario: &str) -> bool {
        args.only.is_empty() || args.only.iter().any(|s| s == scenario)
    }

    /// The open-loop rate the latency targets are held at.
    pub fn target_rate(&self) -> u32 {
        self.latency_rates.iter().copied().max().unwrap_or(0)
    }

    /// What the run was, for the report.
    pub fn describe(&self) -> Vec<String> {
        vec![
            format!(
                "{} users registered first, writes spread over them; {:.0} s per load step",
                self.users,
                self.step.as_secs_f64()
            ),
            format!(
                "open-loop write rates {:?}/s; closed-loop concurrency {:?}, then ×4 up to {} while p99 ≤ 50 ms",
                self.latency_rates, self.concurrency, self.max_concurrency
            ),
            format!(
                "{} concurrent registrations; {} idle sockets per server × {} rounds; fan-out to {} sockets of one room at {} messages/s",
                self.burst, self.sockets, self.rounds, self.fanout_sockets, self.fanout_rate
            ),
            format!("messages to one room at {:?}/s, rising while reply p99 ≤ 50 ms", self.room_rates),
            format!(
                "gateways: {} messages/s over {} writers to {} sockets on two realtime processes, one room then {} rooms{}",
                self.gateway_rate,
                self.gateway_writers,
                self.gateway_sockets,
                self.gateway_rooms,
                if self.gateway_memory { ", durable and memory engines" } else { "" }
            ),
        ]
    }
}
