//! The npm peers Tidings' gateway is compared with: a plain `ws` server and
//! a `socket.io` server (`bench/peers/`, installed by `scripts/bench` with
//! `npm ci`). Each is a `node` process on a free port of 127.0.0.1 that
//! holds WebSockets and broadcasts the body of `POST /broadcast` to all of
//! them, or with `?room=` to the sockets that opened in that room.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::ws::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ws,
    SocketIo,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Ws, Kind::SocketIo];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Ws => "npm ws",
            Kind::SocketIo => "socket.io",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Kind::Ws => "ws-server.js",
            Kind::SocketIo => "socketio-server.js",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Kind::Ws => Protocol::Plain,
            Kind::SocketIo => Protocol::SocketIo,
        }
    }
}

/// A running peer.
pub struct Peer {
    pub kind: Kind,
    child: tokio::process::Child,
    pub port: u16,
    http: reqwest::Client,
}

/// Where the peers are, if installed (`node_modules` present).
pub fn installed(dir: &Path) -> Result<PathBuf, String> {
    if !dir.join("node_modules").is_dir() {
        return Err(format!(
            "the npm peers are not installed in {} (scripts/bench installs them with npm ci)",
            dir.display()
        ));
    }
    Ok(dir.to_owned())
}

impl Peer {
    pub async fn start(dir: &Path, kind: Kind) -> anyhow::Result<Peer> {
        let mut child = tokio::process::Command::new("node")
            .arg(kind.script())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (node 20 or later is needed for the peers)")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        // The peer prints `listening <port>` once it listens.
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| anyhow!("{} did not start within 20 s", kind.label()))??
            .ok_or_else(|| anyhow!("{} exited at start", kind.label()))?;
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("unexpected first line of {}: {line}", kind.label()))?;
        // Nothing else is printed; the pipe is drained so it never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Peer {
            kind,
            child,
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
                .build()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn ws_url(&self) -> String {
        match self.kind {
            Kind::Ws => format!("ws://127.0.0.1:{}/", self.port),
            Kind::SocketIo => format!(
                "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
                self.port
            ),
        }
    }

    /// A socket of the peer in `room` (its broadcasts to the room reach
    /// only the room's sockets): `/?room=` on the npm `ws` peer, the
    /// socket.io URL with `&room=` (its handshake query) on socket.io.
    pub fn ws_url_in(&self, room: &str) -> String {
        match self.kind {
            Kind::Ws => format!("ws://127.0.0.1:{}/?room={room}", self.port),
            Kind::SocketIo => format!("{}&room={room}", self.ws_url()),
        }
    }

    /// What asks the peer to broadcast (cloned into each request's task).
    pub fn trigger(&self) -> Trigger {
        Trigger {
            http: self.http.clone(),
            url: format!("http://127.0.0.1:{}/broadcast", self.port),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Asks a peer to send a payload to every socket it holds.
#[derive(Clone)]
pub struct Trigger {
    http: reqwest::Client,
    url: String,
}

impl Trigger {
    /// `POST /broadcast`; how many sockets the peer sent it to.
    pub async fn broadcast(&self, payload: String) -> anyhow::Result<usize> {
        self.broadcast_to(None, payload).await
    }

    /// `POST /broadcast?room=`: to the sockets of `room`, or to all without
    /// one; how many.
    pub async fn broadcast_to(&self, room: Option<&str>, payload: String) -> anyhow::Result<usize> {
        let url = match room {
            Some(room) => format!("{}?room={room}", self.url),
            None => self.url.clone(),
        };
        let response = self.http.post(url).body(payload).send().await?;
        if !response.status().is_success() {
            bail!("broadcast: {}", response.status());
        }
        Ok(response.text().await?.trim().parse()?)
    }
}
