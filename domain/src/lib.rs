//! # tidings-domain: the pure deciders
//!
//! Every aggregate of Tidings is a module here that exports `Command`,
//! `Event`, `State`, `Error`, `decide` and `evolve`, and a unit type that
//! implements [`Decider`] with them:
//!
//! - `decide(&Command, &State) -> Result<Vec<Event>, Error>` says what happens;
//! - `evolve(State, &Event) -> State` folds what happened into the state.
//!
//! A new aggregate is a new module here and one line in the registry
//! (`schemas/src/registry.rs`), from which its aggregate type, its place in
//! the command and event enums and the schema checks follow.
//!
//! Nothing here does I/O, reads a clock or draws a random number: time and
//! ids arrive inside the command, so a decision is a function of its inputs
//! and every reader of the log folds it to the same state.
//!
//! This crate depends on nothing of Tidings. Start with [`account`], then
//! [`claim`] (how a unique email or username is enforced without a read
//! model).
#![forbid(unsafe_code)]

pub mod account;
pub mod claim;
pub mod details;
pub mod follow;
pub mod inbox;
pub mod media;
pub mod post;
pub mod room;
pub mod webhook;

#[cfg(test)]
mod testing;

/// A pure decider: the one interface the runtime knows an aggregate by.
pub trait Decider {
    /// Commands, tagged on the wire by `type` (`account.open`…).
    type Command: Clone
        + PartialEq
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned;
    /// Events, tagged on the wire by `type` (`account.opened`…).
    type Event: Clone + PartialEq + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned;
    /// The state before any event is `State::default()`.
    type State: Clone
        + PartialEq
        + std::fmt::Debug
        + Default
        + serde::Serialize
        + serde::de::DeserializeOwned;
    type Error: Rejection;

    /// Every event `type` this decider writes, each with a JSON Schema under
    /// `schemas/json/events/`.
    const EVENT_TYPES: &'static [&'static str];

    /// A command's `type`, as on the wire.
    fn command_type(command: &Self::Command) -> &'static str;

    fn decide(
        command: &Self::Command,
        state: &Self::State,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// How a rejected command maps onto the public contract. Domain errors are
/// business rules only; the API turns a kind into an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 409: the command contradicts what already happened (`email_taken`).
    Conflict,
    /// 404: the aggregate does not exist (or may not be seen).
    NotFound,
    /// 403: the actor may not do this.
    Forbidden,
    /// 422: the command is well formed but not acceptable in this state.
    Invalid,
}

/// What every domain error tells the outside world: a stable snake_case code
/// and the kind that picks its HTTP status.
pub trait Rejection: std::error::Error {
    fn code(&self) -> &'static str;
    fn kind(&self) -> ErrorKind;
}
