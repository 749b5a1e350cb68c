//! The extended profile read model (`account_details`): how
//! `account.details_updated` changes it, the owner's view and the public
//! view of it.
//!
//! Who sees what is decided here, once: [`DetailsRow::public`] keeps only
//! the fields their owner made public, and is what `GET /api/users/{id}`
//! shows to anyone (the owner included); [`DetailsRow::owner_view`] is the
//! owner's alone. The cache (`cache.rs`) holds whole rows, refreshed by the
//! projector after every change, so a field made private leaves the public
//! view with the change that hid it.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::details::{DetailsUpdated, Field};
use uuid::Uuid;

/// One row of `account_details`; an account without a row has the
/// [`DetailsRow::empty`] one (version 0, older than any change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DetailsRow {
    pub user_id: Uuid,
    pub phone_number: Option<String>,
    pub address: Option<String>,
    pub education: Option<String>,
    pub location: Option<String>,
    pub website: Option<String>,
    pub birthday: Option<NaiveDate>,
    pub public_fields: Vec<String>,
    /// The account's event sequence the row reflects; orders cache writes.
    pub version: i64,
}

/// The name of a field of the extended profile, as in `public_fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DetailField {
    PhoneNumber,
    Address,
    Education,
    Location,
    Website,
    Birthday,
}

/// `GET /api/profile/details`: every field (null where unset) and which of
/// them others see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Details {
    /// Normalized: an optional `+` and 7 to 15 digits.
    pub phone_number: Option<String>,
    pub address: Option<String>,
    pub education: Option<String>,
    pub location: Option<String>,
    pub website: Option<String>,
    /// `YYYY-MM-DD`.
    #[schema(value_type = Option<String>, format = Date)]
    pub birthday: Option<NaiveDate>,
    /// The fields shown on the public profile; none by default.
    #[schema(value_type = Vec<DetailField>)]
    pub public_fields: Vec<String>,
}

/// The fields of the extended profile its owner made public and has set;
/// no other key appears.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub education: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub birthday: Option<NaiveDate>,
}

impl DetailsRow {
    /// The details of an account that never set any.
    pub fn empty(user_id: Uuid) -> Self {
        DetailsRow {
            user_id,
            phone_number: None,
            address: None,
            education: None,
            location: None,
            website: None,
            birthday: None,
            public_fields: Vec::new(),
            version: 0,
        }
    }

    pub fn owner_view(&self) -> Details {
        Details {
            phone_number: self.phone_number.clone(),
            address: self.address.clone(),
            education: self.education.clone(),
            location: self.location.clone(),
            website: self.website.clone(),
            birthday: self.birthday,
            public_fields: self.public_fields.clone(),
        }
    }

    /// What anyone may see: only the public fields.
    pub fn public(&self) -> PublicDetails {
        let shown = |field: Field| self.public_fields.iter().any(|f| f == field.as_str());
        let only = |field: Field, value: &Option<String>| value.clone().filter(|_| shown(field));
        PublicDetails {
            phone_number: only(Field::PhoneNumber, &self.phone_number),
            address: only(Field::Address, &self.address),
            education: only(Field::Education, &self.education),
            location: only(Field::Location, &self.location),
            website: only(Field::Website, &self.website),
            birthday: self.birthday.filter(|_| shown(Field::Birthday)),
        }
    }
}

/// Writes the whole extended profile of `user_id` as of the account's
/// event `version`, inside the projector's transaction; the row, for the
/// cache.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    version: i64,
    updated: &DetailsUpdated,
) -> Result<DetailsRow, sqlx::Error> {
    let d = &updated.details;
    let public: Vec<&str> = d.public_fields.iter().map(|f| f.as_str()).collect();
    sqlx::query_as(
        "INSERT INTO account_details (user_id, phone_number, address, education, location, website,
                                      birthday, public_fields, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (user_id) DO UPDATE SET phone_number = EXCLUDED.phone_number,
             address = EXCLUDED.address, education = EXCLUDED.education,
             location = EXCLUDED.location, website = EXCLUDED.website,
             birthday = EXCLUDED.birthday, public_fields = EXCLUDED.public_fields,
             updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
         RETURNING user_id, phone_number, address, education, location, website, birthday,
                   public_fields, version",
    )
    .bind(user_id)
    .bind(&d.phone_number)
    .bind(&d.address)
    .bind(&d.education)
    .bind(&d.location)
    .bind(&d.website)
    .bind(d.birthday)
    .bind(&public)
    .bind(updated.updated_at)
    .bind(version)
    .fetch_one(&mut **tx)
    .await
}

/// The columns of a [`DetailsRow`], for queries that read one.
pub const DETAILS_COLUMNS: &str = "user_id, phone_number, address, education, location, website, birthday, public_fields, version";

/// The details of `user_id`; the empty ones when it never set any.
pub async fn by_id(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<DetailsRow, sqlx::Error> {
    let row: Option<DetailsRow> = sqlx::query_as(&format!(
        "SELECT {DETAILS_COLUMNS} FROM account_details WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    Ok(row.unwrap_or_else(|| DetailsRow::empty(user_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_view_holds_only_public_fields_that_are_set() {
        let row = DetailsRow {
            phone_number: Some("+15551234567".into()),
            location: Some("Lisbon".into()),
            website: None,
            birthday: NaiveDate::from_ymd_opt(1990, 5, 17),
            public_fields: vec!["location".into(), "website".into()],
            ..DetailsRow::empty(Uuid::from_u128(1))
        };
        let public = serde_json::to_value(row.public()).unwrap();
        assert_eq!(public, serde_json::json!({"location": "Lisbon"}));
        let all = serde_json::to_value(row.owner_view()).unwrap();
        assert_eq!(all["phone_number"], "+15551234567");
        assert_eq!(all["birthday"], "1990-05-17");
        assert_eq!(all["address"], serde_json::Value::Null);
    }
}
