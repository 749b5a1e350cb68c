//! An account's extended profile: phone number, address, education,
//! location, website and birthday, each optional, and which of them its
//! owner shows to others (`public_fields`; none by default).
//!
//! The account decider decides changes to them (`account.update_details`
//! in [`crate::account`]); the types and the fold of a change live here.
//! Field rules (lengths, formats, a birthday not in the future) are the
//! API's: a command that reaches the decider carries normalized values.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::account::present;

/// One field of the extended profile, by its name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    PhoneNumber,
    Address,
    Education,
    Location,
    Website,
    Birthday,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::PhoneNumber,
        Field::Address,
        Field::Education,
        Field::Location,
        Field::Website,
        Field::Birthday,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::PhoneNumber => "phone_number",
            Field::Address => "address",
            Field::Education => "education",
            Field::Location => "location",
            Field::Website => "website",
            Field::Birthday => "birthday",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

/// The whole extended profile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Details {
    pub phone_number: Option<String>,
    pub address: Option<String>,
    pub education: Option<String>,
    pub location: Option<String>,
    pub website: Option<String>,
    /// `YYYY-MM-DD`.
    pub birthday: Option<NaiveDate>,
    /// The fields others see; the rest only the owner does.
    pub public_fields: BTreeSet<Field>,
}

/// A partial update: `None` leaves a field as it is, `Some(None)` clears
/// it; `public_fields`, when present, replaces the set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateDetails {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub phone_number: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub address: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub education: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub location: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub website: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub birthday: Option<Option<NaiveDate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_fields: Option<BTreeSet<Field>>,
    pub at: DateTime<Utc>,
}

/// `account.details_updated`: the whole extended profile after the change,
/// so that a projection needs no earlier state to show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsUpdated {
    #[serde(flatten)]
    pub details: Details,
    pub updated_at: DateTime<Utc>,
}

impl UpdateDetails {
    /// `details` with this update applied.
    pub fn apply_to(&self, details: &Details) -> Details {
        fn pick<T: Clone>(change: &Option<Option<T>>, current: &Option<T>) -> Option<T> {
            change.clone().unwrap_or_else(|| current.clone())
        }
        Details {
            phone_number: pick(&self.phone_number, &details.phone_number),
            address: pick(&self.address, &details.address),
            education: pick(&self.education, &details.education),
            location: pick(&self.location, &details.location),
            website: pick(&self.website, &details.website),
            birthday: pick(&self.birthday, &details.birthday),
            public_fields: self
                .public_fields
                .clone()
                .unwrap_or_else(|| details.public_fields.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;
    use crate::account::{decide, evolve, Command, Error, Event, Opened, Registered};
    use crate::testing;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn given(
        events: impl IntoIterator<Item = Event>,
    ) -> testing::Given<crate::account::State, Event> {
        testing::given(events, evolve)
    }

    fn opened() -> Event {
        Event::Opened(Opened {
            user_id: Uuid::from_u128(1),
            username: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            opened_at: at(),
        })
    }

    fn registered() -> Event {
        Event::Registered(Registered {
            user_id: Uuid::from_u128(1),
            username: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            registered_at: at(),
        })
    }

    fn update(change: UpdateDetails) -> Command {
        Command::UpdateDetails(UpdateDetails { at: at(), ..change })
    }

    fn updated(details: Details) -> Event {
        Event::DetailsUpdated(DetailsUpdated {
            details,
            updated_at: at(),
        })
    }

    fn birthday() -> NaiveDate {
        NaiveDate::from_ymd_opt(1990, 5, 17).unwrap()
    }

    /// Alice's details with a phone number and a birthday, the birthday
    /// public.
    fn some_details() -> Details {
        Details {
            phone_number: Some("+15551234567".into()),
            birthday: Some(birthday()),
            public_fields: [Field::Birthday].into(),
            ..Details::default()
        }
    }

    #[test]
    fn setting_details_carries_the_whole_details_after_the_change() {
        given([opened(), registered()])
            .when(
                update(UpdateDetails {
                    phone_number: Some(Some("+15551234567".into())),
                    birthday: Some(Some(birthday())),
                    public_fields: Some([Field::Birthday].into()),
                    ..UpdateDetails::default()
                }),
                decide,
            )
            .then([updated(some_details())]);
    }

    #[test]
    fn a_later_change_keeps_the_fields_it_does_not_name() {
        given([opened(), registered(), updated(some_details())])
            .when(
                update(UpdateDetails {
                    location: Some(Some("Lisbon".into())),
                    ..UpdateDetails::default()
                }),
                decide,
            )
            .then([updated(Details {
                location: Some("Lisbon".into()),
                ..some_details()
            })]);
    }

    #[test]
    fn null_clears_a_field_and_an_empty_set_makes_every_field_private() {
        given([opened(), registered(), updated(some_details())])
            .when(
                update(UpdateDetails {
                    phone_number: Some(None),
                    public_fields: Some(BTreeSet::new()),
                    ..UpdateDetails::default()
                }),
                decide,
            )
            .then([updated(Details {
                birthday: Some(birthday()),
                ..Details::default()
            })]);
    }

    #[test]
    fn a_change_to_nothing_appends_nothing() {
        given([opened(), registered(), updated(some_details())])
            .when(
                update(UpdateDetails {
                    phone_number: Some(Some("+15551234567".into())),
                    public_fields: Some([Field::Birthday].into()),
                    ..UpdateDetails::default()
                }),
                decide,
            )
            .then([]);
        given([opened(), registered()])
            .when(update(UpdateDetails::default()), decide)
            .then([]);
    }

    #[test]
    fn only_an_active_account_has_details_to_update() {
        let change = || {
            update(UpdateDetails {
                location: Some(Some("Lisbon".into())),
                ..UpdateDetails::default()
            })
        };
        given([])
            .when(change(), decide)
            .then_err(Error::NotRegistered);
        given([opened()])
            .when(change(), decide)
            .then_err(Error::NotRegistered);
        given([opened(), Event::Abandoned { abandoned_at: at() }])
            .when(change(), decide)
            .then_err(Error::NotRegistered);
    }

    #[test]
    fn a_cleared_field_and_the_event_survive_serialization() {
        let clear = update(UpdateDetails {
            birthday: Some(None),
            public_fields: Some([Field::Website, Field::PhoneNumber].into()),
            ..UpdateDetails::default()
        });
        let json = serde_json::to_string(&clear).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), clear);
        let event = updated(some_details());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["data"]["birthday"], "1990-05-17");
        assert_eq!(
            json["data"]["public_fields"],
            serde_json::json!(["birthday"])
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }

    #[test]
    fn field_names_read_back() {
        for field in Field::ALL {
            assert_eq!(Field::from_name(field.as_str()), Some(field));
            assert_eq!(
                serde_json::to_value(field).unwrap(),
                serde_json::json!(field.as_str())
            );
        }
        assert_eq!(Field::from_name("email"), None);
    }
}
