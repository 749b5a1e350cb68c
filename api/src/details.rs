//! The extended profile: `GET`/`PATCH /api/profile/details` for its owner,
//! and the public part of it on `GET /api/users/{id}`.
//!
//! Every field is optional and private until its owner names it in
//! `public_fields`. The field rules are here ([`rules`]), stated again in
//! the OpenAPI schema of [`UpdateDetailsBody`] wherever JSON Schema can say
//! them, so that schemathesis holds the two together. A change goes through
//! the account's decider (`account.update_details`); reads come from the
//! `account_details` read model through its cache, whose entries the
//! projector replaces with every change (a field made private leaves the
//! public view with the write that hid it).

use std::collections::BTreeSet;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, Row};
use tidings_commands::AnyCommand;
use tidings_domain::account::{self, present};
use tidings_domain::details::{Field, UpdateDetails};
use tidings_projections::accounts::PublicProfile;
use tidings_projections::details::{Details, DetailsRow, PublicDetails, DETAILS_COLUMNS};
use tidings_schemas::{AggregateRef, Position};
use uuid::Uuid;

use crate::accounts::Accepted;
use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Problem};
use crate::validate::Fields;
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/profile/details", web::get().to(own_details))
        .route("/api/profile/details", web::patch().to(update_details));
}

/// The field rules of the extended profile. Each returns the value to keep
/// or what is wrong with it.
pub mod rules {
    use chrono::{Datelike, NaiveDate};

    /// The longest phone number as typed, separators included.
    pub const MAX_PHONE_INPUT: usize = 32;
    pub const MAX_ADDRESS: usize = 200;
    pub const MAX_EDUCATION: usize = 200;
    pub const MAX_LOCATION: usize = 100;
    pub const MAX_WEBSITE: usize = 200;
    /// The earliest birthday taken.
    pub const FIRST_YEAR: i32 = 1900;

    /// E.164-like: an optional leading `+` and 7 to 15 digits; spaces,
    /// dashes, dots and parentheses may separate them and are dropped.
    pub fn phone_number(value: &str) -> Result<String, String> {
        let wrong = || {
            format!(
                "an optional + and 7 to 15 digits (spaces, dashes, dots and parentheses allowed), at most {MAX_PHONE_INPUT} characters"
            )
        };
        if value.chars().count() > MAX_PHONE_INPUT {
            return Err(wrong());
        }
        let (plus, rest) = match value.strip_prefix('+') {
            Some(rest) => ("+", rest),
            None => ("", value),
        };
        if !rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '(' | ')' | '.' | '-'))
        {
            return Err(wrong());
        }
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        if !(7..=15).contains(&digits.len()) {
            return Err(wrong());
        }
        Ok(format!("{plus}{digits}"))
    }

    /// 1 to `max` characters, none of them a control character (Unicode's
    /// Cc: line breaks and tabs included, and PostgreSQL text cannot hold
    /// NUL). Kept as typed.
    pub fn line(value: &str, max: usize) -> Result<String, String> {
        let length = value.chars().count();
        if length == 0 || length > max || value.chars().any(char::is_control) {
            return Err(format!("1 to {max} characters, no control characters"));
        }
        Ok(value.to_owned())
    }

    /// An absolute `http://` or `https://` URL with a host, at most
    /// [`MAX_WEBSITE`] characters, as the WHATWG URL parser (the `url`
    /// crate) reads it; kept as typed. White space and control characters
    /// are refused rather than dropped as the parser would.
    pub fn website(value: &str) -> Result<String, String> {
        let wrong = || format!("an absolute http or https URL of at most {MAX_WEBSITE} characters");
        if value.chars().count() > MAX_WEBSITE
            || !["http://", "https://"].iter().any(|scheme| {
                value
                    .get(..scheme.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
            })
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(wrong());
        }
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(value.to_owned())
            }
            _ => Err(wrong()),
        }
    }

    /// `YYYY-MM-DD`, a real date from 1900-01-01 to `today`.
    pub fn birthday(value: &str, today: NaiveDate) -> Result<NaiveDate, String> {
        let wrong = || format!("a date YYYY-MM-DD from {FIRST_YEAR}-01-01 to today");
        let bytes = value.as_bytes();
        let shaped = bytes.len() == 10
            && bytes.iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                _ => b.is_ascii_digit(),
            });
        if !shaped {
            return Err(wrong());
        }
        let number = |range: std::ops::Range<usize>| value[range].parse::<u32>().ok();
        let date = match (number(0..4), number(5..7), number(8..10)) {
            (Some(y), Some(m), Some(d)) => NaiveDate::from_ymd_opt(y as i32, m, d),
            _ => None,
        };
        match date {
            Some(date) if date.year() >= FIRST_YEAR && date <= today => Ok(date),
            _ => Err(wrong()),
        }
    }
}

/// Only the fields present change; `null` clears one. `public_fields`,
/// when present, replaces the set of fields others see.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// The schema states `rules` exactly where JSON Schema can; the website's
// pattern is a part of what the URL parser takes (ASCII host names, no
// percent signs), and a birthday's pattern takes real dates of 1900 to 2099:
// one after today is refused 422, which no static schema can say.
pub struct UpdateDetailsBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 32, pattern = r"^\+?[ ().-]*(?:[0-9][ ().-]*){7,15}$")]
    phone_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    address: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    education: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    location: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^https?://(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?::[0-9]{1,4})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?(?:#[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$")]
    website: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^(?:(?:19|20)[0-9]{2}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))|(?:19(?:0[48]|[2468][048]|[13579][26])|20(?:0[048]|[2468][048]|[13579][26]))-02-29)$")]
    birthday: Option<Option<String>>,
    /// The fields others see; a name may repeat. `null` leaves the set.
    #[schema(value_type = Option<Vec<tidings_projections::details::DetailField>>)]
    public_fields: Option<Vec<String>>,
}

impl UpdateDetailsBody {
    fn into_command(self, ctx: &RequestContext) -> Result<UpdateDetails, ApiError> {
        let mut fields = Fields::default();
        let phone_number = field(
            &mut fields,
            "phone_number",
            self.phone_number,
            rules::phone_number,
        );
        let address = field(&mut fields, "address", self.address, |v| {
            rules::line(v, rules::MAX_ADDRESS)
        });
        let education = field(&mut fields, "education", self.education, |v| {
            rules::line(v, rules::MAX_EDUCATION)
        });
        let location = field(&mut fields, "location", self.location, |v| {
            rules::line(v, rules::MAX_LOCATION)
        });
        let website = field(&mut fields, "website", self.website, rules::website);
        let today = ctx.issued_at.date_naive();
        let birthday = field(&mut fields, "birthday", self.birthday, |v| {
            rules::birthday(v, today)
        });
        let public_fields = self.public_fields.map(|names| {
            let mut set = BTreeSet::new();
            for name in names {
                match Field::from_name(&name) {
                    Some(field) => {
                        set.insert(field);
                    }
                    None => {
                        let known: Vec<&str> = Field::ALL.iter().map(|f| f.as_str()).collect();
                        fields.check::<()>(
                            "public_fields",
                            Err(format!("no field {name:?}; one of {}", known.join(", "))),
                        );
                    }
                }
            }
            set
        });
        fields.finish()?;
        Ok(UpdateDetails {
            phone_number,
            address,
            education,
            location,
            website,
            birthday,
            public_fields,
            at: ctx.issued_at,
        })
    }
}

/// A field of a partial update through its rule: absent stays absent,
/// `null` stays `null` (it clears), a value is checked.
fn field<T>(
    fields: &mut Fields,
    name: &str,
    value: Option<Option<String>>,
    rule: impl Fn(&str) -> Result<T, String>,
) -> Option<Option<T>> {
    value.map(|v| v.and_then(|v| fields.check(name, rule(&v))))
}

/// The extended profile of `user_id` as of at least `needed`: from the
/// cache when its entry is that far, else from PostgreSQL (refilling the
/// cache with the projector offsets of the same snapshot, as
/// [`ApiState::account_from_db`] does).
pub async fn read(
    state: &ApiState,
    user_id: Uuid,
    needed: Option<&Position>,
) -> Result<DetailsRow, ApiError> {
    if let Some(details) = state.cache.details(user_id, needed).await {
        return Ok(details);
    }
    let row = sqlx::query(&format!(
        "SELECT ARRAY(SELECT partition FROM projector_offsets ORDER BY partition) AS at_partitions,
                ARRAY(SELECT next_offset FROM projector_offsets ORDER BY partition) AS at_offsets,
                d.*
         FROM (SELECT {DETAILS_COLUMNS} FROM account_details WHERE user_id = $1) d
         RIGHT JOIN (VALUES (1)) AS one (x) ON true"
    ))
    .bind(user_id)
    .fetch_one(&state.db)
    .await?;
    // No row: no details were ever set. The empty row is cached too, at
    // version 0, below any change.
    let found: Option<Uuid> = row.try_get("user_id")?;
    let details = match found {
        Some(_) => DetailsRow::from_row(&row)?,
        None => DetailsRow::empty(user_id),
    };
    let partitions: Vec<i32> = row.try_get("at_partitions")?;
    let offsets: Vec<i64> = row.try_get("at_offsets")?;
    let at: Vec<(i32, i64)> = partitions.into_iter().zip(offsets).collect();
    state
        .cache
        .put_details(std::slice::from_ref(&details), &at)
        .await;
    Ok(details)
}

#[utoipa::path(get, path = "/api/profile/details", tag = "accounts",
    params(("X-Min-Position" = Option<String>, Header, description = "Answer only once the read model has passed this position")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's extended profile, every field, and which of them others see", body = Details),
        (status = 401, description = "no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not found", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn own_details(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    me: Authenticated,
) -> Result<HttpResponse, ApiError> {
    // An account registered an instant ago and not projected yet has no
    // details to show, as it has no profile.
    me.account.as_ref().ok_or_else(ApiError::not_found)?;
    let needed = crate::middleware::MinPosition::of(&req);
    let details = read(&state, me.user_id, needed.as_ref()).await?;
    Ok(HttpResponse::Ok().json(details.owner_view()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UpdatedDetails {
    #[serde(flatten)]
    details: Details,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(patch, path = "/api/profile/details", tag = "accounts",
    request_body = UpdateDetailsBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Scoped to the token's user, bound to the request (method, path, body) for 24 hours: the same request again gets the first answer and appends nothing")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated and projected", body = UpdatedDetails, headers(("X-Position" = String),
            ("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 202, description = "Updated; not projected within the bounded wait: read it with `X-Min-Position`", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "malformed body; `invalid_idempotency_key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`: the account is not registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight` (with `Retry-After`): the first request with this Idempotency-Key still runs", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with `errors` (one per field, `public_fields` for an unknown name); `idempotency_key_reused`: the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn update_details(
    state: web::Data<ApiState>,
    // Before the request context: missing credentials are answered 401
    // whatever else is wrong (actix extracts in argument order).
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<UpdateDetailsBody>,
) -> Result<HttpResponse, ApiError> {
    let update = body.into_inner().into_command(&ctx)?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::account(me.user_id),
        AnyCommand::Account(account::Command::UpdateDetails(update)),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    // As `PATCH /api/profile`: the details as the read model shows them
    // once it has this write; 202 with the position when it lags.
    if !state.projected(&position).await {
        return Ok(HttpResponse::Accepted()
            .insert_header(("X-Position", position.to_string()))
            .json(Accepted { position }));
    }
    let details = read(&state, me.user_id, Some(&position)).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Position", position.to_string()))
        .json(UpdatedDetails {
            details: details.owner_view(),
            position,
        }))
}

/// `GET /api/users/{id}`: the public profile, and of the extended profile
/// only the fields its owner made public (for anyone, the owner included).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserProfile {
    #[serde(flatten)]
    pub(crate) profile: PublicProfile,
    pub(crate) details: PublicDetails,
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 30).unwrap()
    }

    #[test]
    fn phone_numbers_are_normalized() {
        assert_eq!(
            rules::phone_number("+1 (555) 123-4567").unwrap(),
            "+15551234567"
        );
        assert_eq!(rules::phone_number("030.1234.567").unwrap(), "0301234567");
        for bad in [
            "123456",
            "+1234567890123456",
            "1234567a",
            "++1234567",
            "12 34 56 7+",
            "１２３４５６７",
            "",
            &"1-".repeat(17),
        ] {
            assert!(rules::phone_number(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn lines_websites_and_birthdays() {
        assert!(rules::line("Main St 1, Lisbon", 200).is_ok());
        assert!(rules::line(&"é".repeat(100), 100).is_ok());
        for bad in ["", "two\nlines", "nul\0", &"x".repeat(101)] {
            assert!(rules::line(bad, 100).is_err(), "{bad:?} accepted");
        }
        assert!(rules::website("https://example.com/a?b#c").is_ok());
        assert!(rules::website("http://localhost:8080").is_ok());
        // Schemes are case-insensitive, as URL parsers read them.
        assert!(rules::website("HTTPS://EXAMPLE.com").is_ok());
        for bad in [
            "example.com",
            "ftp://example.com",
            "http://",
            "https://exa mple.com",
            "http://a.b\n",
            "javascript:alert(1)",
            "http:example.com",
            &format!("https://{}.com", "a".repeat(190)),
        ] {
            assert!(rules::website(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            rules::birthday("1990-05-17", today()).unwrap(),
            NaiveDate::from_ymd_opt(1990, 5, 17).unwrap()
        );
        assert!(rules::birthday("1900-01-01", today()).is_ok());
        assert!(rules::birthday("2026-11-30", today()).is_ok());
        for bad in [
            "2026-12-01",
            "1899-12-31",
            "1990-02-30",
            "1990-5-17",
            "17.05.1990",
            "+1990-05-17",
            "1990-05-17T00:00:00Z",
        ] {
            assert!(rules::birthday(bad, today()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn null_clears_and_absent_leaves() {
        let body: UpdateDetailsBody =
            serde_json::from_str(r#"{"website": null, "public_fields": []}"#).unwrap();
        assert_eq!(body.website, Some(None));
        assert_eq!(body.address, None);
        assert_eq!(body.public_fields, Some(vec![]));
        assert!(serde_json::from_str::<UpdateDetailsBody>(r#"{"email": "x@y.z"}"#).is_err());
    }
}
