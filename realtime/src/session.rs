//! One task per WebSocket.
//!
//! A session authenticates (bearer header or `?token=`), says `welcome`, is
//! subscribed to its own `user:{id}` channel, and then serves its client:
//! subscriptions with resume, pings, token refresh. Every update it forwards
//! is numbered by its channel's `seq`: a duplicate is dropped, and a gap is
//! filled from the outbox before the update that revealed it, so a client
//! sees each channel's updates exactly once and in order.
//!
//! A session spends nearly all its life waiting, so its task is shaped for
//! that: the future the task holds keeps only what an idle session waits on
//! (the client's stream, its update queue, two cancellations and one
//! timer), and everything else (authentication, handling what woke it, the
//! close) runs in a box of its own for as long as it takes. Handling a
//! frame can read the outbox, whose query futures take kilobytes; inline,
//! every idle socket would carry that space for its whole life.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tidings_domain::post::Visibility;
use tidings_http::auth::{bearer, Rejection};
use tidings_http::codes::Code;
use tidings_http::limits::{Key, Verdict};
use tidings_http::problem::Problem;
use tidings_projections::credentials::PASSWORD_CHANGED_UPDATE;
use tidings_projections::outbox::{self, Update};
use tidings_projections::{follows, posts, rooms};
use tidings_schemas::channel::{Channel, ReadPolicy};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::frames::{ClientFrame, ServerFrame};
use crate::hub::{Command, Hub, Outgoing, Signal, SESSION_QUEUE, SIGNAL_QUEUE};
use crate::presence::Wire;
use crate::socket::{self, Delivery, Queued, Refused, Writer};
use crate::Gateway;

/// How often the server pings (the first ping one period after `welcome`);
/// a client that stays silent for [`CLIENT_TIMEOUT`] is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// The largest frame a client may send.
const MAX_FRAME: usize = 16 * 1024;
/// Updates read from the outbox per query when resuming or filling a gap.
const REPLAY_PAGE: i64 = 500;
/// At most one typing frame per room per this, per socket; more are dropped
/// silently (a `false` right after a relayed `true` still goes through).
pub const TYPING_EVERY: Duration = Duration::from_secs(1);
/// Rooms a socket may have typed in within [`TYPING_EVERY`].
const TYPING_ROOMS: usize = 32;
/// A socket may send this many times its frames per second at once
/// ([`Gateway::frames_per_second`]), and never fewer than it takes to
/// subscribe to [`MAX_SUBSCRIPTIONS`] channels.
const FRAME_BURST: u32 = 3;
/// Subscriptions a socket may hold, its own channel among them.
const MAX_SUBSCRIPTIONS: usize = 100;
/// Malformed frames a socket may send (each answered `bad_frame`); the
/// next one closes it with 4400.
const MAX_BAD_FRAMES: u32 = 10;

const GOING_AWAY: u16 = 1001;
/// RFC 6455 "Try Again Later": the token could not be checked (a dependency
/// is down); the client keeps its token and reconnects.
const TRY_AGAIN_LATER: u16 = 1013;
const UNAUTHORIZED: u16 = 4001;
const FORBIDDEN: u16 = 4003;
const RATE_LIMITED: u16 = 4008;
const TOO_SLOW: u16 = 4009;
const PROTOCOL_ERROR: u16 = 4400;

/// Opens a WebSocket: `welcome`, then live updates of the channels
/// subscribed to (the own `user:{id}` from the start). Frames and topics:
/// `/asyncapi.json`.
#[utoipa::path(get, path = "/ws", tag = "realtime",
    security(("bearer" = []), ("token" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; a token that is not valid gets an `error` frame and close code 4001"),
        (status = 400, description = "`bad_handshake`: not a WebSocket handshake", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no token at all", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many connections opened from this address (`Retry-After`, `RateLimit`)", body = Problem, content_type = "application/problem+json")))]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    gateway: web::Data<Gateway>,
    hub: web::Data<Hub>,
) -> HttpResponse {
    // Connections per address, counted before anything else is done.
    if let (Some(limiter), Some(peer)) = (&gateway.limits.ip_connects, req.peer_addr()) {
        if let Verdict::Refused { retry_after } = limiter.check(Key::ip(peer.ip())) {
            return limiter.refusal(retry_after);
        }
    }
    let token = bearer(&req).map(str::to_owned).or_else(|| {
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned())
    });
    // No token at all is answered in HTTP, before the upgrade: the client
    // made no attempt to sign in. A token that fails its check is told in a
    // frame instead, which browsers can read (they hide a refused upgrade).
    let Some(token) = token else {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated.as_str(),
            "sign in: Authorization: Bearer <token> or ?token=",
        )
        .response(None);
    };
    let (response, ws, stream) = match socket::open(&req, body, gateway.queue_bytes) {
        Ok(handshake) => handshake,
        Err(error) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                Code::BadHandshake.as_str(),
                error.to_string(),
            )
            .response(None)
        }
    };
    let stream = stream.max_frame_size(MAX_FRAME);
    actix_web::rt::spawn(serve(
        gateway.into_inner(),
        hub.get_ref().clone(),
        token,
        ws,
        stream,
    ));
    response
}

struct Session {
    id: Uuid,
    user_id: Uuid,
    expires_at: Instant,
    /// The token version of the session's token: a password change past it
    /// closes the session (4001).
    token_version: i32,
    /// When the next heartbeat is due.
    next_ping: Instant,
    /// When the client was last heard from.
    last_heard: Instant,
    ws: Writer,
    gateway: Arc<Gateway>,
    hub: Hub,
    queue: mpsc::Sender<Arc<Outgoing>>,
    signals: mpsc::Sender<Signal>,
    too_slow: CancellationToken,
    /// What was sent on each subscribed channel.
    sent: HashMap<String, Sent>,
    /// Per room, when typing was last relayed and what it said.
    typed: HashMap<Uuid, (Instant, bool)>,
    /// The client's frames: [`Gateway::frames_per_second`], and a burst
    /// ([`FRAME_BURST`]).
    frames: DefaultDirectRateLimiter,
    /// Malformed frames so far.
    bad_frames: u32,
}

/// What a subscribed channel has sent to the client.
struct Sent {
    /// The first `seq` sent since the channel was subscribed: from there to
    /// `last` the client has everything, and a repeated subscribe resends
    /// none of it.
    first: Option<i64>,
    /// The last `seq` sent (or the one the client had when it subscribed).
    last: i64,
    /// For a followers-only post of another user, its author: when the
    /// user stops following them, the subscription ends unless the post is
    /// still visible (see [`Session::recheck_posts_of`]).
    guard: Option<Uuid>,
}

/// What woke an idle session.
enum Wake {
    /// A message from the client, a broken stream, or its end.
    Client(Option<Result<Message, ProtocolError>>),
    Update(Arc<Outgoing>),
    Signal(Signal),
    TooSlow,
    ShuttingDown,
    /// A heartbeat is due, or the token expired.
    Timer,
}

/// Why a session ends.
enum End {
    /// The client sent a Close frame: it is answered with one (RFC 6455
    /// §5.5.1), echoing the client's code.
    ClientClosed(Option<CloseReason>),
    /// The connection ended without a Close frame, or the client went silent.
    ClientLeft,
    /// The client reads slower than its durable frames come: they would
    /// take its queue past [`Gateway::queue_bytes`].
    Stalled,
    Close(u16, &'static str),
}

async fn serve(
    gateway: Arc<Gateway>,
    hub: Hub,
    token: String,
    ws: Writer,
    mut stream: actix_ws::MessageStream,
) {
    let Some((mut session, mut updates, mut signals)) =
        Box::pin(open(gateway, hub, token, ws)).await
    else {
        return;
    };
    metrics::gauge!("tidings_ws_connections").increment(1.0);
    let end = session.run(&mut stream, &mut updates, &mut signals).await;
    metrics::gauge!("tidings_ws_connections").decrement(1.0);
    Box::pin(session.finish(end)).await;
}

/// Authenticates the client; a session for it, or `None` once a client
/// whose token fails its check has been told and closed. The token is not
/// kept: a session needs only whose it is and when it expires.
async fn open(
    gateway: Arc<Gateway>,
    hub: Hub,
    token: String,
    mut ws: Writer,
) -> Option<(
    Session,
    mpsc::Receiver<Arc<Outgoing>>,
    mpsc::Receiver<Signal>,
)> {
    let (user_id, expires_at, token_version) = match check(&gateway, &token).await {
        Ok(who) => who,
        Err(error) => {
            let frame = ServerFrame::error(&error.code, error.detail.clone(), None);
            let _ = ws.text(&frame.to_json(), Delivery::Durable);
            // Only a token found wanting is unauthorized; a check that could
            // not be made says "try again later", so a client keeps its token.
            let (code, why) = if error.code.starts_with("token_")
                || error.code == Code::InvalidToken.as_str()
                || error.code == Code::Unauthenticated.as_str()
            {
                (UNAUTHORIZED, "unauthorized")
            } else {
                (TRY_AGAIN_LATER, "try again later")
            };
            metrics::counter!("tidings_ws_closes_total", "code" => code.to_string()).increment(1);
            close(ws, Some(reason(code, why)), false);
            return None;
        }
    };
    let (queue, updates) = mpsc::channel(SESSION_QUEUE);
    let (signals, received) = mpsc::channel(SIGNAL_QUEUE);
    let now = Instant::now();
    // A client that comes back subscribes to all its channels at once.
    let burst = gateway
        .frames_per_second
        .saturating_mul(NonZeroU32::new(FRAME_BURST).expect("not zero"))
        .max(NonZeroU32::new(MAX_SUBSCRIPTIONS as u32 + 20).expect("not zero"));
    let frames =
        RateLimiter::direct(Quota::per_second(gateway.frames_per_second).allow_burst(burst));
    let session = Session {
        id: Uuid::new_v4(),
        user_id,
        expires_at,
        token_version,
        next_ping: now + HEARTBEAT,
        last_heard: now,
        ws,
        gateway,
        hub,
        queue,
        signals,
        too_slow: CancellationToken::new(),
        sent: HashMap::new(),
        typed: HashMap::new(),
        frames,
        bad_frames: 0,
    };
    Some((session, updates, received))
}

/// Authenticates a token the way the REST API does; on success, who it is
/// and when it expires.
async fn check(gateway: &Gateway, token: &str) -> Result<(Uuid, Instant, i32), Rejection> {
    let who = gateway.auth.authenticate(token).await?;
    let left = (who.expires_at - chrono::Utc::now().timestamp()).max(0) as u64;
    Ok((
        who.user_id,
        Instant::now() + Duration::from_secs(left),
        who.token_version,
    ))
}

fn reason(code: u16, description: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: Some(description.to_owned()),
    }
}

/// Queues a Close frame, after what waits (or instead of it, when
/// `discard`); the connection ends once the client has taken it.
fn close(ws: Writer, reason: Option<CloseReason>, discard: bool) {
    let _ = ws.close(reason, discard);
}

/// What became of a frame, counted, and what a refused one means for the
/// session.
fn queued(outcome: Result<Queued, Refused>) -> Result<(), End> {
    match outcome {
        Ok(Queued::Queued) => Ok(()),
        Ok(Queued::Conflated) => {
            metrics::counter!("tidings_ws_conflated_total").increment(1);
            Ok(())
        }
        Ok(Queued::Dropped) => {
            metrics::counter!("tidings_ws_dropped_total").increment(1);
            Ok(())
        }
        Err(refused) => write(Err(refused)),
    }
}

/// What a refused write means for the session.
fn write(queued: Result<(), Refused>) -> Result<(), End> {
    match queued {
        Ok(()) => Ok(()),
        Err(Refused::Closed) => Err(End::ClientLeft),
        Err(Refused::Full) => Err(End::Stalled),
    }
}

impl Session {
    /// Serves the client until the session ends. Only the waiting happens
    /// here; what woke the session is handled in a box (see the module's
    /// documentation).
    async fn run(
        &mut self,
        stream: &mut actix_ws::MessageStream,
        updates: &mut mpsc::Receiver<Arc<Outgoing>>,
        signals: &mut mpsc::Receiver<Signal>,
    ) -> End {
        if let Err(end) = Box::pin(self.start()).await {
            return end;
        }
        loop {
            let wake = tokio::select! {
                message = stream.recv() => Wake::Client(message),
                Some(update) = updates.recv() => Wake::Update(update),
                Some(signal) = signals.recv() => Wake::Signal(signal),
                _ = self.too_slow.cancelled() => Wake::TooSlow,
                _ = self.hub.shutdown.cancelled() => Wake::ShuttingDown,
                _ = tokio::time::sleep_until(self.next_ping.min(self.expires_at)) => Wake::Timer,
            };
            if let Err(end) = Box::pin(self.on_wake(wake)).await {
                return end;
            }
        }
    }

    /// Says `welcome` and subscribes the client to its own channel.
    async fn start(&mut self) -> Result<(), End> {
        let welcome = ServerFrame::Welcome {
            session_id: self.id,
            user_id: self.user_id,
            heartbeat_ms: HEARTBEAT.as_millis() as u64,
        };
        if self.send(&welcome).await.is_err() {
            return Err(End::ClientLeft);
        }
        self.join_presence().await;
        let own = format!("user:{}", self.user_id);
        self.subscribe(own, None, None, None).await
    }

    async fn on_wake(&mut self, wake: Wake) -> Result<(), End> {
        match wake {
            Wake::Client(Some(Ok(message))) => {
                self.last_heard = Instant::now();
                // Answers to the server's pings are not the client's doing.
                if !matches!(message, Message::Pong(_)) && self.frames.check().is_err() {
                    return Err(End::Close(
                        RATE_LIMITED,
                        "too many frames; slow down and reconnect",
                    ));
                }
                self.on_message(message).await
            }
            // The connection ended without a Close frame: the client went
            // away, it did not break the protocol.
            Wake::Client(Some(Err(ProtocolError::Io(error))))
                if error.kind() != std::io::ErrorKind::InvalidData =>
            {
                Err(End::ClientLeft)
            }
            Wake::Client(Some(Err(_))) => Err(End::Close(PROTOCOL_ERROR, "protocol error")),
            Wake::Client(None) => Err(End::ClientLeft),
            Wake::Update(update) => self.deliver(update).await,
            // Ephemeral frames about others, on a channel still subscribed.
            Wake::Signal(signal) => {
                if signal.user_id == self.user_id || !self.sent.contains_key(&signal.channel) {
                    return Ok(());
                }
                self.send(&signal.frame).await
            }
            Wake::TooSlow => Err(End::Stalled),
            Wake::ShuttingDown => Err(End::Close(
                GOING_AWAY,
                "gateway shutting down; resume with since",
            )),
            Wake::Timer if Instant::now() >= self.expires_at => {
                let _ = self
                    .send(&ServerFrame::error(
                        Code::TokenExpired.as_str(),
                        "the token expired; reconnect with a new one",
                        None,
                    ))
                    .await;
                Err(End::Close(UNAUTHORIZED, "token expired"))
            }
            Wake::Timer => {
                if self.last_heard.elapsed() > CLIENT_TIMEOUT {
                    return Err(End::ClientLeft);
                }
                self.next_ping = Instant::now() + HEARTBEAT;
                self.join_presence().await;
                write(self.ws.ping(b""))
            }
        }
    }

    /// Leaves the hub, counts the close, and answers or tells the client as
    /// the end calls for.
    async fn finish(self, end: End) {
        self.hub.send(Command::Leave { session: self.id });
        if let Some(presence) = &self.gateway.presence {
            if presence.leave(self.user_id, self.id).await {
                presence
                    .publish(&Wire::Presence {
                        user_id: self.user_id,
                        online: false,
                    })
                    .await;
            }
        }
        let code = match &end {
            End::ClientClosed(_) | End::ClientLeft => "client".to_owned(),
            End::Stalled => TOO_SLOW.to_string(),
            End::Close(code, _) => code.to_string(),
        };
        tracing::debug!(session = %self.id, code, "socket closed");
        metrics::counter!("tidings_ws_closes_total", "code" => code).increment(1);
        match end {
            End::ClientClosed(client) => {
                let echo = client.map(|c| CloseReason {
                    code: c.code,
                    description: None,
                });
                close(self.ws, echo, false);
            }
            End::Close(code, why) => close(self.ws, Some(reason(code, why)), false),
            // What waits for a client too slow to keep up is let go: it
            // resumes with `since`.
            End::Stalled => {
                let why = "too slow to keep up; resume with since";
                close(self.ws, Some(reason(TOO_SLOW, why)), true)
            }
            // A client that left hears nothing.
            End::ClientLeft => {}
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        queued(self.ws.text(&frame.to_json(), frame.delivery()))
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => match serde_json::from_str::<ClientFrame>(&text) {
                Ok(frame) => self.on_frame(frame).await,
                Err(error) => {
                    self.bad_frames += 1;
                    if self.bad_frames > MAX_BAD_FRAMES {
                        return Err(End::Close(PROTOCOL_ERROR, "too many malformed frames"));
                    }
                    self.send(&ServerFrame::error(
                        Code::BadFrame.as_str(),
                        error.to_string(),
                        None,
                    ))
                    .await
                }
            },
            Message::Ping(bytes) => write(self.ws.pong(&bytes)),
            Message::Pong(_) | Message::Nop => Ok(()),
            Message::Close(reason) => Err(End::ClientClosed(reason)),
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
                if !self.sent.contains_key(&channel) && self.sent.len() >= MAX_SUBSCRIPTIONS {
                    return self
                        .send(&ServerFrame::error(
                            Code::TooManySubscriptions.as_str(),
                            format!("at most {MAX_SUBSCRIPTIONS} subscriptions; unsubscribe first"),
                            reference,
                        ))
                        .await;
                }
                let guard = match self.may_read(&channel).await {
                    Ok(guard) => guard,
                    Err((code, message)) => {
                        return self
                            .send(&ServerFrame::error(code, message, reference))
                            .await
                    }
                };
                self.subscribe(channel.clone(), since, epoch, reference)
                    .await?;
                if let Some(sent) = self.sent.get_mut(&channel) {
                    sent.guard = guard;
                }
                Ok(())
            }
            ClientFrame::Unsubscribe { channel, .. } => {
                if self.sent.contains_key(&channel) {
                    self.leave(&channel);
                }
                Ok(())
            }
            ClientFrame::Typing { channel, is_typing } => self.typing(&channel, is_typing).await,
            ClientFrame::Auth { token } => match check(&self.gateway, &token).await {
                Ok((user_id, expires_at, token_version)) if user_id == self.user_id => {
                    self.expires_at = expires_at;
                    self.token_version = token_version;
                    Ok(())
                }
                Ok(_) => {
                    let _ = self
                        .send(&ServerFrame::error(
                            Code::Forbidden.as_str(),
                            "a token of another user",
                            None,
                        ))
                        .await;
                    Err(End::Close(FORBIDDEN, "token of another user"))
                }
                Err(error) => {
                    self.send(&ServerFrame::error(&error.code, error.detail, None))
                        .await
                }
            },
        }
    }

    /// Counts this session as open, and announces the user online when it
    /// made them so.
    async fn join_presence(&self) {
        if let Some(presence) = &self.gateway.presence {
            if presence.join(self.user_id, self.id).await {
                presence
                    .publish(&Wire::Presence {
                        user_id: self.user_id,
                        online: true,
                    })
                    .await;
            }
        }
    }

    /// Relays that the user types (or stopped) in a room they are in, to
    /// the other subscribers of its channel on every gateway; never logged.
    /// Only a participant may: another room's channel is `forbidden` when
    /// the user may read it (a public room), else `unknown_channel`.
    async fn typing(&mut self, channel: &str, is_typing: bool) -> Result<(), End> {
        let unknown = || {
            ServerFrame::error(
                Code::UnknownChannel.as_str(),
                format!("no room {channel} to type in"),
                None,
            )
        };
        let Ok(Channel::Room(room)) = channel.parse::<Channel>() else {
            return self.send(&unknown()).await;
        };
        let Some(presence) = self.gateway.presence.clone() else {
            return self.send(&unknown()).await;
        };
        let unavailable = |error: sqlx::Error| {
            tracing::warn!(%error, "cannot tell whether a user is in a room");
            ServerFrame::error(
                Code::Unavailable.as_str(),
                format!("{channel} cannot be checked now; try again"),
                None,
            )
        };
        match rooms::is_participant(&self.gateway.db, self.user_id, room).await {
            Ok(true) => {}
            Ok(false) => {
                let frame = match rooms::visible(&self.gateway.db, self.user_id, room).await {
                    Ok(Some(_)) => ServerFrame::error(
                        Code::Forbidden.as_str(),
                        format!("only the participants of {channel} type in it"),
                        None,
                    ),
                    Ok(None) => unknown(),
                    Err(error) => unavailable(error),
                };
                return self.send(&frame).await;
            }
            Err(error) => return self.send(&unavailable(error)).await,
        }
        let now = Instant::now();
        if self.typed.len() >= TYPING_ROOMS {
            self.typed.retain(|_, (at, _)| at.elapsed() < TYPING_EVERY);
        }
        let allowed = match self.typed.get(&room) {
            Some(&(at, was)) => now - at >= TYPING_EVERY || (was && !is_typing),
            None => self.typed.len() < TYPING_ROOMS,
        };
        if !allowed {
            return Ok(());
        }
        self.typed.insert(room, (now, is_typing));
        presence
            .publish(&Wire::Typing {
                room_id: room,
                user_id: self.user_id,
                is_typing,
            })
            .await;
        Ok(())
    }

    /// Which channels this user may read, by the channel's read policy
    /// (`tidings_schemas::channel`). A post's channel is readable by whoever
    /// may see the post (as `GET /api/posts/{id}` decides); any other post
    /// is answered as a channel that does not exist; so is a room's channel,
    /// readable by its participants and, for a public room, by anyone
    /// signed in. On success, for a followers-only post of another user, its
    /// author: the subscription lasts as long as the follow of them.
    async fn may_read(&self, channel: &str) -> Result<Option<Uuid>, (&'static str, String)> {
        let unknown = || {
            (
                Code::UnknownChannel.as_str(),
                format!("no channel {channel}"),
            )
        };
        let parsed: Channel = channel.parse().map_err(|_| unknown())?;
        match parsed.read_policy() {
            ReadPolicy::Owner(owner) if owner == self.user_id => Ok(None),
            ReadPolicy::Owner(_) => Err((
                Code::Forbidden.as_str(),
                format!("{channel} is another user's channel"),
            )),
            ReadPolicy::PostViewers(post) => {
                match posts::visible(&self.gateway.db, self.user_id, post).await {
                    Ok(Some(view)) => Ok((view.visibility == Visibility::Followers.as_str()
                        && view.author.id != self.user_id)
                        .then_some(view.author.id)),
                    Ok(None) => Err(unknown()),
                    Err(error) => {
                        tracing::warn!(%error, "cannot tell whether a post is visible");
                        Err((
                            Code::Unavailable.as_str(),
                            format!("{channel} cannot be checked now; subscribe again"),
                        ))
                    }
                }
            }
            ReadPolicy::RoomReaders(room) => {
                match rooms::visible(&self.gateway.db, self.user_id, room).await {
                    Ok(Some(_)) => Ok(None),
                    Ok(None) => Err(unknown()),
                    Err(error) => {
                        tracing::warn!(%error, "cannot tell whether a room is readable");
                        Err((
                            Code::Unavailable.as_str(),
                            format!("{channel} cannot be checked now; subscribe again"),
                        ))
                    }
                }
            }
        }
    }

    /// Acts on a membership update just passed on. One that takes a room
    /// away from this user: a departure of the user (on the room's channel
    /// or the user's own) ends the subscription to the room's channel at
    /// once, and a room turned private is checked again; either says so
    /// with an `unsubscribed` frame (`forbidden`), as a post's end does. The
    /// updates come in each channel's order, so nothing the room's channel
    /// carries after the departure reaches the session. Another user who
    /// joins the room while online is announced `online` on its channel
    /// (their presence went out before they were a participant).
    async fn on_membership(&mut self, event: &str, data: &serde_json::Value) -> Result<(), End> {
        let room = data["room_id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok());
        let Some(room) = room else {
            return Ok(());
        };
        let channel = Channel::Room(room).to_string();
        if !self.sent.contains_key(&channel) {
            return Ok(());
        }
        let departed = rooms::REVOKED.contains(&event)
            && data["user_id"].as_str() == Some(self.user_id.to_string().as_str());
        if departed {
            return self.end_subscription(&channel, "forbidden").await;
        }
        let joiner = data["user_id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok())
            .filter(|&id| id != self.user_id);
        if let (true, Some(joiner), Some(presence)) = (
            event == "room.member_joined",
            joiner,
            self.gateway.presence.clone(),
        ) {
            if presence
                .online_among(&[joiner])
                .await
                .is_some_and(|online| online.contains(&joiner))
            {
                self.send(&ServerFrame::Presence {
                    channel: channel.clone(),
                    user_id: joiner,
                    status: "online".to_owned(),
                })
                .await?;
            }
        }
        let turned_private =
            event == "room.updated" && data["is_private"] == serde_json::json!(true);
        if turned_private {
            match self.may_read(&channel).await {
                Ok(_) => {}
                Err((code, _)) if code == Code::UnknownChannel.as_str() => {
                    return self.end_subscription(&channel, "forbidden").await;
                }
                Err((code, message)) => {
                    return self.drop_channel(&channel, code, message, None).await;
                }
            }
        }
        Ok(())
    }

    /// Subscribes, then replays what the client missed since `since`. A
    /// repeated subscribe to a channel keeps what was sent: the client has it.
    async fn subscribe(
        &mut self,
        channel: String,
        since: Option<i64>,
        epoch: Option<i64>,
        reference: Option<String>,
    ) -> Result<(), End> {
        // Registered with the hub first: an update that arrives while the
        // backlog is read waits in the queue and is deduplicated by seq.
        self.hub.send(Command::Subscribe {
            session: self.id,
            channel: channel.clone(),
            queue: self.queue.clone(),
            signals: self.signals.clone(),
            too_slow: self.too_slow.clone(),
        });
        let head = match outbox::head(&self.gateway.db, &channel).await {
            Ok(head) => head,
            Err(error) => return self.unavailable(&channel, reference, error).await,
        };
        // A departure projected before the head was read is not replayed
        // (the client starts at the head), so who may read a room is asked
        // again now; one projected later arrives through the hub.
        if channel.starts_with("room:") {
            if let Err((code, message)) = self.may_read(&channel).await {
                return self.drop_channel(&channel, code, message, reference).await;
            }
        }
        let sent = self
            .sent
            .get(&channel)
            .and_then(|sent| Some((sent.first?, sent.last)));
        let (start, recovered) = match sent {
            // Each seq goes out once per subscription: the client has
            // everything from the first sent to the last, and what it asks
            // for before that is not resent (unsubscribe first to replay).
            Some((first, last)) => (last, since.is_some_and(|s| s >= first - 1)),
            None => {
                let resumable = since.is_some_and(|s| head.can_resume(s))
                    && epoch.is_none_or(|e| e == head.epoch);
                match (resumable, since) {
                    (true, Some(since)) => (since, true),
                    _ => (head.seq, false),
                }
            }
        };
        self.sent
            .entry(channel.clone())
            .or_insert(Sent {
                first: None,
                last: start,
                guard: None,
            })
            .last = start;
        // Outcomes by kind of channel (`user`, `room`, `post`): ids would
        // explode the label set.
        let outcome = match (since, recovered) {
            (None, _) => "fresh",
            (Some(_), true) => "recovered",
            (Some(_), false) => "not_recovered",
        };
        let kind = channel.split(':').next().unwrap_or_default().to_owned();
        metrics::counter!("tidings_ws_recoveries_total", "channel" => kind, "outcome" => outcome)
            .increment(1);
        self.send(&ServerFrame::Subscribed {
            channel: channel.clone(),
            seq: head.seq,
            epoch: head.epoch,
            recovered,
            position: head.position.to_string(),
        })
        .await?;
        self.catch_up(&channel, head.seq, reference).await?;
        self.present(&channel).await
    }

    /// On a room's channel: who of its participants is online now, one
    /// `presence` frame each (not the user). Read after the hub has the
    /// subscription, so a change after this read comes as a signal and
    /// none falls between; one during it may come twice. What cannot be
    /// read is skipped: the next change says it.
    async fn present(&mut self, channel: &str) -> Result<(), End> {
        let (Ok(Channel::Room(room)), Some(presence)) =
            (channel.parse::<Channel>(), self.gateway.presence.clone())
        else {
            return Ok(());
        };
        if !self.sent.contains_key(channel) {
            return Ok(());
        }
        let others: Vec<Uuid> = match rooms::participants(&self.gateway.db, room).await {
            Ok(participants) => participants
                .iter()
                .map(|p| p.user_id)
                .filter(|&id| id != self.user_id)
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "reading a room's participants");
                return Ok(());
            }
        };
        for user_id in presence.online_among(&others).await.unwrap_or_default() {
            self.send(&ServerFrame::Presence {
                channel: channel.to_owned(),
                user_id,
                status: "online".to_owned(),
            })
            .await?;
        }
        Ok(())
    }

    /// Sends the channel's updates from the outbox, after what the client has,
    /// up to `until`. What cannot be read is said, never skipped: the client
    /// is told and unsubscribed, and subscribes again with `since`.
    async fn catch_up(
        &mut self,
        channel: &str,
        until: i64,
        reference: Option<String>,
    ) -> Result<(), End> {
        while let Some(last) = self.last_sent(channel).filter(|&last| last < until) {
            // Recent updates come from the hot ring when it holds all of
            // them; anything else from the outbox.
            let ring = match &self.gateway.ring {
                Some(ring) => ring.ring_after(channel, last, until).await,
                None => None,
            };
            let source = if ring.is_some() { "ring" } else { "outbox" };
            metrics::counter!("tidings_ws_replays_total", "source" => source).increment(1);
            if let Some(mut updates) = ring {
                if let Err(error) = self.as_now(&mut updates).await {
                    return self.unavailable(channel, reference, error).await;
                }
                for update in updates {
                    self.paced().await?;
                    self.forward(Outgoing::new(update)).await?;
                }
                continue;
            }
            let mut page = match outbox::since(&self.gateway.db, channel, last, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(error) => return self.unavailable(channel, reference, error).await,
            };
            if let Err(error) = self.as_now(&mut page).await {
                return self.unavailable(channel, reference, error).await;
            }
            if page.first().is_none_or(|first| first.seq > last + 1) {
                // Pruned from the outbox (or never written): the client
                // cannot have these updates in order any more.
                return self
                    .drop_channel(
                        channel,
                        Code::HistoryTruncated.as_str(),
                        format!("{channel}: updates after seq {last} are no longer kept; subscribe again"),
                        reference,
                    )
                    .await;
            }
            for update in page {
                self.paced().await?;
                self.forward(Outgoing::new(update)).await?;
            }
        }
        Ok(())
    }

    /// Replayed updates that carry a room message's view get its view of
    /// now where it was edited or deleted since (the outbox and the ring keep
    /// what each update carried when it was made): what a replay hands out
    /// is never more than the room's history shows.
    async fn as_now(&self, updates: &mut [Update]) -> Result<(), sqlx::Error> {
        let carries_message = |update: &Update| {
            rooms::MESSAGE_VIEW_EVENTS
                .contains(&update.event.as_str())
                .then(|| update.data["id"].as_str()?.parse::<Uuid>().ok())
                .flatten()
        };
        let ids: Vec<Uuid> = updates.iter().filter_map(carries_message).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let now: HashMap<Uuid, serde_json::Value> =
            rooms::changed_since_posted(&self.gateway.db, &ids)
                .await?
                .into_iter()
                .map(|view| {
                    (
                        view.id,
                        serde_json::to_value(view).expect("views serialize"),
                    )
                })
                .collect();
        for update in updates {
            if let Some(view) = carries_message(update).and_then(|id| now.get(&id)) {
                update.data = view.clone();
            }
        }
        Ok(())
    }

    /// Waits, during a replay, until the client has taken most of what
    /// waits for it: a client that resumes over more than its queue holds
    /// gets the backlog at its own pace. One that takes nothing for
    /// [`CLIENT_TIMEOUT`], or whose live updates overflow meanwhile, is too
    /// slow (4009).
    async fn paced(&mut self) -> Result<(), End> {
        tokio::select! {
            _ = self.ws.writable() => Ok(()),
            _ = self.too_slow.cancelled() => Err(End::Stalled),
            _ = tokio::time::sleep(CLIENT_TIMEOUT) => Err(End::Stalled),
        }
    }

    /// The last `seq` sent on a subscribed channel.
    fn last_sent(&self, channel: &str) -> Option<i64> {
        self.sent.get(channel).map(|sent| sent.last)
    }

    /// A channel whose outbox could not be read.
    async fn unavailable(
        &mut self,
        channel: &str,
        reference: Option<String>,
        error: sqlx::Error,
    ) -> Result<(), End> {
        tracing::warn!(%error, %channel, "reading the outbox");
        let message = match self.last_sent(channel) {
            Some(last) => format!("{channel} could not be read; subscribe again with since {last}"),
            None => format!("{channel} could not be read; subscribe again"),
        };
        self.drop_channel(channel, Code::Unavailable.as_str(), message, reference)
            .await
    }

    /// Ends a subscription the session cannot serve in order, and says why.
    async fn drop_channel(
        &mut self,
        channel: &str,
        code: &str,
        message: String,
        reference: Option<String>,
    ) -> Result<(), End> {
        self.leave(channel);
        self.send(&ServerFrame::error(code, message, reference))
            .await
    }

    /// Forgets a subscription. The own channel stays with the hub even when
    /// the client no longer wants it: the end of a follow comes on it, and
    /// still ends what the follow let the user read ([`Session::deliver`]).
    fn leave(&mut self, channel: &str) {
        self.sent.remove(channel);
        if channel != self.own_channel() {
            self.hub.send(Command::Unsubscribe {
                session: self.id,
                channel: channel.to_owned(),
            });
        }
    }

    fn own_channel(&self) -> String {
        Channel::User(self.user_id).to_string()
    }

    /// Ends a subscription the user may no longer have, and says so with an
    /// `unsubscribed` frame (`reason`: `forbidden` or `deleted`).
    async fn end_subscription(&mut self, channel: &str, reason: &str) -> Result<(), End> {
        self.leave(channel);
        metrics::counter!("tidings_ws_subscriptions_ended_total", "reason" => reason.to_owned())
            .increment(1);
        self.send(&ServerFrame::Unsubscribed {
            channel: channel.to_owned(),
            reason: reason.to_owned(),
        })
        .await
    }

    /// After a follow of `followee` ended: ends every subscription to a
    /// followers-only post of theirs that the user may no longer see. The
    /// update that says so is published only once the unfollow is
    /// committed, so the read sees it; a post still visible (followed
    /// again since) keeps its subscription. A post that cannot be checked
    /// is dropped (`unavailable`, subscribe again): never kept unchecked.
    async fn recheck_posts_of(&mut self, followee: Uuid) -> Result<(), End> {
        let guarded: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, sent)| sent.guard == Some(followee))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in guarded {
            let Ok(Channel::Post(post)) = channel.parse::<Channel>() else {
                continue;
            };
            match posts::visible(&self.gateway.db, self.user_id, post).await {
                Ok(Some(_)) => {}
                Ok(None) => self.end_subscription(&channel, "forbidden").await?,
                Err(error) => {
                    tracing::warn!(%error, %channel, "cannot tell whether a post is still visible");
                    let message = format!("{channel} cannot be checked now; subscribe again");
                    self.drop_channel(&channel, Code::Unavailable.as_str(), message, None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// What an update ends beyond itself: the follow of whom it ends, on the
    /// user's own channel.
    fn unfollowed(&self, update: &Update) -> Option<Uuid> {
        if update.event != follows::FOLLOW_REMOVED || update.channel != self.own_channel() {
            return None;
        }
        update.data["followee"].as_str()?.parse().ok()
    }

    async fn deliver(&mut self, outgoing: Arc<Outgoing>) -> Result<(), End> {
        let update = &outgoing.update;
        let Some(last) = self.last_sent(&update.channel) else {
            // The own channel, unsubscribed by the client (see `leave`).
            return match self.unfollowed(update) {
                Some(followee) => self.recheck_posts_of(followee).await,
                None => Ok(()),
            };
        };
        if update.seq > last + 1 {
            let channel = update.channel.clone();
            self.catch_up(&channel, update.seq - 1, None).await?;
        }
        self.forward(outgoing).await
    }

    /// Sends an update the client does not have yet.
    async fn forward(&mut self, outgoing: Arc<Outgoing>) -> Result<(), End> {
        let update = &outgoing.update;
        let Some(sent) = self.sent.get_mut(&update.channel) else {
            return Ok(());
        };
        if update.seq <= sent.last {
            return Ok(());
        }
        sent.last = update.seq;
        sent.first.get_or_insert(update.seq);
        metrics::counter!("tidings_ws_deliveries_total").increment(1);
        let unfollowed = self.unfollowed(update);
        let deleted = (update.event == posts::POST_DELETED).then(|| update.channel.clone());
        let revoked = update.event == PASSWORD_CHANGED_UPDATE
            && update.channel == format!("user:{}", self.user_id)
            && update.data["token_version"]
                .as_i64()
                .is_some_and(|v| v > i64::from(self.token_version));
        // Membership changes are rare: only their copy is kept past the send.
        let membership = update
            .event
            .starts_with("room.")
            .then(|| (update.event.clone(), update.data.clone()));
        queued(self.ws.encoded(outgoing.frame()))?;
        if revoked {
            // The password changed after this session's token was issued:
            // the token no longer works anywhere, nor does its socket.
            let _ = self
                .send(&ServerFrame::error(
                    Code::TokenRevoked.as_str(),
                    "the token was revoked by a password change",
                    None,
                ))
                .await;
            return Err(End::Close(UNAUTHORIZED, "token revoked"));
        }
        // What the update ends comes after it: the client sees why.
        if let Some(followee) = unfollowed {
            self.recheck_posts_of(followee).await?;
        }
        if let Some(channel) = deleted {
            self.end_subscription(&channel, "deleted").await?;
        }
        match membership {
            Some((event, data)) => self.on_membership(&event, &data).await,
            None => Ok(()),
        }
    }
}
