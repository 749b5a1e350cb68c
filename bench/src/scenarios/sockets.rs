//! Memory per idle WebSocket: 10,000 sockets opened, held, closed, over
//! several rounds; the server's resident size while they are open over its
//! size before the first round, per socket, and its resident size after
//! they close against where it started. Counted from the first round's
//! start, not each round's: what an allocator or a garbage collector keeps
//! from one round to the next is memory the sockets cost.
//! The same sockets, from the same generator, held by the npm `ws` and
//! `socket.io` peers.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::Ctx;
use crate::peers::{Kind, Peer};
use crate::procfs;
use crate::report::{Bound, Row, Scenario};
use crate::ws::Sockets;

/// How long the server is left alone after the sockets open before its
/// memory is read: their sessions finish setting up.
const OPEN_SETTLE: Duration = Duration::from_secs(1);
/// Growth from round to round tolerated as allocator noise.
const ROUND_GROWTH_MIB: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub opened: usize,
    pub failed: usize,
    pub rss_before_mib: f64,
    pub rss_open_mib: f64,
    pub rss_after_mib: f64,
    /// (open − the server's size before the first round) / sockets.
    pub kib_per_socket: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub name: String,
    pub rss_start_mib: f64,
    pub rounds: Vec<Round>,
}

impl Server {
    /// Resident KiB per open socket, the mean over the rounds.
    pub fn kib_per_socket(&self) -> f64 {
        self.rounds.iter().map(|r| r.kib_per_socket).sum::<f64>() / self.rounds.len().max(1) as f64
    }

    /// The most the resident size stood above the start after a close.
    pub fn after_close_mib(&self) -> f64 {
        self.rounds
            .iter()
            .map(|r| r.rss_after_mib - self.rss_start_mib)
            .fold(f64::MIN, f64::max)
    }

    /// After the last round over after the first.
    pub fn growth_over_rounds_mib(&self) -> f64 {
        match (self.rounds.first(), self.rounds.last()) {
            (Some(first), Some(last)) => last.rss_after_mib - first.rss_after_mib,
            _ => 0.0,
        }
    }
}

/// Opens and closes `plan.sockets` sockets `plan.rounds` times against the
/// server `pid`, from the urls `url(i)`.
async fn rounds(
    ctx: &Ctx,
    name: &str,
    pid: u32,
    protocol: crate::ws::Protocol,
    url: impl Fn(usize) -> String,
) -> anyhow::Result<Server> {
    let plan = &ctx.plan;
    let rss = || procfs::rss_mib(pid).ok_or_else(|| anyhow::anyhow!("{name} is gone"));
    let mut server = Server {
        name: name.to_owned(),
        rss_start_mib: rss()?,
        rounds: Vec::new(),
    };
    for round in 0..plan.rounds {
        let rss_before_mib = rss()?;
        let urls = (0..plan.sockets).map(&url).collect();
        let sockets = Sockets::open(protocol, urls, plan.connect_concurrency, None).await;
        tokio::time::sleep(OPEN_SETTLE).await;
        let rss_open_mib = rss()?;
        let (opened, failed) = (sockets.len(), sockets.failed);
        if let Some(error) = &sockets.first_error {
            eprintln!(
                "  {name}, round {}: {failed} sockets failed: {error}",
                round + 1
            );
        }
        sockets.close().await;
        tokio::time::sleep(plan.close_settle).await;
        let rss_after_mib = rss()?;
        eprintln!(
            "  {name}, round {}: {opened} sockets, RSS {rss_before_mib:.0} → {rss_open_mib:.0} → {rss_after_mib:.0} MiB",
            round + 1
        );
        server.rounds.push(Round {
            opened,
            failed,
            rss_before_mib,
            rss_open_mib,
            rss_after_mib,
            kib_per_socket: (rss_open_mib - server.rss_start_mib) * 1024.0 / opened.max(1) as f64,
        });
    }
    Ok(server)
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let plan = &ctx.plan;
    let mut scenario = Scenario::new(
        "sockets",
        &format!("Idle WebSockets ({} per server)", plan.sockets),
    );
    let tokens: Vec<String> = ctx.users.iter().map(|u| u.token.clone()).collect();
    let api = ctx.target.api.clone();
    let tidings = rounds(
        ctx,
        "Tidings",
        ctx.target.pid,
        crate::ws::Protocol::Tidings,
        |i| api.ws_url(&tokens[i % tokens.len()]),
    )
    .await?;

    let mut peers = Vec::new();
    match &ctx.peers {
        Ok(dir) => {
            for kind in Kind::ALL {
                let peer = Peer::start(dir, kind).await?;
                let url = peer.ws_url();
                let measured = rounds(ctx, kind.label(), peer.pid(), kind.protocol(), |_| {
                    url.clone()
                })
                .await;
                peer.stop().await;
                peers.push(measured?);
            }
        }
        Err(why) => scenario.notes.push(format!("no peers: {why}")),
    }

    let mut row = Row::new("RSS per idle socket", tidings.kib_per_socket(), "KiB");
    if let Some(ws) = peers.iter().find(|p| p.name == Kind::Ws.label()) {
        row = row.against("npm ws", ws.kib_per_socket()).ratio_target(
            Bound::AtMost,
            0.75,
            "≤ 0.75 × npm ws",
        );
    }
    scenario.rows.push(row);
    if let Some(io) = peers.iter().find(|p| p.name == Kind::SocketIo.label()) {
        scenario.rows.push(
            Row::new("RSS per idle socket", tidings.kib_per_socket(), "KiB")
                .against("socket.io", io.kib_per_socket()),
        );
    }
    let mut after = Row::new(
        "RSS after close, over the start (worst round)",
        tidings.after_close_mib(),
        "MiB",
    )
    .target(Bound::AtMost, 50.0, "≤ 50 MiB");
    if let Some(ws) = peers.iter().find(|p| p.name == Kind::Ws.label()) {
        after = Row {
            limit: Some(("npm ws".into(), ws.after_close_mib())),
            ..after
        };
    }
    scenario.rows.push(after);
    scenario.rows.push(
        Row::new(
            format!("RSS after close, round {} over round 1", plan.rounds),
            tidings.growth_over_rounds_mib(),
            "MiB",
        )
        .target(
            Bound::AtMost,
            ROUND_GROWTH_MIB,
            format!("no growth (≤ {ROUND_GROWTH_MIB} MiB)"),
        ),
    );
    scenario.notes.push(
        "per socket: the resident size with the sockets open over the size before the first round, divided by the sockets, mean over the rounds".into(),
    );
    for server in std::iter::once(&tidings).chain(&peers) {
        scenario.notes.push(format!(
            "{}: {:.2} KiB per socket, RSS at start {:.0} MiB, after each close {}",
            server.name,
            server.kib_per_socket(),
            server.rss_start_mib,
            server
                .rounds
                .iter()
                .map(|r| format!("{:.0}", r.rss_after_mib))
                .collect::<Vec<_>>()
                .join(", ")
                + " MiB"
        ));
        let failed: usize = server.rounds.iter().map(|r| r.failed).sum();
        if failed > 0 {
            scenario
                .notes
                .push(format!("{}: {failed} sockets did not open", server.name));
        }
    }
    if let Ok(mut plots) = ctx.plots.lock() {
        for server in std::iter::once(&tidings).chain(&peers) {
            plots.socket_memory(&server.name, server.kib_per_socket());
        }
    }
    scenario.details = json!({ "tidings": tidings, "peers": peers });
    Ok(scenario)
}
