//! # tidings-commands: from a request to events in the log
//!
//! - [`envelope`]: the command envelope on `tidings.commands` and the
//!   outcome on `tidings.command-results`;
//! - [`bus`]: what the API uses to send a command and await its outcome;
//! - [`decider`]: the decider runtime — partition ownership through a
//!   consumer group, state rebuilt from `tidings.events` (with snapshots), the
//!   pure `decide`, events written with an idempotent producer and read back
//!   before the outcome is published;
//! - [`registration`]: the registration saga over account and claims, and its unwinding;
//! - [`aggregate`]: the dispatch from an aggregate type to its domain decider.
//!
//! Depends on `tidings-schemas` and `tidings-domain`. Start reading at
//! [`decider::run`].
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod bus;
pub mod decider;
pub mod envelope;
pub mod registration;

pub use bus::{BusError, CommandBus};
pub use envelope::{AnyCommand, CommandEnvelope, CommandResult, Outcome};
