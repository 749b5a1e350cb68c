//! The WebSocket side of the generator: sockets to Tidings' gateway, to the
//! npm `ws` and `socket.io` peers, and to the bench's own echo server, each
//! held by a task of its own that matches the frames it receives to the
//! writes that caused them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake (and the protocol's first frames) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a socket waits for the server's answer to its Close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The `ref` of the bench's subscriptions, which the gateway's errors about
/// them carry.
const SUBSCRIBE_REF: &str = "bench-subscribe";
/// Tries of a connection or subscription the server answers with "not
/// now" (`database_unavailable` at the handshake, `unavailable` for a
/// subscription: PostgreSQL busy), each after [`RETRY_AFTER`].
const SUBSCRIBE_TRIES: usize = 5;
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What speaks at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Tidings' gateway: `welcome` first, then `event` frames.
    Tidings,
    /// A plain WebSocket server (the npm `ws` peer, the echo server).
    Plain,
    /// socket.io 4 over its WebSocket transport (Engine.IO 4): `0{…}` open,
    /// `40` to join the main namespace, `2`/`3` heartbeats, `42[…]` events.
    SocketIo,
}

/// The text every write, broadcast or echo carries so that its frames can
/// be matched to it: `bench-<k>-`.
pub fn marker(k: usize) -> String {
    format!("bench-{k}-")
}

/// The `k` of the first marker in `text`.
pub fn find_marker(text: &str) -> Option<usize> {
    let at = text.find("bench-")? + "bench-".len();
    let digits = &text[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    (digits.as_bytes().get(end) == Some(&b'-'))
        .then(|| digits[..end].parse().ok())
        .flatten()
}

/// Matches received frames to the sends that caused them: the latency of
/// each delivery, from the moment its send was due (not when it actually
/// left: an open-loop generator that falls behind must not hide it).
pub struct Tracker {
    origin: Instant,
    /// Nanoseconds after `origin` + 1 at which send `k` was due; 0 = none.
    sent: Vec<AtomicU64>,
    latencies_ms: Mutex<Vec<f64>>,
    /// Latencies kept at most: the deliveries of a fan-out are counted
    /// beyond it, not kept.
    keep: usize,
    pub delivered: AtomicU64,
    pub unmatched: AtomicU64,
    /// The length of the last matched frame (what peers are given to send).
    pub frame_bytes: AtomicUsize,
}

impl Tracker {
    pub fn new(sends: usize, keep: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            origin: Instant::now(),
            sent: (0..sends).map(|_| AtomicU64::new(0)).collect(),
            latencies_ms: Mutex::new(Vec::with_capacity(keep.min(1 << 20))),
            keep,
            delivered: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            frame_bytes: AtomicUsize::new(0),
        })
    }

    /// Notes that send `k` was due at `due`.
    pub fn sent(&self, k: usize, due: Instant) {
        if let Some(slot) = self.sent.get(k) {
            let nanos = due.saturating_duration_since(self.origin).as_nanos() as u64;
            slot.store(nanos + 1, Ordering::Release);
        }
    }

    /// A frame arrived.
    pub fn received(&self, text: &str) {
        let now = self.origin.elapsed().as_nanos() as u64;
        let Some(k) = find_marker(text) else {
            return;
        };
        let due = self.sent.get(k).map_or(0, |s| s.load(Ordering::Acquire));
        if due == 0 {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.frame_bytes.store(text.len(), Ordering::Relaxed);
        let ms = now.saturating_sub(due - 1) as f64 / 1e6;
        if let Ok(mut latencies) = self.latencies_ms.lock() {
            if latencies.len() < self.keep {
                latencies.push(ms);
            }
        }
    }

    pub fn latencies_ms(&self) -> Vec<f64> {
        self.latencies_ms
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Opens a socket and waits until the server is ready to deliver on it;
/// on Tidings' gateway, then subscribes to `channel` (if given) and waits
/// for its `subscribed` frame: a socket counts as open once it is on the
/// channel.
pub async fn connect(protocol: Protocol, url: &str, channel: Option<&str>) -> anyhow::Result<Ws> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting {}", url.split('?').next().unwrap_or(url)))?;
        match protocol {
            Protocol::Plain => {}
            Protocol::Tidings => {
                // The socket is subscribed to `user:{id}` before `welcome`.
                let text = next_text(&mut ws).await?;
                if !text.contains("\"welcome\"") {
                    bail!("expected welcome, got {text}");
                }
                if let Some(channel) = channel {
                    let subscribe = serde_json::json!({
                        "op": "subscribe", "channel": channel, "ref": SUBSCRIBE_REF,
                    })
                    .to_string();
                    ws.send(Message::text(subscribe.clone())).await?;
                    let mut tries = 1;
                    loop {
                        let text = next_text(&mut ws).await?;
                        let frame: serde_json::Value =
                            serde_json::from_str(&text).unwrap_or_default();
                        match frame["type"].as_str() {
                            Some("subscribed") if frame["channel"] == channel => break,
                            // Errors of other channels (the own `user:{id}`
                            // one dropped when its outbox could not be read)
                            // leave this subscription alone.
                            Some("error") if frame["ref"] == SUBSCRIBE_REF => {
                                // "subscribe again": what a client does.
                                if frame["code"] == "unavailable" && tries < SUBSCRIBE_TRIES {
                                    tries += 1;
                                    tokio::time::sleep(RETRY_AFTER).await;
                                    ws.send(Message::text(subscribe.clone())).await?;
                                } else {
                                    bail!("subscribing to {channel} ({tries} tries): {text}");
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            Protocol::SocketIo => {
                let open = next_text(&mut ws).await?;
                if !open.starts_with('0') {
                    bail!("expected an Engine.IO open packet, got {open}");
                }
                ws.send(Message::text("40")).await?;
                loop {
                    let text = next_text(&mut ws).await?;
                    if text.starts_with("40") {
                        break;
                    }
                    if text == "2" {
                        ws.send(Message::text("3")).await?;
                    }
                }
            }
        }
        Ok(ws)
    })
    .await
    .map_err(|_| anyhow!("no connection within {CONNECT_TIMEOUT:?}"))?
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(close))) => bail!("closed: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the connection ended"),
        }
    }
}

/// Sockets held open, each by its own task.
pub struct Sockets {
    handles: Vec<JoinHandle<()>>,
    senders: Vec<tokio::sync::mpsc::Sender<String>>,
    stop: CancellationToken,
    /// Sockets the server ended before they were told to close.
    pub ended_early: Arc<AtomicUsize>,
    pub failed: usize,
    /// Connections the server answered "retry" (`database_unavailable`)
    /// and that were tried again.
    pub retried: usize,
    pub first_error: Option<String>,
}

/// Frames a socket task may have waiting to be sent: an open-loop sender
/// that finds it full skips the send (and counts it) instead of queueing
/// without bound.
const OUTGOING_QUEUE: usize = 64;

impl Sockets {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Queues `text` to be sent on socket `i`; false if its queue is full or
    /// it is gone.
    pub fn send(&self, i: usize, text: String) -> bool {
        self.senders
            .get(i)
            .is_some_and(|tx| tx.try_send(text).is_ok())
    }

    /// Opens `urls.len()` sockets, at most `concurrency` handshakes at once.
    pub async fn open(
        protocol: Protocol,
        urls: Vec<String>,
        concurrency: usize,
        tracker: Option<Arc<Tracker>>,
    ) -> Sockets {
        let urls = urls.into_iter().map(|url| (url, None)).collect();
        Self::open_on(protocol, urls, concurrency, tracker).await
    }

    /// [`Sockets::open`], each socket of Tidings subscribed to the channel
    /// beside its url (if any) before it counts as open.
    pub async fn open_on(
        protocol: Protocol,
        urls: Vec<(String, Option<String>)>,
        concurrency: usize,
        tracker: Option<Arc<Tracker>>,
    ) -> Sockets {
        let stop = CancellationToken::new();
        let ended_early = Arc::new(AtomicUsize::new(0));
        let results: Vec<(anyhow::Result<Ws>, usize)> = futures_util::stream::iter(urls)
            .map(|(url, channel)| async move {
                let mut tries = 1;
                loop {
                    match connect(protocol, &url, channel.as_deref()).await {
                        // Tidings' "retry": PostgreSQL could not be asked
                        // about the token.
                        Err(e)
                            if tries < SUBSCRIBE_TRIES
                                && format!("{e:#}").contains("database_unavailable") =>
                        {
                            tries += 1;
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                        outcome => return (outcome, tries),
                    }
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut sockets = Sockets {
            handles: Vec::with_capacity(results.len()),
            senders: Vec::with_capacity(results.len()),
            stop: stop.clone(),
            ended_early: ended_early.clone(),
            failed: 0,
            retried: 0,
            first_error: None,
        };
        for (result, tries) in results {
            sockets.retried += tries - 1;
            match result {
                Ok(ws) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(OUTGOING_QUEUE);
                    sockets.senders.push(tx);
                    sockets.handles.push(tokio::spawn(hold(
                        ws,
                        protocol,
                        rx,
                        tracker.clone(),
                        stop.clone(),
                        ended_early.clone(),
                    )));
                }
                Err(e) => {
                    sockets.failed += 1;
                    sockets.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        sockets
    }

    /// Closes every socket (a Close frame each, answered or not within
    /// [`CLOSE_TIMEOUT`]) and waits for their tasks.
    pub async fn close(self) {
        self.stop.cancel();
        drop(self.senders);
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

async fn hold(
    mut ws: Ws,
    protocol: Protocol,
    mut outgoing: tokio::sync::mpsc::Receiver<String>,
    tracker: Option<Arc<Tracker>>,
    stop: CancellationToken,
    ended_early: Arc<AtomicUsize>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
            }
            Some(text) = outgoing.recv() => {
                if ws.send(Message::text(text)).await.is_err() {
                    ended_early.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if protocol == Protocol::SocketIo && text.as_str() == "2" {
                        // Engine.IO's heartbeat: a client that does not
                        // answer is dropped after pingTimeout.
                        if ws.send(Message::text("3")).await.is_err() {
                            ended_early.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    } else if let Some(tracker) = &tracker {
                        tracker.received(&text);
                    }
                }
                // Pings are answered by tungstenite on the next read.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    ended_early.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The bench's own WebSocket echo server on 127.0.0.1: the floor of a
/// WebSocket round trip on this machine, with tokio-tungstenite at both
/// ends.
pub struct EchoServer {
    pub url: String,
    stop: CancellationToken,
    accept: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> anyhow::Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let accept = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(echo(stream, stop.clone()));
                }
            }
        });
        Ok(EchoServer { url, stop, accept })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.accept.await;
    }
}

async fn echo(stream: TcpStream, stop: CancellationToken) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = ws.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A JSON text of exactly `bytes` bytes (or the shortest it can be)
/// carrying the marker of `k`: what the peers broadcast and the echo server
/// returns, the size of the frame Tidings delivers.
pub fn payload(k: usize, bytes: usize) -> String {
    let head = format!(
        "{{\"type\":\"event\",\"channel\":\"bench\",\"data\":{{\"bio\":\"{}\"}},\"pad\":\"",
        marker(k)
    );
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_found_in_a_frame() {
        let frame = format!(r#"{{"type":"event","data":{{"bio":"{}"}}}}"#, marker(4711));
        assert_eq!(find_marker(&frame), Some(4711));
        assert_eq!(find_marker("bench-12"), None);
        assert_eq!(find_marker("nothing"), None);
    }

    #[test]
    fn a_payload_has_the_size_asked_for() {
        let text = payload(3, 400);
        assert_eq!(text.len(), 400);
        assert_eq!(find_marker(&text), Some(3));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }

    #[tokio::test]
    async fn the_echo_server_echoes() {
        let server = EchoServer::start().await.unwrap();
        let tracker = Tracker::new(1, 1);
        let sockets = Sockets::open(
            Protocol::Plain,
            vec![server.url.clone()],
            1,
            Some(tracker.clone()),
        )
        .await;
        tracker.sent(0, Instant::now());
        assert!(sockets.send(0, payload(0, 100)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracker.delivered() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(tracker.delivered(), 1);
        sockets.close().await;
        server.stop().await;
    }
}
