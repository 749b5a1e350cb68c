//! # tidings-realtime: the WebSocket gateway
//!
//! Pushes projected changes to subscribers; never raw events.
//!
//! - [`frames`]: the frames of the protocol (API.md, WebSocket);
//! - [`hub`]: one task that owns every subscription, fed by a follower of
//!   `tidings.updates`, talked to over a `Command` channel;
//! - [`session`]: one task per socket — authentication, subscriptions with
//!   resume (`since`), gap filling from the outbox, heartbeats, backpressure.
//!
//! Depends on `tidings-api` (authentication) and `tidings-projections` (the
//! outbox). Start at [`session::connect`].
#![forbid(unsafe_code)]

pub mod frames;
pub mod hub;
pub mod session;

use actix_web::web;

pub use hub::Hub;

/// The gateway's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(session::connect))]
pub struct RealtimeDoc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(session::connect));
}
