//! The scenarios, one file each, and what they share: the context of a run
//! (the Tidings under test, its users, the scratch topic and table) and the
//! open-loop sender.

pub mod fanout;
pub mod gateways;
pub mod idle;
pub mod registrations;
pub mod rooms;
pub mod social;
pub mod sockets;
pub mod throughput;
pub mod unloaded;
pub mod write_to_frame;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::limits::Scratch;
use crate::plan::Plan;
use crate::plots::Plots;
use crate::tidings::{Target, User};
use crate::ws::{Protocol, Sockets, Tracker};

/// What every scenario of one Tidings runs with.
pub struct Ctx {
    pub plan: Plan,
    pub target: Target,
    /// Users registered before the scenarios.
    pub users: Arc<Vec<User>>,
    pub scratch: Scratch,
    /// The installed npm peers, or why they are not there.
    pub peers: Result<PathBuf, String>,
    /// A short name of this run, in the usernames it registers.
    pub run: String,
    /// The run's id: what a scenario names its own databases, topics and
    /// Redis keys after (`tidings_bench_<run_id>_…`, removed if the run is
    /// interrupted).
    pub run_id: String,
    /// The `tidings` binary, when the bench starts Tidings itself.
    pub tidings_bin: Option<PathBuf>,
    /// The memory-engine broker, if one listens (and the bench starts
    /// Tidings itself).
    pub memory_kafka: Option<String>,
    pub plots: Mutex<Plots>,
}

impl Ctx {
    /// One socket per token in `tokens` (cycled to `count`), each holding a
    /// `user:{id}` subscription.
    pub async fn tidings_sockets(
        &self,
        tokens: &[&str],
        count: usize,
        tracker: Option<Arc<Tracker>>,
    ) -> Sockets {
        let urls = (0..count)
            .map(|i| self.target.api.ws_url(tokens[i % tokens.len()]))
            .collect();
        Sockets::open(
            Protocol::Tidings,
            urls,
            self.plan.connect_concurrency,
            tracker,
        )
        .await
    }
}

/// Sends at once at most this many: an open-loop generator that falls this
/// far behind is measuring itself; what it skips is counted.
const MAX_IN_FLIGHT: usize = 4_096;

/// What an open-loop run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OpenLoop {
    pub due: usize,
    pub skipped: usize,
    /// How far behind its schedule the generator fell at worst, ms.
    pub behind_max_ms: f64,
    pub seconds: f64,
}

/// Calls `send(k, due)` for `k` in `0..count`, `rate` per second from now,
/// each in a task of its own, whether or not the previous ones have
/// finished (open loop: a slow server does not slow the arrivals down).
/// Waits for every send to finish.
pub async fn open_loop<F, Fut>(rate: u32, count: usize, mut send: F) -> OpenLoop
where
    F: FnMut(usize, std::time::Instant) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut run = OpenLoop {
        due: count,
        ..OpenLoop::default()
    };
    let interval = 1.0 / f64::from(rate.max(1));
    for k in 0..count {
        let due = started + Duration::from_secs_f64(k as f64 * interval);
        tokio::time::sleep_until(due).await;
        let behind = Instant::now().saturating_duration_since(due);
        run.behind_max_ms = run.behind_max_ms.max(behind.as_secs_f64() * 1e3);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = send(k, due.into_std());
                tasks.spawn(async move {
                    future.await;
                    drop(permit);
                });
            }
            Err(_) => run.skipped += 1,
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    run.seconds = started.elapsed().as_secs_f64();
    run
}

/// Waits until `done()` holds or `within` has passed.
pub async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Answers of writes: latency (ms, from when each was due) and whether it
/// was accepted, or what was answered instead.
#[derive(Default)]
pub struct Replies(Mutex<Vec<(f64, Result<(), String>)>>);

/// How many writes got each answer that was not an acceptance.
pub type Refused = std::collections::BTreeMap<String, usize>;

impl Replies {
    pub fn push(&self, ms: f64, answer: Result<(), String>) {
        if let Ok(mut replies) = self.0.lock() {
            replies.push((ms, answer));
        }
    }

    /// Latencies of the accepted writes, and the other answers counted.
    pub fn split(&self) -> (Vec<f64>, Refused) {
        let replies = std::mem::take(&mut *self.0.lock().expect("no panic holds it"));
        let mut accepted = Vec::new();
        let mut others = Refused::new();
        for (ms, answer) in replies {
            match answer {
                Ok(()) => accepted.push(ms),
                Err(what) => *others.entry(what).or_default() += 1,
            }
        }
        (accepted, others)
    }
}

/// A note for anything but a clean run of writes.
pub fn refused_note(others: &Refused) -> Option<String> {
    (!others.is_empty()).then(|| {
        let parts: Vec<String> = others
            .iter()
            .map(|(what, n)| format!("{n} × {what}"))
            .collect();
        format!("writes not accepted: {}", parts.join(", "))
    })
}
