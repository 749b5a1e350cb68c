//! Write reply latency, unloaded: one client, sequential `PATCH
//! /api/profile`, beside the least a durable write can cost here — one
//! broker produce (acks=all) plus one PostgreSQL commit, sequential, to a
//! scratch topic and table. Also one client's registrations, beside one
//! argon2id hash plus three such writes (a registration is three command
//! round trips), and the broker round trip as a note.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::Ctx;
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;
use crate::ws::marker;

/// Writes before the measured ones: connections, caches, the first batch.
const WARM_UP: usize = 10;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new("unloaded", "Write reply, unloaded (one client)");
    let plan = &ctx.plan;
    let user = &ctx.users[0];
    let api = &ctx.target.api;
    // Markers far from the other scenarios': each write changes the bio.
    let base = 1_000_000_000;
    for k in 0..WARM_UP {
        let _ = api.patch_bio(&user.token, &marker(base + k)).await?;
    }
    let mut writes = Vec::with_capacity(plan.unloaded_writes);
    for k in 0..plan.unloaded_writes {
        let started = Instant::now();
        let (status, code) = api
            .patch_bio(&user.token, &marker(base + WARM_UP + k))
            .await?;
        if status != 200 {
            bail!("PATCH /api/profile answered {status} {code}");
        }
        writes.push(started.elapsed());
    }

    // The same bytes as a command of Tidings, where they can be read.
    let commands = format!("{}.commands", ctx.target.topic_prefix);
    let captured = crate::limits::capture(&ctx.target.broker, &commands, "bench-", 1).await?;
    let payload = captured
        .into_iter()
        .next()
        .unwrap_or_else(|| crate::ws::payload(0, 600));
    let [produce, commit, floor] = ctx
        .scratch
        .produce_then_commit(plan.unloaded_writes, &payload)
        .await?;
    let hops = ctx.scratch.round_trips(plan.unloaded_writes / 2).await?;

    let mut registrations = Vec::new();
    for i in 0..plan.unloaded_registrations {
        let name = format!("u{}_{i}", ctx.run);
        registrations.push(api.register(&name).await?.took);
    }
    let (_, hashes) = crate::limits::argon2_rate(1, Duration::from_millis(500));

    let (w, f) = (Summary::of(&writes), Summary::of(&floor));
    let (p, c, hop) = (
        Summary::of(&produce),
        Summary::of(&commit),
        Summary::of(&hops),
    );
    let (r, h) = (Summary::of(&registrations), Summary::of(&hashes));
    let floor_name = "1 produce (acks=all) + 1 PostgreSQL commit";
    scenario.rows.push(
        Row::new("PATCH /api/profile → 200, p50", w.p50, "ms")
            .against(format!("{floor_name}, p50"), f.p50)
            .target(Bound::AtMost, 5.0, "p50 ≤ 5 ms"),
    );
    scenario.rows.push(
        Row::new("PATCH /api/profile → 200, p99", w.p99, "ms")
            .against(format!("{floor_name}, p99"), f.p99),
    );
    // A registration: one hash, then three command round trips (open the
    // account, both claims at once, activate), each at least a write.
    let register_floor = h.p50 + 3.0 * f.p50;
    scenario
        .rows
        .push(Row::new("register → 201, p50", r.p50, "ms").against(
            "1 argon2id hash + 3 × (produce + commit), p50",
            register_floor,
        ));
    scenario.notes.push(format!(
        "{} sequential writes; the floor's produce p50 {:.2} ms, commit p50 {:.2} ms; \
         a broker round trip (produce, then consume back with fetch.wait.max.ms 10 as Tidings does) p50 {:.2} ms, p99 {:.2} ms",
        w.n, p.p50, c.p50, hop.p50, hop.p99
    ));
    scenario.details = json!({
        "writes": w, "floor": f, "produce": p.brief(), "commit": c.brief(),
        "broker_round_trip": hop.brief(), "registrations": r.brief(),
        "argon2_hash": h.brief(), "payload_bytes": payload.len(),
    });
    if let Ok(mut plots) = ctx.plots.lock() {
        plots.latency("write reply, unloaded", &w);
        plots.latency("produce + commit (floor)", &f);
    }
    Ok(scenario)
}
