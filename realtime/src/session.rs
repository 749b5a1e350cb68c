//! One task per WebSocket.
//!
//! A session authenticates (bearer header or `?token=`), says `welcome`, is
//! subscribed to its own `user:{id}` channel, and then serves its client:
//! subscriptions with resume, pings, token refresh. Every update it forwards
//! is numbered by its channel's `seq`: a duplicate is dropped, and a gap is
//! filled from the outbox before the update that revealed it, so a client
//! sees each channel's updates exactly once and in order.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use tidings_api::auth::{authenticate, bearer};
use tidings_api::error::ApiError;
use tidings_api::ApiState;
use tidings_projections::outbox::{self, Update};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::frames::{ClientFrame, ServerFrame};
use crate::hub::{Command, Hub, SESSION_QUEUE};

/// How often the server pings; a client that stays silent for
/// [`CLIENT_TIMEOUT`] is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// The largest frame a client may send.
const MAX_FRAME: usize = 16 * 1024;
/// Updates read from the outbox per query when resuming or filling a gap.
const REPLAY_PAGE: i64 = 500;

const GOING_AWAY: u16 = 1001;
const UNAUTHORIZED: u16 = 4001;
const TOO_SLOW: u16 = 4009;
const PROTOCOL_ERROR: u16 = 4400;

/// Opens a WebSocket: `welcome`, then live updates of the channels
/// subscribed to (the own `user:{id}` from the start). Frames and topics:
/// `/asyncapi.json`.
#[utoipa::path(get, path = "/ws", tag = "realtime",
    params(("token" = Option<String>, Query, description = "The JWT, for clients that cannot set `Authorization`")),
    security(("bearer" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol; an invalid token gets an `error` frame and close code 4001")))]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    api: web::Data<ApiState>,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, actix_web::Error> {
    let token = bearer(&req).map(str::to_owned).or_else(|| {
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned())
    });
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(MAX_FRAME);
    actix_web::rt::spawn(serve(
        api.into_inner(),
        hub.get_ref().clone(),
        token,
        ws,
        stream,
    ));
    Ok(response)
}

struct Session {
    id: Uuid,
    user_id: Uuid,
    expires_at: Instant,
    ws: actix_ws::Session,
    api: std::sync::Arc<ApiState>,
    hub: Hub,
    queue: mpsc::Sender<Update>,
    too_slow: CancellationToken,
    /// The last `seq` sent to the client, per subscribed channel.
    last_seq: HashMap<String, i64>,
}

/// Why a session ends.
enum End {
    ClientLeft,
    Close(u16, &'static str),
}

async fn serve(
    api: std::sync::Arc<ApiState>,
    hub: Hub,
    token: Option<String>,
    mut ws: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
) {
    let who = match &token {
        Some(token) => check(&api, token).await,
        None => Err(ApiError::unauthorized(
            "unauthenticated",
            "sign in: Authorization: Bearer <token> or ?token=",
        )),
    };
    let (user_id, expires_at) = match who {
        Ok(who) => who,
        Err(error) => {
            let _ = ws
                .text(ServerFrame::error(&error.code, error.detail, None).to_json())
                .await;
            metrics::counter!("tidings_ws_closes_total", "code" => UNAUTHORIZED.to_string())
                .increment(1);
            close(ws, UNAUTHORIZED, "unauthorized").await;
            return;
        }
    };
    let (queue, mut updates) = mpsc::channel(SESSION_QUEUE);
    let mut session = Session {
        id: Uuid::new_v4(),
        user_id,
        expires_at,
        ws,
        api,
        hub,
        queue,
        too_slow: CancellationToken::new(),
        last_seq: HashMap::new(),
    };
    metrics::gauge!("tidings_ws_connections").increment(1.0);
    let end = session.run(&mut stream, &mut updates).await;
    metrics::gauge!("tidings_ws_connections").decrement(1.0);
    session.hub.send(Command::Leave {
        session: session.id,
    });
    let code = match end {
        End::ClientLeft => "client".to_owned(),
        End::Close(code, _) => code.to_string(),
    };
    metrics::counter!("tidings_ws_closes_total", "code" => code).increment(1);
    if let End::Close(code, reason) = end {
        close(session.ws, code, reason).await;
    }
}

/// Authenticates a token; on success, who it is and when it expires.
/// Authenticates a token the way the REST API does; on success, who it is
/// and when it expires.
async fn check(api: &ApiState, token: &str) -> Result<(Uuid, Instant), ApiError> {
    let who = authenticate(api, token).await?;
    let left = (who.expires_at - chrono::Utc::now().timestamp()).max(0) as u64;
    Ok((who.user_id, Instant::now() + Duration::from_secs(left)))
}

async fn close(ws: actix_ws::Session, code: u16, reason: &str) {
    let _ = ws
        .close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }))
        .await;
}

impl Session {
    async fn run(
        &mut self,
        stream: &mut actix_ws::MessageStream,
        updates: &mut mpsc::Receiver<Update>,
    ) -> End {
        let welcome = ServerFrame::Welcome {
            session_id: self.id,
            user_id: self.user_id,
            heartbeat_ms: HEARTBEAT.as_millis() as u64,
        };
        if self.send(&welcome).await.is_err() {
            return End::ClientLeft;
        }
        let own = format!("user:{}", self.user_id);
        if let Err(end) = self.subscribe(own, None, None).await {
            return end;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                message = stream.recv() => match message {
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        self.on_message(message).await
                    }
                    Some(Err(_)) => Err(End::Close(PROTOCOL_ERROR, "protocol error")),
                    None => Err(End::ClientLeft),
                },
                Some(update) = updates.recv() => self.deliver(update).await,
                _ = self.too_slow.cancelled() => Err(End::Close(TOO_SLOW, "too slow to keep up; resume with since")),
                _ = self.hub.shutdown.cancelled() => Err(End::Close(GOING_AWAY, "gateway shutting down; resume with since")),
                _ = tokio::time::sleep_until(self.expires_at) => {
                    let _ = self.send(&ServerFrame::error("token_expired", "the token expired; reconnect with a new one", None)).await;
                    Err(End::Close(UNAUTHORIZED, "token expired"))
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > CLIENT_TIMEOUT {
                        Err(End::ClientLeft)
                    } else {
                        self.ws.ping(b"").await.map_err(|_| End::ClientLeft)
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.ws
            .text(frame.to_json())
            .await
            .map_err(|_| End::ClientLeft)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => match serde_json::from_str::<ClientFrame>(&text) {
                Ok(frame) => self.on_frame(frame).await,
                Err(error) => {
                    self.send(&ServerFrame::error("bad_frame", error.to_string(), None))
                        .await
                }
            },
            Message::Ping(bytes) => self.ws.pong(&bytes).await.map_err(|_| End::ClientLeft),
            Message::Pong(_) | Message::Nop => Ok(()),
            Message::Close(_) => Err(End::ClientLeft),
            Message::Binary(_) | Message::Continuation(_) => {
                Err(End::Close(PROTOCOL_ERROR, "text frames of JSON only"))
            }
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Ping => self.send(&ServerFrame::Pong).await,
            ClientFrame::Subscribe {
                channel,
                since,
                epoch,
                reference,
            } => {
                if let Err((code, message)) = self.may_read(&channel) {
                    return self
                        .send(&ServerFrame::error(code, message, reference))
                        .await;
                }
                self.subscribe(channel, since, epoch).await
            }
            ClientFrame::Unsubscribe { channel, .. } => {
                if self.last_seq.remove(&channel).is_some() {
                    self.hub.send(Command::Unsubscribe {
                        session: self.id,
                        channel,
                    });
                }
                Ok(())
            }
            ClientFrame::Typing { channel, .. } => {
                // Typing travels in rooms, which this gateway does not serve yet.
                self.send(&ServerFrame::error(
                    "unknown_channel",
                    format!("no typing on {channel}"),
                    None,
                ))
                .await
            }
            ClientFrame::Auth { token } => match check(&self.api, &token).await {
                Ok((user_id, expires_at)) if user_id == self.user_id => {
                    self.expires_at = expires_at;
                    Ok(())
                }
                Ok(_) => {
                    let _ = self
                        .send(&ServerFrame::error(
                            "forbidden",
                            "a token of another user",
                            None,
                        ))
                        .await;
                    Err(End::Close(UNAUTHORIZED, "token of another user"))
                }
                Err(error) => {
                    self.send(&ServerFrame::error(&error.code, error.detail, None))
                        .await
                }
            },
        }
    }

    /// Which channels this user may read. Rooms and posts come with their
    /// domains; until then only the own user channel exists.
    fn may_read(&self, channel: &str) -> Result<(), (&'static str, String)> {
        match channel.split_once(':') {
            Some(("user", id)) if id == self.user_id.to_string() => Ok(()),
            Some(("user", _)) => Err(("forbidden", format!("{channel} is another user's channel"))),
            _ => Err(("unknown_channel", format!("no channel {channel}"))),
        }
    }

    /// Subscribes, then replays what the client missed since `since`.
    async fn subscribe(
        &mut self,
        channel: String,
        since: Option<i64>,
        epoch: Option<i64>,
    ) -> Result<(), End> {
        // Registered with the hub first: an update that arrives while the
        // backlog is read waits in the queue and is deduplicated by seq.
        self.hub.send(Command::Subscribe {
            session: self.id,
            channel: channel.clone(),
            queue: self.queue.clone(),
            too_slow: self.too_slow.clone(),
        });
        let (head, current_epoch) = match outbox::head(&self.api.db, &channel).await {
            Ok(head) => head,
            Err(error) => {
                tracing::warn!(%error, %channel, "reading a channel head");
                return self
                    .send(&ServerFrame::error(
                        "unavailable",
                        "try subscribing again",
                        None,
                    ))
                    .await;
            }
        };
        let resumable = since.is_some_and(|s| (0..=head).contains(&s))
            && epoch.is_none_or(|e| e == current_epoch);
        let start = if resumable {
            since.unwrap_or(head)
        } else {
            head
        };
        self.last_seq.insert(channel.clone(), start);
        self.send(&ServerFrame::Subscribed {
            channel: channel.clone(),
            seq: head,
            epoch: current_epoch,
            recovered: resumable,
        })
        .await?;
        self.catch_up(&channel, head).await
    }

    /// Sends the channel's updates from the outbox, after what the client has,
    /// up to `until`.
    async fn catch_up(&mut self, channel: &str, until: i64) -> Result<(), End> {
        while self.last_seq.get(channel).is_some_and(|&last| last < until) {
            let last = self.last_seq[channel];
            let page = match outbox::since(&self.api.db, channel, last, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, %channel, "reading the outbox");
                    return Ok(());
                }
            };
            if page.is_empty() {
                break;
            }
            for update in page {
                self.forward(update).await?;
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, update: Update) -> Result<(), End> {
        let Some(&last) = self.last_seq.get(&update.channel) else {
            return Ok(());
        };
        if update.seq > last + 1 {
            let channel = update.channel.clone();
            self.catch_up(&channel, update.seq - 1).await?;
        }
        self.forward(update).await
    }

    /// Sends an update the client does not have yet.
    async fn forward(&mut self, update: Update) -> Result<(), End> {
        let Some(last) = self.last_seq.get_mut(&update.channel) else {
            return Ok(());
        };
        if update.seq <= *last {
            return Ok(());
        }
        *last = update.seq;
        metrics::counter!("tidings_ws_deliveries_total").increment(1);
        self.send(&ServerFrame::Event {
            channel: update.channel,
            seq: update.seq,
            epoch: update.epoch,
            event: update.event,
            data: update.data,
        })
        .await
    }
}
