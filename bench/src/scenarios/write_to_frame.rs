//! Write → frame: `PATCH /api/profile` open-loop at fixed rates, spread
//! over many users, each user's own socket waiting for its
//! `profile.updated` frame; the latency from when the write was due to when
//! its frame arrived. Beside it, at the same rate over as many sockets, a
//! bare WebSocket echo round trip on loopback (the bench's own
//! tokio-tungstenite echo server), frames of the same size.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use super::{open_loop, refused_note, wait_for, Ctx, Replies};
use crate::procfs::CpuWatch;
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;
use crate::ws::{marker, payload, EchoServer, Protocol, Sockets, Tracker};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new(
        "write-to-frame",
        "Write → profile.updated frame at the owner's socket",
    );
    let plan = &ctx.plan;
    let tokens: Vec<&str> = ctx.users.iter().map(|u| u.token.as_str()).collect();
    let mut details = Vec::new();
    for &rate in &plan.latency_rates {
        let count = (f64::from(rate) * plan.step.as_secs_f64()).round() as usize;

        // Tidings.
        let tracker = Tracker::new(count, count);
        let sockets = ctx
            .tidings_sockets(&tokens, tokens.len(), Some(tracker.clone()))
            .await;
        if sockets.failed > 0 {
            anyhow::bail!(
                "{} of {} sockets did not open: {}",
                sockets.failed,
                tokens.len(),
                sockets.first_error.clone().unwrap_or_default()
            );
        }
        let replies = Arc::new(Replies::default());
        let cpu = CpuWatch::start(&[
            ("tidings", ctx.target.pid),
            ("broker", ctx.target.broker_pid),
        ]);
        let load = open_loop(rate, count, |k, due| {
            let user = &ctx.users[k % ctx.users.len()];
            let (api, token) = (ctx.target.api.clone(), user.token.clone());
            let (tracker, replies) = (tracker.clone(), replies.clone());
            tracker.sent(k, due);
            async move {
                let answer = api.write(&token, &marker(k)).await;
                replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
            }
        })
        .await;
        let (accepted, others) = replies.split();
        // A write refused or timed out may still be applied later: frames
        // are waited for as long as any write that was sent could bring one.
        let sent = (count - load.skipped) as u64;
        wait_for(plan.drain, || tracker.delivered() >= sent).await;
        let cpu = cpu.stop();
        sockets.close().await;
        // A write due that brought no frame (skipped by the generator,
        // refused, or later than the drain) is counted as never arriving:
        // percentiles over what did arrive alone would flatter an overload.
        let mut latencies = tracker.latencies_ms();
        let lost = count.saturating_sub(latencies.len());
        latencies.extend(std::iter::repeat_n(f64::INFINITY, lost));
        let frames = Summary::of_ms(&mut latencies);
        let reply = Summary::of_ms(&mut accepted.clone());
        let frame_bytes = tracker.frame_bytes.load(Ordering::Relaxed).max(64);

        // The echo floor, same rate, same number of sockets, same frame size.
        let echo = EchoServer::start().await?;
        let echo_tracker = Tracker::new(count, count);
        let echo_sockets = Sockets::open(
            Protocol::Plain,
            vec![echo.url.clone(); tokens.len()],
            plan.connect_concurrency,
            Some(echo_tracker.clone()),
        )
        .await;
        let echo_load = open_loop(rate, count, |k, due| {
            echo_tracker.sent(k, due);
            echo_sockets.send(k % tokens.len(), payload(k, frame_bytes));
            async {}
        })
        .await;
        let echoed = count - echo_load.skipped;
        wait_for(plan.drain, || echo_tracker.delivered() >= echoed as u64).await;
        echo_sockets.close().await;
        echo.stop().await;
        let mut echoes = echo_tracker.latencies_ms();
        let echo_lost = count.saturating_sub(echoes.len());
        echoes.extend(std::iter::repeat_n(f64::INFINITY, echo_lost));
        let floor = Summary::of_ms(&mut echoes);

        let at = format!("{rate}/s");
        let mut p50 = Row::new(format!("write → frame at {at}, p50"), frames.p50, "ms")
            .against(format!("WebSocket echo at {at}, p50"), floor.p50);
        let mut p99 = Row::new(format!("write → frame at {at}, p99"), frames.p99, "ms")
            .against(format!("WebSocket echo at {at}, p99"), floor.p99);
        if rate == plan.target_rate() {
            p50 = p50.target(Bound::AtMost, 10.0, "p50 ≤ 10 ms");
            p99 = p99.target(Bound::AtMost, 50.0, "p99 ≤ 50 ms");
        }
        scenario.rows.extend([p50, p99]);
        let mut notes = vec![format!(
            "{at}: {count} writes due over {} users, {} accepted (reply p50 {:.1} ms, p99 {:.1} ms), {} frames matched; {lost} writes brought no frame by {:.0} s after the last was due and count as never (∞)",
            tokens.len(),
            accepted.len(),
            reply.p50,
            reply.p99,
            tracker.delivered(),
            plan.drain.as_secs_f64()
        )];
        if echo_lost > 0 {
            notes.push(format!("{at}: {echo_lost} echoes never came back"));
        }
        notes.extend(refused_note(&others));
        if load.skipped > 0 {
            notes.push(format!(
                "{at}: the generator skipped {} writes (too many in flight)",
                load.skipped
            ));
        }
        notes.push(format!("{at}: {}", cpu.describe()));
        scenario.notes.extend(notes);
        if let Ok(mut plots) = ctx.plots.lock() {
            plots.latency(&format!("write → frame, {at}"), &frames);
            plots.latency(&format!("WebSocket echo, {at}"), &floor);
        }
        details.push(json!({
            "rate": rate, "writes": count, "accepted": accepted.len(),
            "refused": others, "frames": frames, "reply": reply.brief(),
            "echo": floor, "lost_frames": lost, "lost_echoes": echo_lost, "frame_bytes": frame_bytes,
            "open_loop": load, "echo_open_loop": echo_load, "cpu": cpu,
        }));
    }
    scenario.details = json!({ "rates": details });
    Ok(scenario)
}
