//! # Tidings
//!
//! An event-sourced CQRS backend for real-time social and messaging apps.
//! This package is the one `tidings` binary; each role lives in its crate:
//!
//! | crate | role |
//! | --- | --- |
//! | `domain/` | pure deciders (`decide`, `evolve`) |
//! | `schemas/` | the log's formats: envelope, JSON Schemas, sequence rule, positions, topics |
//! | `commands/` | command envelopes, the command bus, the decider runtime |
//! | `projections/` | projector, read models, Redis caches, channel outbox and relay |
//! | `api/` | the REST API (actix-web) |
//! | `realtime/` | the WebSocket gateway (actix-ws) |
//!
//! Here: [`settings`] (typed configuration), [`app::Application`], which
//! starts the roles asked for against the services given, and [`sweeper`],
//! which unwinds registrations that died midway, [`media_sweeper`], which
//! deletes media items no post took, and [`mailer`], which sends the mail
//! outbox and queues notification digests; [`replay`] is `tidings replay`,
//! the analysts' export of the event log, [`rebuild`] is `tidings
//! rebuild`, the read models built again beside the live ones, and
//! [`webhooks`] is the webhook dispatcher (events → signed, retried
//! deliveries). Read
//! `../shared/DESIGN.md` for why the pieces are shaped as they are.
#![forbid(unsafe_code)]

pub mod app;
pub mod mailer;
pub mod media_sweeper;
pub mod rebuild;
pub mod replay;
pub mod settings;
pub mod sweeper;
pub mod telemetry;
pub mod webhooks;

pub use app::Application;
pub use settings::{Role, Settings};
