//! Fan-out: 10,000 sockets of one public room's channel (`room:{id}`),
//! messages at a fixed rate, every message delivered to every socket;
//! deliveries per CPU-second of the server. The room's owner posts
//! (`POST /api/rooms/{id}/messages`); the sockets are the run's registered
//! users', many each, none of them in the room (a public room is readable
//! by anyone signed in), each subscribed to the room's channel before it
//! counts as open. The npm `ws` and `socket.io` peers broadcast a payload
//! of the same size to as many sockets, triggered by an HTTP request at the
//! same rate.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::bail;
use serde::Serialize;
use serde_json::json;

use super::rooms::{open_room, post_message};
use super::{open_loop, refused_note, wait_for, Ctx, OpenLoop, Replies};
use crate::peers::{Kind, Peer};
use crate::procfs::{CpuUse, CpuWatch};
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;
use crate::ws::{marker, payload, Protocol, Sockets, Tracker};

/// Delivery latencies kept at most (the rest are counted).
const KEEP: usize = 2_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub name: String,
    pub sockets: usize,
    pub sends: usize,
    pub deliveries: u64,
    pub expected: u64,
    pub cpu_seconds: f64,
    pub per_cpu_second: f64,
    pub latency: Summary,
    pub cpu: CpuUse,
    pub open_loop: OpenLoop,
}

impl Server {
    fn of(
        name: &str,
        sockets: &Sockets,
        tracker: &Tracker,
        expected: u64,
        cpu: CpuUse,
        open_loop: OpenLoop,
    ) -> Server {
        let cpu_seconds = cpu.cpu_seconds("server").unwrap_or(0.0);
        let deliveries = tracker.delivered();
        Server {
            name: name.to_owned(),
            sockets: sockets.len(),
            sends: open_loop.due - open_loop.skipped,
            deliveries,
            expected,
            cpu_seconds,
            per_cpu_second: deliveries as f64 / cpu_seconds.max(1e-6),
            latency: Summary::of_ms(&mut tracker.latencies_ms()).brief(),
            cpu,
            open_loop,
        }
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let plan = &ctx.plan;
    let api = &ctx.target.api;
    let mut scenario = Scenario::new(
        "fanout",
        &format!(
            "Fan-out, {} sockets of one public room, {} messages/s",
            plan.fanout_sockets, plan.fanout_rate
        ),
    );
    if ctx.users.is_empty() {
        bail!("no users registered: the sockets are theirs");
    }
    let writes = (f64::from(plan.fanout_rate) * plan.step.as_secs_f64()).round() as usize;
    // An owner of its own, with no socket: the room's only participant, so
    // each message goes to the room's channel (and the owner's own).
    let owner = api.register(&format!("f{}", ctx.run)).await?.user;
    let room = open_room(api, &ctx.run, &owner, &[]).await?;
    let channel = format!("room:{room}");

    let tracker = Tracker::new(writes, KEEP);
    let urls = (0..plan.fanout_sockets)
        .map(|i| {
            let reader = &ctx.users[i % ctx.users.len()];
            (api.ws_url(&reader.token), Some(channel.clone()))
        })
        .collect();
    let opening = std::time::Instant::now();
    let sockets = Sockets::open_on(
        Protocol::Tidings,
        urls,
        plan.connect_concurrency,
        Some(tracker.clone()),
    )
    .await;
    let opened_in = opening.elapsed().as_secs_f64();
    if sockets.failed > 0 {
        bail!(
            "{} of {} sockets did not open and subscribe: {}",
            sockets.failed,
            plan.fanout_sockets,
            sockets.first_error.clone().unwrap_or_default()
        );
    }
    let replies = Arc::new(Replies::default());
    let watch = CpuWatch::start(&[
        ("server", ctx.target.pid),
        ("broker", ctx.target.broker_pid),
    ]);
    let load = open_loop(plan.fanout_rate, writes, |k, due| {
        let (api, token, room) = (api.clone(), owner.token.clone(), room.clone());
        let replies = replies.clone();
        tracker.sent(k, due);
        async move {
            let answer = post_message(&api, &token, &room, &marker(k)).await;
            replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
        }
    })
    .await;
    let (accepted, others) = replies.split();
    let expected = accepted.len() as u64 * sockets.len() as u64;
    wait_for(plan.drain, || tracker.delivered() >= expected).await;
    let cpu = watch.stop();
    let frame_bytes = tracker.frame_bytes.load(Ordering::Relaxed).max(64);
    let tidings = Server::of("Tidings", &sockets, &tracker, expected, cpu, load);
    let ended = sockets.ended_early.load(Ordering::Relaxed);
    let retried = sockets.retried;
    sockets.close().await;
    scenario.notes.push(format!(
        "{} sockets of {} users (none in the room), each subscribed to {channel}, opened in {opened_in:.1} s; the room's owner posts",
        plan.fanout_sockets,
        ctx.users.len().min(plan.fanout_sockets),
    ));
    if let Some(note) = refused_note(&others) {
        scenario.notes.push(note);
    }
    if ended > 0 {
        scenario
            .notes
            .push(format!("Tidings ended {ended} sockets during the run"));
    }
    if retried > 0 {
        scenario.notes.push(format!(
            "{retried} connections answered database_unavailable (PostgreSQL busy) were tried again"
        ));
    }

    let mut peers = Vec::new();
    match &ctx.peers {
        Ok(dir) => {
            for kind in Kind::ALL {
                let peer = Peer::start(dir, kind).await?;
                let measured = broadcast(ctx, &peer, writes, frame_bytes).await;
                peer.stop().await;
                peers.push(measured?);
            }
        }
        Err(why) => scenario.notes.push(format!("no peers: {why}")),
    }

    let faster = peers
        .iter()
        .max_by(|a, b| a.per_cpu_second.total_cmp(&b.per_cpu_second));
    let mut row = Row::new(
        "deliveries per server CPU-second",
        tidings.per_cpu_second,
        "/CPU-s",
    );
    if let Some(faster) = faster {
        row = row
            .against(
                format!("faster peer ({})", faster.name),
                faster.per_cpu_second,
            )
            .ratio_target(Bound::AtLeast, 2.0, "≥ 2 × the faster peer");
    }
    scenario.rows.push(row);
    for peer in &peers {
        if faster.is_some_and(|f| f.name != peer.name) {
            scenario.rows.push(
                Row::new(
                    "deliveries per server CPU-second",
                    tidings.per_cpu_second,
                    "/CPU-s",
                )
                .against(peer.name.clone(), peer.per_cpu_second),
            );
        }
    }
    let mut latency = Row::new("delivery latency, p99", tidings.latency.p99, "ms");
    if let Some(faster) = faster {
        latency = latency.against(format!("{}, p99", faster.name), faster.latency.p99);
    }
    scenario.rows.push(latency);
    for server in std::iter::once(&tidings).chain(&peers) {
        scenario.notes.push(format!(
            "{}: {} of {} deliveries ({} sends × {} sockets) in {:.1} CPU-s; latency p50 {:.1} ms, p99 {:.1} ms; {}",
            server.name,
            server.deliveries,
            server.expected,
            server.sends,
            server.sockets,
            server.cpu_seconds,
            server.latency.p50,
            server.latency.p99,
            server.cpu.describe()
        ));
    }
    scenario.notes.push(format!(
        "Tidings' CPU includes the whole write path (HTTP, decider, projector, outbox relay, gateway); the peers' includes their HTTP trigger; frames of {frame_bytes} bytes (message.created)"
    ));
    if let Ok(mut plots) = ctx.plots.lock() {
        for server in std::iter::once(&tidings).chain(&peers) {
            plots.fanout(&server.name, server.per_cpu_second);
        }
    }
    scenario.details = json!({
        "tidings": tidings, "peers": peers, "frame_bytes": frame_bytes,
        "room": room, "readers": ctx.users.len().min(plan.fanout_sockets), "opened_in_s": opened_in,
    });
    Ok(scenario)
}

/// The same fan-out through a peer: its sockets, its broadcasts.
async fn broadcast(
    ctx: &Ctx,
    peer: &Peer,
    sends: usize,
    frame_bytes: usize,
) -> anyhow::Result<Server> {
    let plan = &ctx.plan;
    let tracker = Tracker::new(sends, KEEP);
    let sockets = Sockets::open(
        peer.kind.protocol(),
        vec![peer.ws_url(); plan.fanout_sockets],
        plan.connect_concurrency,
        Some(tracker.clone()),
    )
    .await;
    if sockets.failed > 0 {
        anyhow::bail!(
            "{}: {} sockets did not open: {}",
            peer.kind.label(),
            sockets.failed,
            sockets.first_error.clone().unwrap_or_default()
        );
    }
    let answers = Arc::new(Replies::default());
    let trigger = peer.trigger();
    let watch = CpuWatch::start(&[("server", peer.pid())]);
    let load = open_loop(plan.fanout_rate, sends, |k, due| {
        tracker.sent(k, due);
        let (trigger, answers) = (trigger.clone(), answers.clone());
        async move {
            let answer = trigger
                .broadcast(payload(k, frame_bytes))
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"));
            answers.push(due.elapsed().as_secs_f64() * 1e3, answer);
        }
    })
    .await;
    let (_, failed) = answers.split();
    if let Some(note) = refused_note(&failed) {
        anyhow::bail!("{}: broadcasts {note}", peer.kind.label());
    }
    let expected = (sends - load.skipped) as u64 * sockets.len() as u64;
    wait_for(plan.drain, || tracker.delivered() >= expected).await;
    let cpu = watch.stop();
    let server = Server::of(peer.kind.label(), &sockets, &tracker, expected, cpu, load);
    sockets.close().await;
    Ok(server)
}
