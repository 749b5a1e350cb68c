//! POST → socket across gateway processes: Tidings run as three processes
//! on one database, topic prefix and Redis prefix, as it is deployed (one
//! with the roles `api,deciders,projector`, two with `realtime`), so every
//! frame crosses the broker from the projector to the gateways. Writers,
//! participants of public rooms, post messages open-loop at a fixed rate
//! (1,000/s in all); sockets of readers who are not in the rooms, half on
//! each gateway, are subscribed to a room's channel. The latency from when
//! each POST was due to when each socket got its frame, per gateway and in
//! all, and the frames due against those delivered.
//!
//! Two layouts at the same total rate: every message to one room (a room's
//! messages are decided one after another by its one aggregate, which
//! takes far less than 1,000/s: see the rooms scenario), and the messages
//! spread over several rooms, each socket on one of them. The npm `ws` and
//! `socket.io` peers, one after the other, broadcast payloads of the same
//! size at the same rate to as many sockets in the same layout (their
//! rooms: `/?room=`, socket.io's handshake query `room`), in the same run.
//! On the durable broker, then, in a full run, on the memory-engine one
//! too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::rooms::{open_room, post_message};
use super::{open_loop, refused_note, wait_for, Ctx, OpenLoop, Replies};
use crate::peers::{Kind, Peer};
use crate::procfs::{self, CpuUse, CpuWatch};
use crate::report::{Row, Scenario};
use crate::stats::Summary;
use crate::tidings::{self, Api, Engine, Managed, User};
use crate::ws::{marker, payload, Protocol, Sockets, Tracker};

/// Delivery latencies kept at most per gateway.
const KEEP: usize = 4_000_000;
/// The roles of the one process that is not a gateway, and of a gateway.
const CORE_ROLES: &str = "api,deciders,projector";
const GATEWAY_ROLES: &str = "realtime";
const GATEWAYS: usize = 2;
/// `TIDINGS_DATABASE_POOL` of the processes (the size of their `api` pool,
/// and a gateway's `realtime` one; the background roles have pools of
/// their own): smaller than Tidings' 16, so that three processes stay
/// within the stack's max_connections (100) beside the Tidings of the other
/// scenarios, which keeps the connections it opened, and whatever else
/// uses it. A gateway asks PostgreSQL only when a socket opens or
/// subscribes.
const CORE_POOL: u32 = 8;
const GATEWAY_POOL: u32 = 2;

/// Tidings as three processes on one database, topics and Redis prefix.
struct Cluster {
    engine: Engine,
    name: String,
    broker: String,
    core: Managed,
    gateways: Vec<Managed>,
    api: Api,
}

impl Cluster {
    async fn start(ctx: &Ctx, engine: Engine, broker: &str) -> anyhow::Result<Cluster> {
        let bin = ctx.tidings_bin.as_deref().context(
            "the gateways scenario starts Tidings processes of its own: it needs --tidings-bin",
        )?;
        let name = format!("tidings_bench_{}_gw_{}", ctx.run_id, engine.label());
        let mut extra: Vec<(&'static str, String)> = ctx
            .plan
            .gateway_fetch_wait_ms
            .map(|ms| ("TIDINGS_KAFKA_FETCH_WAIT_MS", ms.to_string()))
            .into_iter()
            .collect();
        let core_extra: Vec<(&'static str, String)> = extra
            .iter()
            .cloned()
            .chain([("TIDINGS_DATABASE_POOL", CORE_POOL.to_string())])
            .collect();
        extra.push(("TIDINGS_DATABASE_POOL", GATEWAY_POOL.to_string()));
        let started = async {
            Managed::prepare(bin, broker, &name).await?;
            let core = Managed::spawn(
                bin,
                broker,
                &name,
                Some(CORE_ROLES),
                &format!("{name}-core"),
                &core_extra,
            )
            .await?;
            let gateways = futures_util::future::try_join_all((1..=GATEWAYS).map(|g| {
                let (name, extra) = (&name, &extra);
                let instance = format!("{name}-gw{g}");
                async move {
                    Managed::spawn(bin, broker, name, Some(GATEWAY_ROLES), &instance, extra).await
                }
            }))
            .await?;
            anyhow::Ok((core, gateways))
        }
        .await;
        match started {
            Ok((core, gateways)) => Ok(Cluster {
                engine,
                api: Api::new(&core.base)?,
                name,
                broker: broker.to_owned(),
                core,
                gateways,
            }),
            Err(e) => {
                // What was started is killed as it is dropped.
                let _ = tidings::drop_database(&name).await;
                let _ = tidings::delete_redis_keys(&name).await;
                Err(e.context(format!("starting Tidings as three processes ({name})")))
            }
        }
    }

    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = vec![(CORE_ROLES.to_owned(), self.core.pid())];
        for (g, gateway) in self.gateways.iter().enumerate() {
            pids.push((format!("gateway {}", g + 1), gateway.pid()));
        }
        if let Ok(broker) = procfs::find_broker(&self.broker) {
            pids.push(("broker".to_owned(), broker));
        }
        pids
    }

    /// Stops every process, gateways first; then removes the database and
    /// the Redis keys. What went wrong, if anything.
    async fn stop(self) -> Vec<String> {
        let mut problems = Vec::new();
        for managed in self.gateways.into_iter().chain([self.core]) {
            if let Err(e) = managed.halt().await {
                problems.push(format!("{e:#}"));
            }
        }
        if let Err(e) = tidings::drop_database(&self.name).await {
            problems.push(format!("dropping {}: {e:#}", self.name));
        }
        if let Err(e) = tidings::delete_redis_keys(&self.name).await {
            problems.push(format!("deleting the Redis keys of {}: {e:#}", self.name));
        }
        problems
    }
}

/// Where each socket is: its gateway and its room (indexes).
fn layout(sockets: usize, rooms: usize) -> Vec<(usize, usize)> {
    // Socket i reads room i % rooms; consecutive runs of `rooms` sockets
    // alternate between the gateways, so each room has sockets on both.
    (0..sockets)
        .map(|i| ((i / rooms.max(1)) % GATEWAYS, i % rooms.max(1)))
        .collect()
}

/// One layout measured on one cluster (or on the peer).
#[derive(Debug, Clone, Serialize)]
struct Measured {
    rooms: usize,
    sockets: Vec<usize>,
    messages_due: usize,
    messages_accepted: usize,
    /// Per gateway: frames due (every message due × the sockets of its room
    /// there), expected (the accepted messages' only), delivered within
    /// the drain.
    frames_due: Vec<u64>,
    frames_expected: Vec<u64>,
    frames_delivered: Vec<u64>,
    /// Due → frame, a frame not delivered counting as ∞.
    latency: Vec<Summary>,
    overall: Summary,
    reply: Summary,
    open_loop: OpenLoop,
    cpu: CpuUse,
    frame_bytes: usize,
    refused: std::collections::BTreeMap<String, usize>,
    ended_early: usize,
    /// Connections answered `database_unavailable` and tried again.
    retried: usize,
    /// The overall latency curve, for the plot.
    #[serde(skip)]
    curve: Summary,
}

impl Measured {
    fn delivered(&self) -> u64 {
        self.frames_delivered.iter().sum()
    }

    fn due(&self) -> u64 {
        self.frames_due.iter().sum()
    }
}

/// Per gateway (or the one peer), from the trackers: latency with what
/// never came as ∞.
fn latencies(trackers: &[Arc<Tracker>], due: &[u64]) -> (Vec<Summary>, Summary) {
    let mut all = Vec::new();
    let mut each = Vec::new();
    for (tracker, &due) in trackers.iter().zip(due) {
        let mut latencies = tracker.latencies_ms();
        let missing = (due as usize).saturating_sub(latencies.len());
        latencies.extend(std::iter::repeat_n(f64::INFINITY, missing));
        all.extend_from_slice(&latencies);
        each.push(Summary::of_ms(&mut latencies).brief());
    }
    (each, Summary::of_ms(&mut all))
}

/// Frames due to each gateway's sockets for the messages `k` that `counts`.
fn frames(
    places: &[(usize, usize)],
    rooms: usize,
    count: usize,
    counts: impl Fn(usize) -> bool,
) -> Vec<u64> {
    let mut per_room = vec![vec![0u64; rooms]; GATEWAYS];
    for &(g, r) in places {
        per_room[g][r] += 1;
    }
    (0..GATEWAYS)
        .map(|g| {
            (0..count)
                .filter(|&k| counts(k))
                .map(|k| per_room[g][k % rooms])
                .sum()
        })
        .collect()
}

async fn register(api: &Api, names: Vec<String>, concurrency: usize) -> anyhow::Result<Vec<User>> {
    let users: Vec<anyhow::Result<User>> = futures_util::stream::iter(names)
        .map(|name| async move { Ok(api.register(&name).await?.user) })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    users.into_iter().collect()
}

/// The messages of one layout through the cluster.
async fn through_tidings(
    ctx: &Ctx,
    cluster: &Cluster,
    writers: &[User],
    readers: &[User],
    rooms: &[String],
) -> anyhow::Result<Measured> {
    let plan = &ctx.plan;
    let count = (f64::from(plan.gateway_rate) * plan.step.as_secs_f64()).round() as usize;
    let places = layout(plan.gateway_sockets, rooms.len());
    let trackers: Vec<Arc<Tracker>> = (0..GATEWAYS).map(|_| Tracker::new(count, KEEP)).collect();
    let mut sockets = Vec::new();
    let mut retried = 0;
    for (g, gateway) in cluster.gateways.iter().enumerate() {
        let api = Api::new(&gateway.base)?;
        let urls = places
            .iter()
            .enumerate()
            .filter(|(_, (on, _))| *on == g)
            .map(|(i, &(_, r))| {
                let reader = &readers[i % readers.len()];
                (
                    api.ws_url(&reader.token),
                    Some(format!("room:{}", rooms[r])),
                )
            })
            .collect();
        let opened = Sockets::open_on(
            Protocol::Tidings,
            urls,
            plan.connect_concurrency,
            Some(trackers[g].clone()),
        )
        .await;
        retried += opened.retried;
        if opened.failed > 0 {
            bail!(
                "gateway {}: {} sockets did not open and subscribe: {}",
                g + 1,
                opened.failed,
                opened.first_error.clone().unwrap_or_default()
            );
        }
        sockets.push(opened);
    }
    let pids = cluster.pids();
    let named: Vec<(&str, u32)> = pids.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let watch = CpuWatch::start(&named);
    let replies = Arc::new(Replies::default());
    let accepted: Arc<Vec<AtomicBool>> =
        Arc::new((0..count).map(|_| AtomicBool::new(false)).collect());
    let load = open_loop(plan.gateway_rate, count, |k, due| {
        let writer = &writers[k % writers.len()];
        let (api, token, room) = (
            cluster.api.clone(),
            writer.token.clone(),
            rooms[k % rooms.len()].clone(),
        );
        let (replies, accepted) = (replies.clone(), accepted.clone());
        for tracker in &trackers {
            tracker.sent(k, due);
        }
        async move {
            let answer = post_message(&api, &token, &room, &marker(k)).await;
            if answer.is_ok() {
                accepted[k].store(true, Ordering::Relaxed);
            }
            replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
        }
    })
    .await;
    let (mut reply, refused) = replies.split();
    let messages_accepted = reply.len();
    let frames_due = frames(&places, rooms.len(), count, |_| true);
    let frames_expected = frames(&places, rooms.len(), count, |k| {
        accepted[k].load(Ordering::Relaxed)
    });
    wait_for(plan.drain, || {
        trackers
            .iter()
            .zip(&frames_expected)
            .all(|(t, &e)| t.delivered() >= e)
    })
    .await;
    let cpu = watch.stop();
    let mut ended_early = 0;
    for opened in sockets {
        ended_early += opened.ended_early.load(Ordering::Relaxed);
        opened.close().await;
    }
    let (latency, curve) = latencies(&trackers, &frames_due);
    Ok(Measured {
        rooms: rooms.len(),
        sockets: (0..GATEWAYS)
            .map(|g| places.iter().filter(|(on, _)| *on == g).count())
            .collect(),
        messages_due: count,
        messages_accepted,
        frames_due,
        frames_expected,
        frames_delivered: trackers.iter().map(|t| t.delivered()).collect(),
        latency,
        overall: curve.brief(),
        reply: Summary::of_ms(&mut reply).brief(),
        open_loop: load,
        cpu,
        frame_bytes: trackers
            .iter()
            .map(|t| t.frame_bytes.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        refused,
        ended_early,
        retried,
        curve,
    })
}

/// The same layout through a peer (npm `ws` or socket.io): as many
/// sockets, each in the room of the same index, a broadcast per message to
/// its room.
async fn through_peer(
    ctx: &Ctx,
    peer: &Peer,
    rooms: usize,
    frame_bytes: usize,
) -> anyhow::Result<Measured> {
    let plan = &ctx.plan;
    let count = (f64::from(plan.gateway_rate) * plan.step.as_secs_f64()).round() as usize;
    // One server: every socket counts as on "gateway" 0.
    let places: Vec<(usize, usize)> = layout(plan.gateway_sockets, rooms)
        .into_iter()
        .map(|(_, r)| (0, r))
        .collect();
    let tracker = Tracker::new(count, KEEP);
    let urls = places
        .iter()
        .map(|&(_, r)| peer.ws_url_in(&format!("r{r}")))
        .collect();
    let sockets = Sockets::open(
        peer.kind.protocol(),
        urls,
        plan.connect_concurrency,
        Some(tracker.clone()),
    )
    .await;
    if sockets.failed > 0 {
        bail!(
            "{}: {} sockets did not open: {}",
            peer.kind.label(),
            sockets.failed,
            sockets.first_error.clone().unwrap_or_default()
        );
    }
    let trigger = peer.trigger();
    let watch = CpuWatch::start(&[(peer.kind.label(), peer.pid())]);
    let replies = Arc::new(Replies::default());
    let load = open_loop(plan.gateway_rate, count, |k, due| {
        tracker.sent(k, due);
        let (trigger, replies) = (trigger.clone(), replies.clone());
        let room = format!("r{}", k % rooms);
        async move {
            let answer = trigger
                .broadcast_to(Some(&room), payload(k, frame_bytes))
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"));
            replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
        }
    })
    .await;
    let (mut reply, refused) = replies.split();
    let messages_accepted = reply.len();
    let mut frames_due = frames(&places, rooms, count, |_| true);
    frames_due.truncate(1);
    let expected = frames_due[0] * messages_accepted as u64 / count.max(1) as u64;
    wait_for(plan.drain, || tracker.delivered() >= expected).await;
    let cpu = watch.stop();
    let ended_early = sockets.ended_early.load(Ordering::Relaxed);
    let sockets_retried = sockets.retried;
    // The frames as received: socket.io's carry its `42["event",…]`
    // envelope around the payload.
    let received_bytes = tracker.frame_bytes.load(Ordering::Relaxed);
    sockets.close().await;
    let (latency, curve) = latencies(std::slice::from_ref(&tracker), &frames_due);
    Ok(Measured {
        rooms,
        sockets: vec![places.len()],
        messages_due: count,
        messages_accepted,
        frames_due,
        frames_expected: vec![expected],
        frames_delivered: vec![tracker.delivered()],
        latency,
        overall: curve.brief(),
        reply: Summary::of_ms(&mut reply).brief(),
        open_loop: load,
        cpu,
        frame_bytes: if received_bytes > 0 {
            received_bytes
        } else {
            frame_bytes
        },
        refused,
        ended_early,
        retried: sockets_retried,
        curve,
    })
}

/// Both layouts on one engine: `[one room, several rooms]`.
async fn on_cluster(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<Vec<Measured>> {
    let plan = &ctx.plan;
    let started = std::time::Instant::now();
    let tag = format!("g{}{}", ctx.run, &cluster.engine.label()[..1]);
    let writers = register(
        &cluster.api,
        (0..plan.gateway_writers.max(1))
            .map(|i| format!("{tag}_w{i}"))
            .collect(),
        plan.register_concurrency,
    )
    .await?;
    let readers = register(
        &cluster.api,
        (0..plan.gateway_readers.max(1))
            .map(|i| format!("{tag}_r{i}"))
            .collect(),
        plan.register_concurrency,
    )
    .await?;
    let mut layouts = vec![1, plan.gateway_rooms.max(2)];
    layouts.dedup();
    // Every layout's rooms are opened while the cluster is quiet: after a
    // layout that the write path could not keep up with (the durable
    // engine), the next one's room would wait behind its backlog and time
    // out, and the scenario would end without figures.
    let mut rooms_of = Vec::new();
    for &rooms in &layouts {
        let mut ids = Vec::new();
        for _ in 0..rooms {
            ids.push(open_room(&cluster.api, &ctx.run, &writers[0], &writers[1..]).await?);
        }
        rooms_of.push(ids);
    }
    let mut measured = Vec::new();
    for ids in rooms_of {
        let rooms = ids.len();
        // What came before (registrations, joins; the previous layout's
        // backlog) is worked off first.
        let (waited, busy) = crate::settle(&cluster.api, cluster.core.pid(), plan.settle).await;
        if let Some(busy) = busy {
            eprintln!(
                "  {} engine: after {:.0} s the processes had not worked off what came before: {busy}",
                cluster.engine.label(),
                waited.as_secs_f64()
            );
        }
        eprintln!(
            "  {} engine, {rooms} room(s): {} messages/s to {} sockets on {GATEWAYS} gateways ({:.0} s in)",
            cluster.engine.label(),
            plan.gateway_rate,
            plan.gateway_sockets,
            started.elapsed().as_secs_f64()
        );
        measured.push(through_tidings(ctx, cluster, &writers, &readers, &ids).await?);
    }
    Ok(measured)
}

/// Connections of PostgreSQL the three processes may need (each opens
/// several pools); they are waited for `plan.settle` at most.
const POSTGRES_NEEDED: i64 = 36;

/// PostgreSQL's connections in use and its limit.
async fn postgres_connections() -> Option<(i64, i64)> {
    let admin = sqlx::PgPool::connect(tidings::ADMIN_DB).await.ok()?;
    let used: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity")
        .fetch_one(&admin)
        .await
        .ok()?;
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&admin)
        .await
        .ok()?;
    admin.close().await;
    Some((used, max.parse().ok()?))
}

fn rooms_label(rooms: usize) -> String {
    if rooms == 1 {
        "1 room".to_owned()
    } else {
        format!("{rooms} rooms")
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let plan = &ctx.plan;
    let mut scenario = Scenario::new(
        "gateways",
        &format!(
            "POST message → socket across {GATEWAYS} gateway processes, {} messages/s, {} sockets",
            plan.gateway_rate, plan.gateway_sockets
        ),
    );
    if ctx.tidings_bin.is_none() {
        bail!("the gateways scenario starts Tidings processes of its own: it needs --tidings-bin");
    }
    let mut brokers = vec![(ctx.target.engine, ctx.target.broker.clone())];
    if plan.gateway_memory && ctx.target.engine == Engine::Durable {
        match &ctx.memory_kafka {
            Some(memory) => brokers.push((Engine::Memory, memory.clone())),
            None => scenario
                .notes
                .push("memory engine left out: no memory-engine broker listens".into()),
        }
    }

    let mut engines: Vec<(Engine, Vec<Measured>)> = Vec::new();
    for (engine, broker) in brokers {
        // The stack's PostgreSQL is shared (tests of others may hold many
        // of its connections): the processes start once enough are free.
        let waiting = std::time::Instant::now();
        let mut free = postgres_connections().await;
        while free.is_none_or(|(used, max)| max - used < POSTGRES_NEEDED)
            && waiting.elapsed() < plan.settle
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            free = postgres_connections().await;
        }
        if let Some((used, max)) = free {
            scenario.notes.push(format!(
                "{} engine: PostgreSQL had {used} of its {max} connections in use before the processes started{}",
                engine.label(),
                if waiting.elapsed() >= Duration::from_secs(1) {
                    format!(" (after {:.0} s of waiting for {POSTGRES_NEEDED} free)", waiting.elapsed().as_secs_f64())
                } else {
                    String::new()
                }
            ));
        }
        let cluster = Cluster::start(ctx, engine, &broker).await?;
        eprintln!(
            "  {} engine: {CORE_ROLES} on {}, {GATEWAY_ROLES} on {}",
            engine.label(),
            cluster.core.base,
            cluster
                .gateways
                .iter()
                .map(|g| g.base.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        let measured = on_cluster(ctx, &cluster).await;
        let problems = cluster.stop().await;
        let measured = measured.with_context(|| format!("{} engine", engine.label()))?;
        for problem in problems {
            scenario
                .notes
                .push(format!("{} engine: {problem}", engine.label()));
        }
        engines.push((engine, measured));
    }

    // Each peer (npm ws, then socket.io), each layout at the same rate,
    // payloads of the size of the frames Tidings delivered.
    let frame_bytes = engines
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| m.frame_bytes))
        .max()
        .unwrap_or(0)
        .max(64);
    let mut peers: Vec<(Kind, Vec<Measured>)> = Vec::new();
    match &ctx.peers {
        Ok(dir) => {
            let layouts: Vec<usize> = engines
                .first()
                .map(|(_, m)| m.iter().map(|m| m.rooms).collect())
                .unwrap_or_default();
            for kind in Kind::ALL {
                let peer = Peer::start(dir, kind)
                    .await
                    .with_context(|| format!("starting the {} peer", kind.label()))?;
                let mut measured = Vec::new();
                for &rooms in &layouts {
                    eprintln!(
                        "  {}, {}: {} broadcasts/s to {} sockets",
                        kind.label(),
                        rooms_label(rooms),
                        plan.gateway_rate,
                        plan.gateway_sockets
                    );
                    match through_peer(ctx, &peer, rooms, frame_bytes).await {
                        Ok(m) => measured.push(m),
                        Err(e) => {
                            peer.stop().await;
                            return Err(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                peer.stop().await;
                peers.push((kind, measured));
            }
        }
        Err(why) => scenario.notes.push(format!("no peers: {why}")),
    }

    for (engine, measured) in &engines {
        for m in measured {
            let at = format!("{} engine, {}", engine.label(), rooms_label(m.rooms));
            // One row per peer (npm ws, then socket.io), each measure.
            let same: Vec<(Kind, &Measured)> = peers
                .iter()
                .filter_map(|(kind, ms)| {
                    let p = ms.iter().find(|p| p.rooms == m.rooms)?;
                    Some((*kind, p))
                })
                .collect();
            for (what, pick) in [
                ("p50", (|s: &Summary| s.p50) as fn(&Summary) -> f64),
                ("p99", |s: &Summary| s.p99),
            ] {
                let measure = format!("{at}: POST → socket, {what}");
                let ours = pick(&m.overall);
                if same.is_empty() {
                    scenario.rows.push(Row::new(measure.clone(), ours, "ms"));
                }
                for (kind, p) in &same {
                    scenario
                        .rows
                        .push(Row::new(measure.clone(), ours, "ms").against(
                            format!("{}, same rate and sockets, {what}", kind.label()),
                            pick(&p.overall),
                        ));
                }
            }
            scenario.rows.push(
                Row::new(
                    format!("{at}: frames delivered"),
                    m.delivered() as f64,
                    "frames",
                )
                .against("frames due", m.due() as f64),
            );
            let gateways: Vec<String> = (0..m.latency.len())
                .map(|g| {
                    format!(
                        "gateway {} ({} sockets): {} of {} frames due ({} for accepted messages), p50 {:.1} ms, p99 {:.1} ms",
                        g + 1,
                        m.sockets[g],
                        m.frames_delivered[g],
                        m.frames_due[g],
                        m.frames_expected[g],
                        m.latency[g].p50,
                        m.latency[g].p99
                    )
                })
                .collect();
            scenario.notes.push(format!(
                "{at}: {} messages due, {} accepted (reply p50 {:.1} ms, p99 {:.1} ms; {} skipped by the generator, {:.0} ms behind at worst); overall p50 {:.1} ms, p99 {:.1} ms; {}; {}",
                m.messages_due,
                m.messages_accepted,
                m.reply.p50,
                m.reply.p99,
                m.open_loop.skipped,
                m.open_loop.behind_max_ms,
                m.overall.p50,
                m.overall.p99,
                gateways.join("; "),
                m.cpu.describe()
            ));
            if let Some(note) = refused_note(&m.refused) {
                scenario.notes.push(format!("{at}: {note}"));
            }
            if m.retried > 0 {
                scenario.notes.push(format!(
                    "{at}: {} connections answered database_unavailable were tried again",
                    m.retried
                ));
            }
            if m.ended_early > 0 {
                scenario.notes.push(format!(
                    "{at}: the gateways ended {} sockets during the run",
                    m.ended_early
                ));
            }
        }
    }
    for (kind, measured) in &peers {
        let name = kind.label();
        for p in measured {
            scenario.notes.push(format!(
                "{name}, {}: {} of {} frames ({} broadcasts of {} due; frames of {} bytes), p50 {:.1} ms, p99 {:.1} ms; {}",
                rooms_label(p.rooms),
                p.delivered(),
                p.due(),
                p.messages_accepted,
                p.messages_due,
                p.frame_bytes,
                p.overall.p50,
                p.overall.p99,
                p.cpu.describe()
            ));
            if let Some(note) = refused_note(&p.refused) {
                scenario.notes.push(format!(
                    "{name}, {}: broadcasts {note}",
                    rooms_label(p.rooms)
                ));
            }
            if p.ended_early > 0 {
                scenario.notes.push(format!(
                    "{name}, {}: the peer ended {} sockets during the run",
                    rooms_label(p.rooms),
                    p.ended_early
                ));
            }
        }
    }
    scenario.notes.push(format!(
        "latency from when each POST (or broadcast) was due to each socket's frame; a frame not delivered within {:.0} s after the load counts as ∞; frames of {frame_bytes} bytes (the peers' payloads; socket.io's frames wrap them in its event envelope); Tidings as {CORE_ROLES} + {GATEWAYS} × {GATEWAY_ROLES} processes on one database, topics and Redis prefix, TIDINGS_DATABASE_POOL={CORE_POOL} for {CORE_ROLES}, {GATEWAY_POOL} for the gateways{}",
        plan.drain.as_secs_f64(),
        plan.gateway_fetch_wait_ms
            .map(|ms| format!(", TIDINGS_KAFKA_FETCH_WAIT_MS={ms}"))
            .unwrap_or_default()
    ));
    if let Ok(mut plots) = ctx.plots.lock() {
        for (engine, measured) in &engines {
            for m in measured {
                plots.latency(
                    &format!(
                        "POST → socket via 2 gateways, {}, {}",
                        engine.label(),
                        rooms_label(m.rooms)
                    ),
                    &m.curve,
                );
            }
        }
    }
    let of_peer = |kind: Kind| -> Vec<Measured> {
        peers
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    scenario.details = json!({
        "engines": engines
            .iter()
            .map(|(e, m)| json!({ "engine": e.label(), "layouts": m }))
            .collect::<Vec<_>>(),
        "npm_ws": of_peer(Kind::Ws),
        "socket_io": of_peer(Kind::SocketIo),
        "frame_bytes": frame_bytes,
        "writers": plan.gateway_writers,
        "readers": plan.gateway_readers,
    });
    Ok(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_has_sockets_on_both_gateways() {
        for (sockets, rooms) in [(100, 10), (20, 2), (100, 1)] {
            let places = layout(sockets, rooms);
            for r in 0..rooms {
                for g in 0..GATEWAYS {
                    assert!(places.contains(&(g, r)), "{sockets} sockets, {rooms} rooms");
                }
            }
            let due = frames(&places, rooms, 10, |_| true);
            assert_eq!(due.iter().sum::<u64>(), 10 * sockets as u64 / rooms as u64);
        }
    }
}
