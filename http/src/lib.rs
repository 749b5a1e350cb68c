//! # tidings-http: what the HTTP roles share
//!
//! The REST API (`tidings-api`) and the WebSocket gateway
//! (`tidings-realtime`) both take bearer tokens and both answer errors as
//! problem+json; neither depends on the other, both depend on this.
//!
//! - [`auth`]: JWTs, the bearer header, and the [`auth::Authenticator`] a
//!   gateway is given to check a token against its account;
//! - [`problem`]: `application/problem+json` with a stable `code`;
//! - [`codes`]: every error code a client can see, its status and meaning;
//! - [`limits`]: rate limits per user, address or account, and the 429.
//!
//! Depends on nothing of Tidings. Start at [`auth::Jwt`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod codes;
pub mod limits;
pub mod outbound;
pub mod problem;
