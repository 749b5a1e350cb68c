//! Beyond capacity: password hashing is bounded to the cores, and what does
//! not fit in its short queue is refused with 503 `overloaded` before
//! anything is done. Measured on a real `tidings` process, from `/proc`.
//!
//! The registrations scenario of the bench (`scripts/bench`, `bench/`) runs
//! the same burst, its refusals retried, beside the raw argon2id rate.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Client, World};

/// The most a burst of registrations may add to the process's peak resident
/// memory (issue: 1,000 concurrent registrations once took it to 1.9 GB).
pub const CEILING_KIB: u64 = 300 * 1024;
/// Past this growth the burst kills the process: an unbounded server would
/// otherwise take the machine's memory with it.
const KILL_AT_KIB: u64 = 2 * CEILING_KIB;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), if the process
/// is still there.
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What a burst of concurrent registrations did to a process.
#[derive(Debug, Default)]
pub struct Burst {
    pub requests: usize,
    pub created: Vec<Duration>,
    pub overloaded: Vec<Duration>,
    /// 503 `overloaded` answers without `Retry-After`.
    pub without_retry_after: usize,
    /// Any other answer, or none: (status, body).
    pub others: Vec<(u16, String)>,
    pub rss_before_kib: u64,
    pub hwm_before_kib: u64,
    pub hwm_after_kib: u64,
    /// The largest resident size seen while the burst ran.
    pub rss_peak_seen_kib: u64,
    /// Killed for growing past [`KILL_AT_KIB`].
    pub killed: bool,
    pub wall: Duration,
}

impl Burst {
    /// Peak resident growth: the high-water mark after the burst over the
    /// resident size before it.
    pub fn growth_kib(&self) -> u64 {
        self.hwm_after_kib
            .max(self.rss_peak_seen_kib)
            .saturating_sub(self.rss_before_kib)
    }

    pub fn report(&self) -> String {
        format!(
            "{} concurrent registrations in {:.2} s: {} × 201, {} × 503 overloaded ({} without Retry-After), {} other\n\
             VmRSS before {:.1} MiB (VmHWM {:.1} MiB); VmHWM after {:.1} MiB; peak VmRSS seen {:.1} MiB\n\
             peak resident growth {:.1} MiB (ceiling {} MiB){}\n",
            self.requests,
            self.wall.as_secs_f64(),
            self.created.len(),
            self.overloaded.len(),
            self.without_retry_after,
            self.others.len(),
            self.rss_before_kib as f64 / 1024.0,
            self.hwm_before_kib as f64 / 1024.0,
            self.hwm_after_kib as f64 / 1024.0,
            self.rss_peak_seen_kib as f64 / 1024.0,
            self.growth_kib() as f64 / 1024.0,
            CEILING_KIB / 1024,
            if self.killed {
                "; KILLED past twice the ceiling"
            } else {
                ""
            },
        )
    }
}

/// Fires `count` registrations at once at the `tidings` process `pid`
/// serving `base`, watching its memory; kills it past twice the ceiling.
pub async fn registration_burst(base: &str, pid: u32, count: usize) -> Burst {
    let rss_before_kib = memory_kib(pid, "VmRSS").expect("the process runs");
    let hwm_before_kib = memory_kib(pid, "VmHWM").expect("the process runs");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let done = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut peak, mut killed) = (0, false);
            while !done.is_cancelled() {
                let Some(rss) = memory_kib(pid, "VmRSS") else {
                    break;
                };
                peak = peak.max(rss);
                if rss.saturating_sub(rss_before_kib) > KILL_AT_KIB {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    killed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (peak, killed)
        }
    });
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..count).map(|i| {
        let request = http.post(format!("{base}/api/auth/register")).json(&json!({
            "username": format!("burst{i}"),
            "email": format!("burst{i}@example.com"),
            "password": "correct horse battery",
        }));
        async move {
            let t = Instant::now();
            let reply = request.send().await;
            let reply = match reply {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body = response.text().await.unwrap_or_default();
                    Ok((status, retry_after, body))
                }
                Err(error) => Err(error.to_string()),
            };
            (reply, t.elapsed())
        }
    }))
    .await;
    let wall = started.elapsed();
    done.cancel();
    let (rss_peak_seen_kib, killed) = watch.await.unwrap();
    let mut burst = Burst {
        requests: count,
        rss_before_kib,
        hwm_before_kib,
        hwm_after_kib: memory_kib(pid, "VmHWM").unwrap_or(0),
        rss_peak_seen_kib,
        killed,
        wall,
        ..Burst::default()
    };
    for (reply, took) in replies {
        match reply {
            Ok((201, _, _)) => burst.created.push(took),
            Ok((503, retry_after, body))
                if serde_json::from_str::<Value>(&body)
                    .is_ok_and(|b| b["code"] == "overloaded") =>
            {
                burst.without_retry_after += usize::from(!retry_after);
                burst.overloaded.push(took);
            }
            Ok((status, _, body)) => burst.others.push((status, body)),
            Err(error) => burst.others.push((0, error)),
        }
    }
    burst
}

#[tokio::test]
async fn a_thousand_concurrent_registrations_stay_under_300_mb_and_the_rest_are_told_to_retry() {
    let world = World::new().await;
    let tidings = world.spawn("api,deciders,projector", &[]);
    let base = tidings.base_url();
    let client = Client::new(&base);
    // Warm up: group joins, connections, the first hashes' memory.
    for i in 0..4 {
        client.user(&format!("warm{i}")).await;
    }

    let burst = registration_burst(&base, tidings.pid(), 1_000).await;
    eprint!("{}", burst.report());
    assert!(!burst.killed, "{}", burst.report());
    assert!(
        burst.others.is_empty(),
        "answers other than 201 and 503 overloaded: {:?}",
        &burst.others[..burst.others.len().min(5)]
    );
    assert_eq!(burst.without_retry_after, 0, "{}", burst.report());
    assert!(!burst.created.is_empty(), "{}", burst.report());
    assert!(
        burst.growth_kib() < CEILING_KIB,
        "peak resident growth over the ceiling: {}",
        burst.report()
    );

    // Nothing half-done: an overloaded registration opened no account.
    let count = |t: &str| {
        world
            .events()
            .iter()
            .filter(|(_, _, e)| e.event_type == t)
            .count()
    };
    let registered = burst.created.len() + 4;
    assert_eq!(
        (count("account.opened"), count("account.registered")),
        (registered, registered)
    );
    tidings.kill();
    world.clean_up().await;
}
