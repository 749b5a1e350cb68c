//! # tidings-schemas: what the log looks like
//!
//! Everything a reader of the Tidings log agrees on, whoever it is (decider,
//! projector, replay, an analyst's Python script):
//!
//! - [`envelope`]: the JSON event envelope and the typed payloads inside it,
//!   with the upcasters that read old versions;
//! - [`registry`]: the one list of aggregates and their deciders, from which
//!   aggregate types and the event, command and state enums follow;
//! - [`sequence`]: the one rule that decides whether an event applies;
//! - [`position`]: the opaque "this far into the log" token;
//! - [`kafka`]: topic names and client settings shared by every role;
//! - [`shortcut`]: early in-process copies of records past a log hop, merged
//!   back into log order by their readers;
//! - [`channel`]: realtime channel names and who may read them;
//! - [`asyncapi`]: the AsyncAPI 3 document of the WebSocket protocol and topics;
//! - [`json`]: the JSON Schemas under `schemas/json/`, one per event type and
//!   version, command and WebSocket frame.
//!
//! Depends only on `tidings-domain`.
#![forbid(unsafe_code)]

pub mod asyncapi;
pub mod channel;
pub mod envelope;
pub mod faults;
pub mod json;
pub mod kafka;
pub mod position;
pub mod registry;
pub mod sequence;
pub mod shortcut;

pub use channel::Channel;
pub use envelope::{AggregateRef, EventEnvelope};
pub use position::Position;
pub use registry::{AggregateType, AnyCommand, AnyState, DeciderKind, DomainEvent};
pub use sequence::Cursor;
