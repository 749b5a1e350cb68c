//! An account: who a user is, and the profile others see.
//!
//! Registration is a small saga over three aggregates, and the account is
//! opened first, as *pending*: then the email and the username are claimed on
//! their [`crate::claim`] aggregates (an account sees only itself, so it
//! cannot decide uniqueness), then the account is activated. A pending
//! account that is never activated (its registration died midway) is
//! abandoned by a sweeper, and only then are its claims released: abandoning
//! and activating are decided by the same single writer, so a late
//! activation after an abandon is refused and no claim is ever freed under a
//! live account.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::details::{Details, DetailsUpdated, UpdateDetails};
use crate::{ErrorKind, Rejection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Opens a pending account, before its email and username are claimed.
    #[serde(rename = "account.open")]
    Open(Register),
    /// Activates a pending account once both claims are held.
    #[serde(rename = "account.activate")]
    Activate { at: DateTime<Utc> },
    /// Gives up a pending account whose registration did not finish.
    #[serde(rename = "account.abandon")]
    Abandon { at: DateTime<Utc> },
    #[serde(rename = "account.update_profile")]
    UpdateProfile(UpdateProfile),
    /// Changes the extended profile ([`crate::details`]).
    #[serde(rename = "account.update_details")]
    UpdateDetails(UpdateDetails),
    /// Puts a new password in force (its hash waits in the API's private
    /// store) and revokes every token issued before.
    #[serde(rename = "account.change_password")]
    ChangePassword(ChangePassword),
}

/// What a registration asks for. The password is not here: its hash is kept
/// by the API in its private store (`credentials`), never in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub at: DateTime<Utc>,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears an
/// optional field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub bio: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub avatar_url: Option<Option<String>>,
    pub at: DateTime<Utc>,
}

/// Reads a field that is present as `Some`, even when it is `null`: a
/// present `null` clears the field, an absent one leaves it.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A password change, by a reset or by the signed-in owner. No hash here:
/// the API keeps the new one under (user, `token_version`) in its private
/// store, and the projector puts it in force when it applies the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePassword {
    /// The version the change moves the tokens to: the account's current
    /// one + 1, as the API read it. Anything else means another change came
    /// in between, and this one is refused rather than applied on top.
    pub token_version: i32,
    pub reason: PasswordChangeReason,
    pub at: DateTime<Utc>,
}

/// Why a password changed, for the confirmation mail and for analysts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChangeReason {
    /// Through `POST /api/auth/password/reset` and a token sent by mail.
    Reset,
    /// Through `POST /api/auth/password/change`, with the current password.
    Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "account.opened")]
    Opened(Opened),
    #[serde(rename = "account.registered")]
    Registered(Registered),
    #[serde(rename = "account.abandoned")]
    Abandoned { abandoned_at: DateTime<Utc> },
    #[serde(rename = "account.profile_updated")]
    ProfileUpdated(ProfileUpdated),
    #[serde(rename = "account.details_updated")]
    DetailsUpdated(DetailsUpdated),
    #[serde(rename = "account.password_changed")]
    PasswordChanged(PasswordChanged),
}

/// The password in force changed: tokens of an older version stop working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub token_version: i32,
    pub reason: PasswordChangeReason,
    pub changed_at: DateTime<Utc>,
}

/// A pending account: what the registration asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub opened_at: DateTime<Utc>,
}

/// The account is live: everything a projection needs to show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub registered_at: DateTime<Utc>,
}

/// The whole profile after the change, so that a projection needs no earlier
/// state to show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum State {
    #[default]
    Unregistered,
    Pending(Opened),
    Active(Account),
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    /// The extended profile; absent from states kept before it existed.
    /// Boxed: most accounts never set one, and every aggregate's state
    /// shares the size of the largest.
    #[serde(default)]
    pub details: Box<Details>,
    /// Moved by each password change; states snapshotted before there was
    /// one read as 0.
    #[serde(default)]
    pub token_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 409 `account_exists`: the id is already taken by an account.
    #[error("this account is already registered")]
    AlreadyRegistered,
    /// 404 `account_not_found`.
    #[error("no such account")]
    NotRegistered,
    /// 409 `registration_expired`: the registration took too long and was
    /// abandoned; start again.
    #[error("this registration took too long and was abandoned; register again")]
    Expired,
    /// 409 `account_active`: an active account is not abandoned.
    #[error("this account is active")]
    Active,
    /// 409 `password_change_conflict`: another password change came first;
    /// try again.
    #[error("another password change came first; try again")]
    PasswordChangeConflict,
}

impl Rejection for Error {
    fn code(&self) -> &'static str {
        match self {
            Error::AlreadyRegistered => "account_exists",
            Error::NotRegistered => "account_not_found",
            Error::Expired => "registration_expired",
            Error::Active => "account_active",
            Error::PasswordChangeConflict => "password_change_conflict",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::NotRegistered => ErrorKind::NotFound,
            Error::AlreadyRegistered
            | Error::Expired
            | Error::Active
            | Error::PasswordChangeConflict => ErrorKind::Conflict,
        }
    }
}

pub fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
    match (command, state) {
        (Command::Open(r), State::Unregistered) => Ok(vec![Event::Opened(Opened {
            user_id: r.user_id,
            username: r.username.clone(),
            email: r.email.clone(),
            display_name: r.display_name.clone(),
            opened_at: r.at,
        })]),
        (Command::Open(_), _) => Err(Error::AlreadyRegistered),

        (Command::Activate { at }, State::Pending(o)) => Ok(vec![Event::Registered(Registered {
            user_id: o.user_id,
            username: o.username.clone(),
            email: o.email.clone(),
            display_name: o.display_name.clone(),
            registered_at: *at,
        })]),
        (Command::Activate { .. }, State::Active(_)) => Ok(vec![]),
        (Command::Activate { .. }, State::Abandoned) => Err(Error::Expired),
        (Command::Activate { .. }, State::Unregistered) => Err(Error::NotRegistered),

        (Command::Abandon { at }, State::Pending(_)) => {
            Ok(vec![Event::Abandoned { abandoned_at: *at }])
        }
        (Command::Abandon { .. }, State::Abandoned) => Ok(vec![]),
        (Command::Abandon { .. }, State::Active(_)) => Err(Error::Active),
        (Command::Abandon { .. }, State::Unregistered) => Err(Error::NotRegistered),

        (Command::UpdateProfile(u), State::Active(account)) => {
            let updated = ProfileUpdated {
                display_name: u
                    .display_name
                    .clone()
                    .unwrap_or_else(|| account.display_name.clone()),
                bio: u.bio.clone().unwrap_or_else(|| account.bio.clone()),
                avatar_url: u
                    .avatar_url
                    .clone()
                    .unwrap_or_else(|| account.avatar_url.clone()),
                updated_at: u.at,
            };
            let unchanged = updated.display_name == account.display_name
                && updated.bio == account.bio
                && updated.avatar_url == account.avatar_url;
            // An update that changes nothing appends nothing: a retried PATCH
            // is harmless and subscribers are not woken for nothing.
            Ok(if unchanged {
                vec![]
            } else {
                vec![Event::ProfileUpdated(updated)]
            })
        }
        (Command::UpdateProfile(_), _) => Err(Error::NotRegistered),

        (Command::UpdateDetails(u), State::Active(account)) => {
            let details = u.apply_to(&account.details);
            // As for the profile: a change to nothing appends nothing.
            Ok(if details == *account.details {
                vec![]
            } else {
                vec![Event::DetailsUpdated(DetailsUpdated {
                    details,
                    updated_at: u.at,
                })]
            })
        }
        (Command::UpdateDetails(_), _) => Err(Error::NotRegistered),
        (Command::ChangePassword(c), State::Active(account)) => change_password(c, account),
        (Command::ChangePassword(_), _) => Err(Error::NotRegistered),
    }
}

/// A password change applies on the version it was decided from, so that
/// of two racing changes one is refused instead of both taking a version.
fn change_password(c: &ChangePassword, account: &Account) -> Result<Vec<Event>, Error> {
    if c.token_version != account.token_version + 1 {
        return Err(Error::PasswordChangeConflict);
    }
    Ok(vec![Event::PasswordChanged(PasswordChanged {
        token_version: c.token_version,
        reason: c.reason,
        changed_at: c.at,
    })])
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state, event) {
        (State::Unregistered, Event::Opened(o)) => State::Pending(o.clone()),
        (State::Pending(_), Event::Registered(r)) => State::Active(Account {
            user_id: r.user_id,
            username: r.username.clone(),
            email: r.email.clone(),
            display_name: r.display_name.clone(),
            bio: None,
            avatar_url: None,
            details: Box::default(),
            token_version: 0,
        }),
        (State::Pending(_), Event::Abandoned { .. }) => State::Abandoned,
        (State::Active(account), Event::ProfileUpdated(u)) => State::Active(Account {
            display_name: u.display_name.clone(),
            bio: u.bio.clone(),
            avatar_url: u.avatar_url.clone(),
            ..account
        }),
        (State::Active(account), Event::DetailsUpdated(u)) => State::Active(Account {
            details: Box::new(u.details.clone()),
            ..account
        }),
        (State::Active(account), Event::PasswordChanged(p)) => State::Active(Account {
            token_version: p.token_version,
            ..account
        }),
        // The sequence rule admits only events that follow the state they
        // were decided on, so any other pair cannot occur; keep the state.
        (state, _) => state,
    }
}

/// The account decider, for the runtime.
pub struct AccountDecider;

impl crate::Decider for AccountDecider {
    type Command = Command;
    type Event = Event;
    type State = State;
    type Error = Error;

    const EVENT_TYPES: &'static [&'static str] = &[
        "account.opened",
        "account.registered",
        "account.abandoned",
        "account.profile_updated",
        "account.details_updated",
        "account.password_changed",
    ];

    fn command_type(command: &Command) -> &'static str {
        match command {
            Command::Open(_) => "account.open",
            Command::Activate { .. } => "account.activate",
            Command::Abandon { .. } => "account.abandon",
            Command::UpdateProfile(_) => "account.update_profile",
            Command::UpdateDetails(_) => "account.update_details",
            Command::ChangePassword(_) => "account.change_password",
        }
    }

    fn decide(command: &Command, state: &State) -> Result<Vec<Event>, Error> {
        decide(command, state)
    }

    fn evolve(state: State, event: &Event) -> State {
        evolve(state, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn alice() -> Uuid {
        Uuid::from_u128(1)
    }

    fn given(events: impl IntoIterator<Item = Event>) -> testing::Given<State, Event> {
        testing::given(events, evolve)
    }

    fn open() -> Command {
        Command::Open(Register {
            user_id: alice(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            at: at(),
        })
    }

    fn opened() -> Event {
        Event::Opened(Opened {
            user_id: alice(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            opened_at: at(),
        })
    }

    fn activated() -> Event {
        Event::Registered(Registered {
            user_id: alice(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            registered_at: at(),
        })
    }

    fn abandoned() -> Event {
        Event::Abandoned { abandoned_at: at() }
    }

    fn activate() -> Command {
        Command::Activate { at: at() }
    }

    fn abandon() -> Command {
        Command::Abandon { at: at() }
    }

    #[test]
    fn a_registration_opens_a_pending_account() {
        given([]).when(open(), decide).then([opened()]);
    }

    #[test]
    fn activating_a_pending_account_registers_it_with_what_was_opened() {
        given([opened()])
            .when(activate(), decide)
            .then([activated()]);
    }

    #[test]
    fn opening_twice_is_rejected() {
        given([opened()])
            .when(open(), decide)
            .then_err(Error::AlreadyRegistered);
        given([opened(), activated()])
            .when(open(), decide)
            .then_err(Error::AlreadyRegistered);
    }

    #[test]
    fn activating_again_appends_nothing() {
        given([opened(), activated()])
            .when(activate(), decide)
            .then([]);
    }

    #[test]
    fn a_pending_account_can_be_abandoned_and_then_never_activated() {
        given([opened()])
            .when(abandon(), decide)
            .then([abandoned()]);
        given([opened(), abandoned()])
            .when(activate(), decide)
            .then_err(Error::Expired);
        given([opened(), abandoned()])
            .when(abandon(), decide)
            .then([]);
    }

    #[test]
    fn an_active_account_is_not_abandoned() {
        given([opened(), activated()])
            .when(abandon(), decide)
            .then_err(Error::Active);
    }

    #[test]
    fn a_pending_account_has_no_profile_to_update() {
        let update = Command::UpdateProfile(UpdateProfile {
            bio: Some(Some("hello".into())),
            at: at(),
            ..Default::default()
        });
        given([opened()])
            .when(update, decide)
            .then_err(Error::NotRegistered);
    }

    #[test]
    fn updating_a_profile_carries_the_whole_new_profile() {
        let update = Command::UpdateProfile(UpdateProfile {
            bio: Some(Some("hello".into())),
            at: at(),
            ..Default::default()
        });
        given([opened(), activated()])
            .when(update, decide)
            .then([Event::ProfileUpdated(ProfileUpdated {
                display_name: "Alice".into(),
                bio: Some("hello".into()),
                avatar_url: None,
                updated_at: at(),
            })]);
    }

    #[test]
    fn clearing_a_field_is_an_update() {
        let set = Event::ProfileUpdated(ProfileUpdated {
            display_name: "Alice".into(),
            bio: Some("hello".into()),
            avatar_url: None,
            updated_at: at(),
        });
        let clear = Command::UpdateProfile(UpdateProfile {
            bio: Some(None),
            at: at(),
            ..Default::default()
        });
        given([opened(), activated(), set])
            .when(clear, decide)
            .then([Event::ProfileUpdated(ProfileUpdated {
                display_name: "Alice".into(),
                bio: None,
                avatar_url: None,
                updated_at: at(),
            })]);
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing() {
        let same = Command::UpdateProfile(UpdateProfile {
            display_name: Some("Alice".into()),
            at: at(),
            ..Default::default()
        });
        given([opened(), activated()]).when(same, decide).then([]);
    }

    #[test]
    fn a_cleared_field_survives_serialization() {
        let clear = Command::UpdateProfile(UpdateProfile {
            bio: Some(None),
            at: at(),
            ..Default::default()
        });
        let json = serde_json::to_string(&clear).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), clear);
    }

    #[test]
    fn updating_an_unregistered_account_is_rejected() {
        let update = Command::UpdateProfile(UpdateProfile {
            display_name: Some("Bob".into()),
            at: at(),
            ..Default::default()
        });
        given([])
            .when(update, decide)
            .then_err(Error::NotRegistered);
    }

    fn change_password(token_version: i32, reason: PasswordChangeReason) -> Command {
        Command::ChangePassword(ChangePassword {
            token_version,
            reason,
            at: at(),
        })
    }

    fn password_changed(token_version: i32, reason: PasswordChangeReason) -> Event {
        Event::PasswordChanged(PasswordChanged {
            token_version,
            reason,
            changed_at: at(),
        })
    }

    #[test]
    fn changing_the_password_moves_the_token_version_by_one() {
        given([opened(), activated()])
            .when(change_password(1, PasswordChangeReason::Reset), decide)
            .then([password_changed(1, PasswordChangeReason::Reset)]);
        given([
            opened(),
            activated(),
            password_changed(1, PasswordChangeReason::Reset),
        ])
        .when(change_password(2, PasswordChangeReason::Change), decide)
        .then([password_changed(2, PasswordChangeReason::Change)]);
    }

    #[test]
    fn a_change_decided_from_an_old_version_is_refused() {
        // Two changes read version 0; the first took version 1.
        given([
            opened(),
            activated(),
            password_changed(1, PasswordChangeReason::Change),
        ])
        .when(change_password(1, PasswordChangeReason::Reset), decide)
        .then_err(Error::PasswordChangeConflict);
        given([opened(), activated()])
            .when(change_password(3, PasswordChangeReason::Change), decide)
            .then_err(Error::PasswordChangeConflict);
    }

    #[test]
    fn only_an_active_account_changes_its_password() {
        given([opened()])
            .when(change_password(1, PasswordChangeReason::Reset), decide)
            .then_err(Error::NotRegistered);
        given([])
            .when(change_password(1, PasswordChangeReason::Reset), decide)
            .then_err(Error::NotRegistered);
    }

    #[test]
    fn a_state_snapshotted_before_password_changes_reads_version_zero() {
        let json = serde_json::json!({"Active": {"user_id": alice(), "username": "alice",
            "email": "alice@example.com", "display_name": "Alice", "bio": null, "avatar_url": null}});
        let State::Active(account) = serde_json::from_value::<State>(json).unwrap() else {
            panic!("an active account");
        };
        assert_eq!(account.token_version, 0);
    }
}
