//! Registrations: 1,000 at once (each retried after its `Retry-After` when
//! refused with 503 `overloaded`, as clients are told to), how many per
//! second get through, and how much Tidings' resident memory grows at peak;
//! beside the raw argon2id hashes per second of the same cores with the
//! same parameters. What `bench/register_burst.rs` measured once, with the
//! retries that finish the burst.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Ctx;
use crate::procfs::{self, CpuWatch};
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;

/// The ceiling of peak resident growth (the issue that bounded password
/// hashing: 1,000 registrations once took the process to 1.9 GB).
const CEILING_MIB: f64 = 300.0;
/// Past this growth the bench kills Tidings: an unbounded server would
/// otherwise take the shared machine's memory with it.
const KILL_AT_MIB: f64 = 2_048.0;
/// How often resident memory is sampled during the burst.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new("registrations", "Registrations, all at once");
    let plan = &ctx.plan;
    let pid = ctx.target.pid;
    let cores = procfs::cores();

    // The raw rate first, Tidings idle: every core hashing.
    let hashing = plan.argon2;
    let (raw, hashes) =
        tokio::task::spawn_blocking(move || crate::limits::argon2_rate(cores, hashing)).await?;

    let peak_reset = procfs::reset_peak(pid);
    let before = procfs::rss_mib(pid).unwrap_or(0.0);
    let done = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut peak, mut killed) = (0.0_f64, false);
            while !done.load(Ordering::Relaxed) {
                let Some(rss) = procfs::rss_mib(pid) else {
                    break;
                };
                peak = peak.max(rss);
                if rss - before > KILL_AT_MIB {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed = true;
                    break;
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            (peak, killed)
        }
    });
    let refusals = Arc::new(AtomicU64::new(0));
    let cpu = CpuWatch::start(&[("tidings", pid), ("broker", ctx.target.broker_pid)]);
    let started = Instant::now();
    let results = futures_util::future::join_all((0..plan.burst).map(|i| {
        let api = ctx.target.api.clone();
        let name = format!("r{}_{i}", ctx.run);
        let refusals = refusals.clone();
        async move {
            let registration = api.register(&name).await?;
            refusals.fetch_add(registration.refused as u64, Ordering::Relaxed);
            anyhow::Ok(registration.took)
        }
    }))
    .await;
    let wall = started.elapsed();
    let cpu = cpu.stop();
    done.store(true, Ordering::Relaxed);
    let (peak_seen, killed) = watch.await?;
    let hwm = procfs::memory_kib(pid, "VmHWM").map_or(0.0, |k| k as f64 / 1024.0);
    // With the peak reset the high-water mark belongs to the burst; without
    // it (an old kernel) only the samples do.
    let peak = if peak_reset {
        hwm.max(peak_seen)
    } else {
        peak_seen
    };
    let growth = peak - before;
    if killed {
        anyhow::bail!("Tidings grew past {KILL_AT_MIB} MiB and was killed");
    }
    let mut took = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(t) => took.push(t),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let per_second = took.len() as f64 / wall.as_secs_f64();
    let latency = Summary::of(&took);
    scenario.rows.push(
        Row::new(
            format!("registrations/s, {} at once", plan.burst),
            per_second,
            "/s",
        )
        .against(format!("raw argon2id hashes/s, {cores} threads"), raw)
        .ratio_target(Bound::AtLeast, 0.8, "≥ 80 % of raw"),
    );
    scenario.rows.push(
        Row::new("peak RSS growth during the burst", growth, "MiB").target(
            Bound::AtMost,
            CEILING_MIB,
            "< 300 MiB",
        ),
    );
    scenario.notes.push(format!(
        "{} registered in {:.1} s ({} refusals with 503 overloaded, retried after Retry-After), {} failed; 201 p50 {:.0} ms, p99 {:.0} ms from the first try; one hash p50 {:.1} ms; RSS {before:.0} MiB before, peak {peak:.0} MiB",
        took.len(),
        wall.as_secs_f64(),
        refusals.load(Ordering::Relaxed),
        failures.len(),
        latency.p50,
        latency.p99,
        Summary::of(&hashes).p50,
    ));
    if let Some(first) = failures.first() {
        scenario.notes.push(format!("first failure: {first}"));
    }
    scenario.notes.push(cpu.describe());
    scenario.details = json!({
        "burst": plan.burst, "registered": took.len(), "failed": failures.len(),
        "refusals": refusals.load(Ordering::Relaxed), "seconds": wall.as_secs_f64(),
        "per_second": per_second, "latency": latency.brief(),
        "raw_argon2_per_second": raw, "argon2_hash": Summary::of(&hashes).brief(),
        "rss_before_mib": before, "peak_mib": peak, "peak_seen_mib": peak_seen,
        "peak_reset": peak_reset, "growth_mib": growth, "cpu": cpu,
    });
    Ok(scenario)
}
