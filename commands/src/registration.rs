//! The registration saga: open a pending account, claim its email and
//! username, activate it — or, when it cannot finish, abandon it and only then
//! give its claims back. [`register`] runs it; [`unwind`] undoes it (the
//! sweeper's half, for registrations that died midway).
//!
//! Every step's command id is derived from the user id (itself derived from
//! the request's command id), so a retried registration, and the sweeper that
//! cleans up one that died, send the very same commands and get their first
//! outcomes back.

use chrono::{DateTime, Utc};
use tidings_domain::{account, claim};
use tidings_schemas::AggregateRef;
use uuid::Uuid;

use tidings_schemas::Position;

use crate::bus::{BusError, CommandBus};
use crate::envelope::{AnyCommand, CommandEnvelope, Outcome};

/// The id of the account a registration request creates, derived from the
/// request's command id: a retry with the same `Idempotency-Key` is the same
/// account, and so the same steps.
pub fn user_id(command_id: Uuid) -> Uuid {
    step(command_id, "user")
}

fn step(of: Uuid, name: &str) -> Uuid {
    Uuid::new_v5(&of, name.as_bytes())
}

/// One registration: who it is for and the context its commands carry.
#[derive(Debug, Clone)]
pub struct Saga {
    pub user_id: Uuid,
    /// Normalized (lowercase) as the claim aggregates are keyed.
    pub email: String,
    pub username: String,
    pub correlation_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
}

impl Saga {
    fn envelope(
        &self,
        step: &str,
        aggregate: AggregateRef,
        command: AnyCommand,
    ) -> CommandEnvelope {
        CommandEnvelope {
            command_id: self::step(self.user_id, step),
            idempotency_key: self.idempotency_key.clone(),
            actor: Some(self.user_id),
            issued_at: self.issued_at,
            correlation_id: self.correlation_id,
            aggregate,
            command,
        }
    }

    fn value(&self, kind: claim::Kind) -> &str {
        match kind {
            claim::Kind::Email => &self.email,
            claim::Kind::Username => &self.username,
        }
    }

    pub fn open(&self, register: account::Register) -> CommandEnvelope {
        self.envelope(
            "open",
            AggregateRef::account(self.user_id),
            AnyCommand::Account(account::Command::Open(register)),
        )
    }

    pub fn claim(&self, kind: claim::Kind) -> CommandEnvelope {
        let owner = self.user_id;
        self.envelope(
            &format!("claim-{kind}"),
            AggregateRef::claim(kind, &self.value(kind).to_lowercase()),
            AnyCommand::Claim(claim::Command::Claim { kind, owner }),
        )
    }

    pub fn activate(&self) -> CommandEnvelope {
        self.envelope(
            "activate",
            AggregateRef::account(self.user_id),
            AnyCommand::Account(account::Command::Activate { at: self.issued_at }),
        )
    }

    fn abandon(&self) -> CommandEnvelope {
        self.envelope(
            "abandon",
            AggregateRef::account(self.user_id),
            AnyCommand::Account(account::Command::Abandon { at: self.issued_at }),
        )
    }

    fn release(&self, kind: claim::Kind) -> CommandEnvelope {
        let owner = self.user_id;
        self.envelope(
            &format!("release-{kind}"),
            AggregateRef::claim(kind, &self.value(kind).to_lowercase()),
            AnyCommand::Claim(claim::Command::Release { kind, owner }),
        )
    }
}

/// Why a registration did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A step was rejected (`email_taken`, `username_taken`…): the outcome
    /// says why. The claims it had won are given back.
    #[error("registration rejected")]
    Rejected(Outcome),
    /// The log could not be reached or did not answer in time; retrying the
    /// same registration (same command ids) is safe.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Runs a registration to its end: opens the pending account (from then on
/// a registration that dies midway is the sweeper's to unwind), claims the
/// email and the username at once, then activates. A lost claim is unwound
/// at once: the account abandoned, then both claims released. Returns the
/// position of every event the registration wrote.
pub async fn register(
    bus: &CommandBus,
    saga: &Saga,
    account: account::Register,
) -> Result<Position, RegistrationError> {
    let mut position = accepted(bus.send(&saga.open(account)).await?)?;
    let (email, username) = (
        saga.claim(claim::Kind::Email),
        saga.claim(claim::Kind::Username),
    );
    let (by_email, by_username) = tokio::join!(bus.send(&email), bus.send(&username));
    match (by_email?, by_username?) {
        (Outcome::Accepted { position: e }, Outcome::Accepted { position: u }) => {
            position.merge(&e);
            position.merge(&u);
        }
        (lost @ Outcome::Rejected { .. }, _) | (_, lost @ Outcome::Rejected { .. }) => {
            // Give back whichever claim was won, so the value is free again.
            match unwind(bus, saga).await {
                Ok(Unwound::Released) => {}
                outcome => tracing::warn!(
                    ?outcome,
                    user_id = %saga.user_id,
                    "unwinding a lost registration; the sweeper will retry"
                ),
            }
            return Err(RegistrationError::Rejected(lost));
        }
    }
    position.merge(&accepted(bus.send(&saga.activate()).await?)?);
    Ok(position)
}

fn accepted(outcome: Outcome) -> Result<Position, RegistrationError> {
    match outcome {
        Outcome::Accepted { position } => Ok(position),
        rejected => Err(RegistrationError::Rejected(rejected)),
    }
}

/// How an unwinding ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Unwound {
    /// Abandoned (or never opened), and both claims are free of this account.
    Released,
    /// The account was activated first: it keeps its claims.
    StillActive,
    /// The abandon was not decided (its code says why): nothing was released;
    /// try again later.
    Undecided(String),
}

/// Abandons a pending account, then releases its claims. The release comes
/// only once the abandon is decided: from then on the account can never
/// become active, so no live account loses its email or username.
pub async fn unwind(bus: &CommandBus, saga: &Saga) -> Result<Unwound, BusError> {
    match bus.send(&saga.abandon()).await? {
        Outcome::Accepted { .. } => {}
        // Never opened: no account can become active under this id.
        Outcome::Rejected { code, .. } if code == "account_not_found" => {}
        Outcome::Rejected { code, .. } if code == "account_active" => {
            return Ok(Unwound::StillActive)
        }
        Outcome::Rejected { code, .. } => return Ok(Unwound::Undecided(code)),
    }
    for kind in [claim::Kind::Email, claim::Kind::Username] {
        // Released, already free, or held by someone else (the claim this
        // registration lost): each leaves nothing of ours behind.
        bus.send(&saga.release(kind)).await?;
    }
    Ok(Unwound::Released)
}
