//! # tidings-realtime: the WebSocket gateway
//!
//! Pushes projected changes to subscribers; never raw events.
//!
//! - [`frames`]: the frames of the protocol (API.md, WebSocket);
//! - [`hub`]: one task that owns every subscription, fed by a follower of
//!   `tidings.updates`, talked to over a `Command` channel;
//! - [`session`]: one task per socket — authentication, subscriptions with
//!   resume (`since`), gap filling from the outbox, heartbeats, backpressure;
//! - [`presence`]: who has a socket open, across gateways (Redis, expiring),
//!   and the presence and typing frames gateways pass each other (pub/sub);
//! - [`socket`]: the socket's writing half, frames encoded straight into the
//!   response body (reading is actix-ws's).
//!
//! Depends on `tidings-http` (tokens, problem+json) and
//! `tidings-projections` (the outbox); never on `tidings-api`, whose token
//! check it is handed as an [`Authenticator`]. Start at [`session::connect`].
#![forbid(unsafe_code)]

pub mod demo;
pub mod frames;
pub mod hub;
pub mod presence;
pub mod session;
pub mod socket;

use std::sync::Arc;

use actix_web::web;
use sqlx::PgPool;
use tidings_http::auth::Authenticator;

pub use hub::Hub;

/// What every session of the gateway shares.
pub struct Gateway {
    /// Where the channel outbox is read (resume, gap filling).
    pub db: PgPool,
    /// Checks a token against its account, as the REST API does.
    pub auth: Arc<dyn Authenticator>,
    /// Where open sessions are counted; `None` counts nothing.
    pub presence: Option<presence::Presence>,
    /// Frames a client may send per second on one socket, sustained; three
    /// times as many at once. Past them the socket closes with 4008.
    pub frames_per_second: std::num::NonZeroU32,
    /// The hot ring of recent updates (Redis), read before the outbox when
    /// a client resumes or a gap is filled; `None` reads the outbox only.
    pub ring: Option<tidings_projections::cache::Cache>,
    /// Bytes of frames one socket may have waiting for its client; past
    /// them its durable frames end the session (4009).
    pub queue_bytes: usize,
    /// Connections per address (shared with the API's limits).
    pub limits: Arc<tidings_http::limits::Limits>,
}

/// The gateway's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(session::connect, demo::page))]
pub struct RealtimeDoc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(session::connect))
        .route("/demo", web::get().to(demo::page));
}
