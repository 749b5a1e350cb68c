//! The registry of aggregates: every decider of `tidings-domain`, and the
//! aggregate types it decides for. This is the one list of aggregates in
//! Tidings; everything that enumerates them follows from it:
//!
//! - [`AggregateType`]: `aggregate.type` of envelopes, hence the Kafka key
//!   (`<type>:<id>`) of an aggregate's commands and events;
//! - [`DomainEvent`], [`AnyCommand`], [`AnyState`]: the event, command and
//!   state of any aggregate, with `decide` and `evolve` dispatched to its
//!   decider;
//! - the schema checks: every event type a decider declares must have its
//!   JSON Schema under `schemas/json/events/` (a test below).
//!
//! Matches over these enums are exhaustive everywhere, so after a new line
//! here the compiler lists every place that still has to say what the new
//! aggregate means (its projection, for one).
//!
//! To add an aggregate: write its module in `tidings-domain` with a type that
//! implements [`Decider`], add one line below, add the JSON Schemas of its
//! events, then follow the compiler.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_domain::{Decider, ErrorKind, Rejection};

/// A command's rejection by its decider, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub code: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

impl Rejected {
    fn of(error: &impl Rejection) -> Self {
        Rejected {
            code: error.code(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// A command sent to an aggregate of another decider.
    fn wrong_aggregate() -> Self {
        Rejected {
            code: "wrong_aggregate",
            kind: ErrorKind::Invalid,
            message: "this command does not belong to this aggregate".into(),
        }
    }
}

macro_rules! registry {
    ($( $decider:ident => $implementation:ty { $( $kind:ident = $name:literal ),+ $(,)? } )+) => {
        /// The type of an aggregate: `aggregate.type` in envelopes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum AggregateType {
            $( $( #[serde(rename = $name)] $kind, )+ )+
        }

        impl AggregateType {
            pub const ALL: &'static [AggregateType] = &[$( $( AggregateType::$kind, )+ )+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( $( AggregateType::$kind => $name, )+ )+
                }
            }

            /// The decider of aggregates of this type.
            pub fn decider(self) -> DeciderKind {
                match self {
                    $( $( AggregateType::$kind => DeciderKind::$decider, )+ )+
                }
            }
        }

        /// One decider of `tidings-domain`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DeciderKind {
            $( $decider, )+
        }

        impl DeciderKind {
            pub const ALL: &'static [DeciderKind] = &[$( DeciderKind::$decider, )+];

            /// Every event type this decider writes.
            pub fn event_types(self) -> &'static [&'static str] {
                match self {
                    $( DeciderKind::$decider => <$implementation as Decider>::EVENT_TYPES, )+
                }
            }
        }

        /// A domain event of any aggregate, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum DomainEvent {
            $( $decider(<$implementation as Decider>::Event), )+
        }

        impl DomainEvent {
            /// The serde form: `{"type": …, "data": …}`.
            pub(crate) fn to_tagged(&self) -> Value {
                match self {
                    $( DomainEvent::$decider(event) => serde_json::to_value(event), )+
                }
                .expect("domain events serialize to JSON")
            }

            /// Reads the serde form as an event of `decider`.
            pub(crate) fn from_tagged(decider: DeciderKind, tagged: Value) -> Result<Self, serde_json::Error> {
                match decider {
                    $( DeciderKind::$decider => serde_json::from_value(tagged).map(DomainEvent::$decider), )+
                }
            }
        }

        /// A command of any aggregate. Each decider's commands carry their own
        /// `type` tag (`account.open`, `claim.claim`…), so they never overlap.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(untagged)]
        pub enum AnyCommand {
            $( $decider(<$implementation as Decider>::Command), )+
        }

        impl AnyCommand {
            /// The command's `type`, as on the wire.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( AnyCommand::$decider(command) => <$implementation as Decider>::command_type(command), )+
                }
            }
        }

        /// The state of any aggregate.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum AnyState {
            $( $decider(<$implementation as Decider>::State), )+
        }

        impl AnyState {
            pub fn initial(kind: AggregateType) -> Self {
                match kind.decider() {
                    $( DeciderKind::$decider => AnyState::$decider(Default::default()), )+
                }
            }

            pub fn decide(&self, command: &AnyCommand) -> Result<Vec<DomainEvent>, Rejected> {
                match (self, command) {
                    $(
                        (AnyState::$decider(state), AnyCommand::$decider(command)) => {
                            <$implementation as Decider>::decide(command, state)
                                .map(|events| events.into_iter().map(DomainEvent::$decider).collect())
                                .map_err(|error| Rejected::of(&error))
                        }
                    )+
                    #[allow(unreachable_patterns)]
                    _ => Err(Rejected::wrong_aggregate()),
                }
            }

            pub fn evolve(self, event: &DomainEvent) -> Self {
                match (self, event) {
                    $(
                        (AnyState::$decider(state), DomainEvent::$decider(event)) => {
                            AnyState::$decider(<$implementation as Decider>::evolve(state, event))
                        }
                    )+
                    // An event of another decider cannot carry this key; keep
                    // the state rather than guess.
                    #[allow(unreachable_patterns)]
                    (state, _) => state,
                }
            }
        }
    };
}

registry! {
    Account => tidings_domain::account::AccountDecider { Account = "account" }
    Claim => tidings_domain::claim::ClaimDecider { Email = "email", Username = "username" }
    Post => tidings_domain::post::PostDecider { Post = "post" }
    Follow => tidings_domain::follow::FollowDecider { Follow = "follow" }
    Inbox => tidings_domain::inbox::InboxDecider { Inbox = "inbox" }
    Media => tidings_domain::media::MediaDecider { Media = "media" }
    Room => tidings_domain::room::RoomDecider { Room = "room" }
    Webhook => tidings_domain::webhook::WebhookDecider { Webhook = "webhook" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_of_every_decider_has_a_schema() {
        for decider in DeciderKind::ALL {
            for event_type in decider.event_types() {
                assert!(
                    crate::json::event_data(
                        event_type,
                        crate::envelope::current_version(event_type)
                    )
                    .is_some(),
                    "{event_type} has no schema under schemas/json/events/"
                );
            }
        }
    }

    #[test]
    fn every_schema_of_an_event_names_a_type_a_decider_writes() {
        let written: Vec<&str> = DeciderKind::ALL
            .iter()
            .flat_map(|d| d.event_types().iter().copied())
            .collect();
        for (event_type, _, _) in crate::json::events() {
            assert!(
                written.contains(&event_type),
                "{event_type} is written by no decider"
            );
        }
    }

    #[test]
    fn aggregate_types_read_back_from_their_names() {
        for kind in AggregateType::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(
                serde_json::from_value::<AggregateType>(json).unwrap(),
                *kind
            );
        }
    }
}
