//! Idle: the CPU the broker and Tidings burn with clients connected and no
//! traffic (each user's socket open, nothing written), from utime + stime
//! in `/proc/<pid>/stat`, in % of one core.

use serde_json::json;

use super::Ctx;
use crate::procfs::CpuWatch;
use crate::report::{Bound, Row, Scenario};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new("idle", "Idle, clients connected");
    let plan = &ctx.plan;
    let tokens: Vec<&str> = ctx.users.iter().map(|u| u.token.as_str()).collect();
    let sockets = ctx.tidings_sockets(&tokens, tokens.len(), None).await;
    // What the previous scenario left in flight (projector batches, outbox
    // relay) settles first.
    tokio::time::sleep(plan.idle_settle).await;
    let cpu = CpuWatch::start(&[
        ("tidings", ctx.target.pid),
        ("broker", ctx.target.broker_pid),
    ]);
    tokio::time::sleep(plan.idle).await;
    let cpu = cpu.stop();
    let open = sockets.len()
        - sockets
            .ended_early
            .load(std::sync::atomic::Ordering::Relaxed);
    sockets.close().await;
    let seconds = format!("{:.0} s", cpu.seconds);
    scenario.rows.push(
        Row::new(
            format!("Tidings CPU, {open} sockets open, {seconds}"),
            cpu.pct("tidings").unwrap_or(0.0),
            "% core",
        )
        .target(Bound::AtMost, 5.0, "≤ 5 %"),
    );
    scenario.rows.push(
        Row::new(
            format!("broker CPU, same {seconds}"),
            cpu.pct("broker").unwrap_or(0.0),
            "% core",
        )
        .target(Bound::AtMost, 5.0, "≤ 5 %"),
    );
    scenario.notes.push(format!(
        "the broker ({}) is shared: its figure includes whatever else uses it; {}",
        ctx.target.broker,
        cpu.describe()
    ));
    scenario.details = json!({ "sockets": open, "cpu": cpu });
    Ok(scenario)
}
