//! # tidings-domain: the pure deciders
//!
//! Every aggregate of Tidings is a module here that exports `Command`,
//! `Event`, `State`, `Error`, `decide` and `evolve`:
//!
//! - `decide(&Command, &State) -> Result<Vec<Event>, Error>` says what happens;
//! - `evolve(State, &Event) -> State` folds what happened into the state.
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

#[cfg(test)]
mod testing;

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
