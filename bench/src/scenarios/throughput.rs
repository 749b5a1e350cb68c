//! Writes accepted per second at rising concurrency: closed loops of 1, 4,
//! 16, 64, 256 clients, then ×4 until p99 passes 50 ms, each client
//! `PATCH /api/profile` after the previous one's answer. Beside it, the raw produce rate of the
//! same payloads (the command records Tidings wrote, read back from its
//! commands topic) with one rdkafka producer configured as Tidings'.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::{refused_note, Ctx, Replies};
use crate::procfs::CpuWatch;
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;
use crate::tidings::Engine;
use crate::ws::marker;

/// The p99 past which rising concurrency stops (the latency target).
const P99_LIMIT_MS: f64 = 50.0;
/// Markers of this scenario start here, clear of the other scenarios'.
const MARKERS: usize = 2_000_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub concurrency: usize,
    pub per_second: f64,
    pub latency: Summary,
    pub refused: super::Refused,
    pub tidings_cpu_pct: f64,
    pub broker_cpu_pct: f64,
    pub generator_bound: bool,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let engine = ctx.target.engine;
    let mut scenario = Scenario::new(
        &format!("throughput-{}", engine.label()),
        &format!("Writes accepted/s, {} engine", engine.label()),
    );
    let plan = &ctx.plan;
    let counter = Arc::new(AtomicUsize::new(MARKERS));
    let mut steps: Vec<Step> = Vec::new();
    let mut notes = Vec::new();
    let mut concurrency = plan.concurrency.first().copied().unwrap_or(1);
    let mut listed = plan.concurrency.iter().copied().skip(1);
    loop {
        let replies = Arc::new(Replies::default());
        let cpu = CpuWatch::start(&[
            ("tidings", ctx.target.pid),
            ("broker", ctx.target.broker_pid),
        ]);
        let started = Instant::now();
        let deadline = started + plan.step;
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (api, users) = (ctx.target.api.clone(), ctx.users.clone());
                let (counter, replies) = (counter.clone(), replies.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let k = counter.fetch_add(1, Ordering::Relaxed);
                        let user = &users[k % users.len()];
                        let t = Instant::now();
                        let answer = api.write(&user.token, &marker(k)).await;
                        replies.push(t.elapsed().as_secs_f64() * 1e3, answer);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu.stop();
        let (mut accepted, refused) = replies.split();
        let step = Step {
            concurrency,
            per_second: accepted.len() as f64 / elapsed,
            latency: Summary::of_ms(&mut accepted).brief(),
            refused,
            tidings_cpu_pct: cpu.pct("tidings").unwrap_or(0.0),
            broker_cpu_pct: cpu.pct("broker").unwrap_or(0.0),
            generator_bound: cpu.generator_bound(),
        };
        eprintln!(
            "  {} engine, concurrency {concurrency}: {:.0} writes/s, p50 {:.1} ms, p99 {:.1} ms ({})",
            engine.label(),
            step.per_second,
            step.latency.p50,
            step.latency.p99,
            cpu.describe()
        );
        if let Some(note) = refused_note(&step.refused) {
            notes.push(format!("concurrency {concurrency}: {note}"));
        }
        if step.generator_bound {
            notes.push(format!("concurrency {concurrency}: {}", cpu.describe()));
        }
        // The listed steps all run, so that the curve shows how Tidings
        // scales even when one client is already past the limit; past them,
        // concurrency rises only while p99 stays within it.
        let last_listed = plan.concurrency.last().copied().unwrap_or(1);
        let over = step.latency.p99 > P99_LIMIT_MS;
        let dead = step.latency.n == 0;
        steps.push(step);
        if dead || (over && concurrency >= last_listed) {
            break;
        }
        concurrency = match listed.next() {
            Some(next) => next,
            None => concurrency * 4,
        };
        if concurrency > plan.max_concurrency {
            notes.push(format!(
                "p99 stayed ≤ {P99_LIMIT_MS} ms up to the largest concurrency tried ({})",
                plan.max_concurrency
            ));
            break;
        }
    }

    // The same payloads, raw: the command records this scenario wrote.
    let commands = format!("{}.commands", ctx.target.topic_prefix);
    let mut payloads = crate::limits::capture(&ctx.target.broker, &commands, "bench-", 64).await?;
    if payloads.is_empty() {
        notes.push("no command record could be read back: the raw produce sends frames of 600 bytes instead".into());
        payloads.push(crate::ws::payload(0, 600));
    }
    let raw = crate::limits::raw_produce_rate(
        &ctx.target.broker,
        &ctx.scratch.topic,
        &payloads,
        plan.raw_produce,
    )
    .await?;
    let payload_bytes = payloads.iter().map(String::len).sum::<usize>() / payloads.len();

    let within: Vec<&Step> = steps
        .iter()
        .filter(|s| s.latency.p99 <= P99_LIMIT_MS && s.latency.n > 0)
        .collect();
    let best = within
        .iter()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
        .copied();
    let peak = steps
        .iter()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let target = match engine {
        Engine::Memory => 10_000.0,
        Engine::Durable => 3_000.0,
    };
    let raw_name = "raw produce, same payloads";
    match best {
        Some(best) => scenario.rows.push(
            Row::new(
                format!(
                    "writes/s with p99 ≤ 50 ms (best: concurrency {})",
                    best.concurrency
                ),
                best.per_second,
                "/s",
            )
            .against(raw_name, raw)
            .target(
                Bound::AtLeast,
                target,
                format!("≥ {} /s", crate::report::figure(target)),
            ),
        ),
        // The target row stays in the table, at none.
        None => {
            scenario.rows.push(
                Row::new("writes/s with p99 ≤ 50 ms (no step kept it)", 0.0, "/s")
                    .against(raw_name, raw)
                    .target(
                        Bound::AtLeast,
                        target,
                        format!("≥ {} /s", crate::report::figure(target)),
                    ),
            );
            notes.push("no step kept p99 ≤ 50 ms, even one client".into());
        }
    }
    if let Some(peak) = peak {
        scenario.rows.push(
            Row::new(
                format!("writes/s at any p99 (concurrency {})", peak.concurrency),
                peak.per_second,
                "/s",
            )
            .against(raw_name, raw),
        );
    }
    notes.push(format!(
        "each write is at least three records (command, event, update; its outcome crosses no topic when the command came from the same process) and a PostgreSQL transaction; the raw produce sends one record of {payload_bytes} bytes per write with up to 1,024 in flight"
    ));
    scenario.notes = notes;
    if let Ok(mut plots) = ctx.plots.lock() {
        plots.throughput(engine.label(), &steps, raw);
    }
    scenario.details = json!({
        "engine": engine.label(), "steps": steps, "raw_produce_per_second": raw,
        "payload_bytes": payload_bytes, "payloads_captured": payloads.len(),
    });
    Ok(scenario)
}
