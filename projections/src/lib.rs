//! # tidings-projections: the read side
//!
//! - [`projector`]: consumes `tidings.events` in batches and, in ONE
//!   PostgreSQL transaction per batch, writes the read models, its own
//!   offsets and the channel outbox; then refreshes the Redis caches;
//! - [`projection`]: the `Projection` trait and the routing of each event to
//!   the projection of its decider;
//! - [`accounts`]: the account read model — how events change it and the
//!   queries the API reads it with;
//! - [`details`]: the extended profile, and who sees which of its fields;
//! - [`posts`], [`follows`], [`notifications`]: the social read models
//!   (posts with their reactions and comments, follows, notifications) and
//!   the queries that show each viewer only what it may see;
//! - [`rooms`]: rooms, participants, messages and receipts, and what each
//!   participant's and room's channel receives;
//! - [`media`]: uploaded images and videos (their bytes are in the media
//!   store, not here) and what the media sweeper looks for;
//! - [`credentials`]: the private store of password hashes (not from the
//!   log), pending password changes and reset tokens;
//! - [`mail`]: the mail outbox and the notification digests;
//! - [`outbox`]: what each realtime channel receives, and the relay that
//!   publishes it to `tidings.updates`;
//! - [`cache`]: the Redis caches, versioned so a stale write never wins and
//!   read through: Redis down means slower reads, never errors;
//! - [`db`]: connecting, migrating, and waiting for a `position`;
//! - [`lag`]: gauges of how far behind deciders and projector are;
//! - [`log`]: reading a range of the event log as analysts do (`tidings
//!   replay`, the admin API), and the `event_index` the projector keeps of
//!   where each aggregate's events stand.
//!
//! - [`rebuild`]: what `tidings rebuild` rebuilds beside the live read
//!   models, the digests both must agree on, and the switch.
//!
//! Depends on `tidings-schemas` and `tidings-domain`. Start at
//! [`projector::run`].
#![forbid(unsafe_code)]

pub mod accounts;
pub mod bulk;
pub mod cache;
pub mod credentials;
pub mod db;
pub mod details;
pub mod follows;
pub mod lag;
pub mod log;
pub mod mail;
pub mod media;
pub mod notifications;
pub mod outbox;
pub mod posts;
pub mod projection;
pub mod projector;
pub mod rebuild;
pub mod rooms;
pub mod webhooks;

pub use cache::Cache;
