//! Accounts: register, login, the own profile and public profiles.
//!
//! Registration is a saga over three aggregates, run by
//! `tidings_commands::registration::register`: the handler validates, hashes
//! the password (bounded, see [`crate::auth`]) and maps the outcome. Every
//! step's command id is derived from the request's, so a retry with the same
//! `Idempotency-Key` replays the same steps and gets their first outcomes
//! back.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use tidings_commands::registration::{self, RegistrationError, Saga};
use tidings_commands::AnyCommand;
use tidings_domain::account;
use tidings_http::limits::{Key, Verdict};
use tidings_projections::accounts::{Profile, PublicProfile};
use tidings_projections::credentials;
use tidings_schemas::{AggregateRef, Position};
use uuid::Uuid;

use crate::auth::{hash_password, verify_password, Authenticated};
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Code, Problem};
use crate::validate::{self, Fields};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/register", web::post().to(register))
        .route("/api/auth/login", web::post().to(login))
        .route("/api/profile", web::get().to(own_profile))
        .route("/api/profile", web::patch().to(update_profile))
        .route("/api/users/{id}", web::get().to(public_profile));
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// The schema states the rules of `validate` exactly where JSON Schema can
// (surrounding white space is trimmed; control characters are Unicode's Cc),
// so that schemathesis holds the two together; lengths count characters
// where `validate` counts bytes of the lowercased value.
pub struct RegisterBody {
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_]{3,32}[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub username: String,
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^@\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{1,64}@[^@.\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][^@\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,93}\.[^@\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,93}[^@.\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub email: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]{0,62}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub display_name: Option<String>,
}

/// A registration that passed validation, normalized.
struct Registration {
    username: String,
    email: String,
    password: String,
    display_name: String,
}

impl TryFrom<RegisterBody> for Registration {
    type Error = ApiError;

    fn try_from(body: RegisterBody) -> Result<Self, ApiError> {
        let mut fields = Fields::default();
        let username = fields.check("username", validate::username(&body.username));
        let email = fields.check("email", validate::email(&body.email));
        let password = fields.check("password", validate::password(&body.password));
        let display_name = match &body.display_name {
            Some(name) => fields.check("display_name", validate::display_name(name)),
            None => Some(body.username.trim().to_owned()),
        };
        fields.finish()?;
        Ok(Registration {
            username: username.expect("checked"),
            email: email.expect("checked"),
            password: password.expect("checked"),
            display_name: display_name.expect("checked"),
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Registered {
    user: Profile,
    /// A JWT for `Authorization: Bearer`.
    token: String,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/auth/register", tag = "accounts",
    request_body = RegisterBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Scoped to this route, bound to the request (method, path, body) for 24 hours: the same request again gets the first answer (with a fresh token) and appends nothing")),
    responses(
        (status = 201, description = "Registered; `position` is where the write is in the log", body = Registered,
            headers(("X-Position" = String, description = "the write's position"),
                ("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 409, description = "`email_taken` or `username_taken`; `idempotency_key_in_flight` (with `Retry-After`) while the first request with this Idempotency-Key runs", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "malformed body; `invalid_idempotency_key`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with `errors`; `idempotency_key_reused`: the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: too many registrations and sign-ins at once, nothing was done; or a dependency is down or the command timed out. `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying")))
    ))]
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub(crate) async fn register(
    state: web::Data<ApiState>,
    ctx: RequestContext,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let input = Registration::try_from(body.into_inner())?;
    let user_id = registration::user_id(ctx.command_id(None));
    let saga = Saga {
        user_id,
        email: input.email.clone(),
        username: input.username.clone(),
        correlation_id: ctx.request_id,
        issued_at: ctx.issued_at,
        idempotency_key: ctx.idempotency_key.clone(),
    };
    let password_hash = hash_password(input.password.clone()).await?;
    // Kept in the private store before the first command: the hash never
    // enters the log, and login finds it once the account is active.
    credentials::store(&state.db, user_id, &password_hash).await?;
    let account = account::Register {
        user_id,
        username: input.username.clone(),
        email: input.email.clone(),
        display_name: input.display_name.clone(),
        at: ctx.issued_at,
    };
    let position = match registration::register(&state.bus, &saga, account).await {
        Ok(position) => position,
        Err(RegistrationError::Rejected(outcome)) => {
            return Err(accepted(outcome).expect_err("a rejection"))
        }
        Err(RegistrationError::Bus(error)) => return Err(error.into()),
    };
    let user = Profile {
        id: user_id,
        username: input.username,
        email: input.email,
        display_name: input.display_name,
        bio: None,
        avatar_url: None,
        created_at: ctx.issued_at,
        followers_count: 0,
        following_count: 0,
        posts_count: 0,
    };
    let token = state.jwt.issue(user_id, 0);
    // Answered once the account is projected (within [`REGISTER_WAIT`]), so
    // a login or a read right after the answer finds it; past the wait the
    // registration stands all the same, and reads take `X-Min-Position`.
    let _ = tokio::time::timeout(REGISTER_WAIT, state.projected(&position)).await;
    Ok(HttpResponse::Created()
        .insert_header(("X-Position", position.to_string()))
        .json(Registered {
            user,
            token,
            position,
        }))
}

/// The longest a registration waits for its account to be projected before
/// it answers: a projector that lags does not hold the new user's answer
/// for long.
const REGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// A username or an email.
    pub login: String,
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LoggedIn {
    user: Profile,
    token: String,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "accounts",
    request_body = LoginBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Scoped to this route, bound to the request (method, path, body) for 24 hours: the same request again gets the first answer, with a fresh token")),
    responses(
        (status = 200, description = "Signed in", body = LoggedIn,
            headers(("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "malformed body; `invalid_idempotency_key`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight` (with `Retry-After`): the first request with this Idempotency-Key still runs", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with `errors`; `idempotency_key_reused`: the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: too many sign-ins and registrations at once; or a dependency is down. `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying")))
    ))]
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub(crate) async fn login(
    state: web::Data<ApiState>,
    ctx: RequestContext,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    // No account has such a login (and PostgreSQL text cannot hold NUL).
    if body.login.len() > validate::MAX_EMAIL
        || body.login.contains('\0')
        || body.password.len() > validate::MAX_PASSWORD
    {
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "wrong login or password",
        ));
    }
    let account = tidings_projections::accounts::by_login(&state.db, &body.login).await?;
    // Attempts on one account are counted wherever they come from and
    // whichever of its names they give, before a password is tried.
    if let Some(limiter) = &state.limits.account_logins {
        let key = match &account {
            Some(account) => Key::User(account.id),
            None => Key::Name(body.login.trim().to_lowercase()),
        };
        if let Verdict::Refused { retry_after } = limiter.check(key) {
            return Ok(limiter.refusal(retry_after));
        }
    }
    let hash = match &account {
        Some(account) => credentials::password_hash(&state.db, account.id).await?,
        None => None,
    };
    match account {
        Some(account) if verify_password(body.password, hash).await? => {
            let token = state.jwt.issue(account.id, account.token_version);
            Ok(HttpResponse::Ok().json(LoggedIn {
                user: account.profile(),
                token,
            }))
        }
        _ => Err(ApiError::new(
            Code::InvalidCredentials,
            "wrong login or password",
        )),
    }
}

#[utoipa::path(get, path = "/api/profile", tag = "accounts",
    params(("X-Min-Position" = Option<String>, Header, description = "Answer only once the read model has passed this position")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's own profile", body = Profile),
        (status = 401, description = "no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not found", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn own_profile(me: Authenticated) -> Result<HttpResponse, ApiError> {
    let account = me.account.ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(account.profile()))
}

/// Only the fields present change; `null` clears `bio` or `avatar_url`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// The schema states the rules of `validate`, as for `RegisterBody`.
pub struct UpdateProfileBody {
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]{0,62}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    display_name: Option<String>,
    #[serde(default, deserialize_with = "account::present")]
    #[schema(value_type = Option<String>, max_length = 500, pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")]
    bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "account::present")]
    #[schema(value_type = Option<String>, pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*(http://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2041}|https://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2040})[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")]
    avatar_url: Option<Option<String>>,
}

impl UpdateProfileBody {
    fn into_command(self, ctx: &RequestContext) -> Result<account::UpdateProfile, ApiError> {
        let mut fields = Fields::default();
        let display_name = self
            .display_name
            .map(|n| fields.check("display_name", validate::display_name(&n)));
        let bio = self
            .bio
            .map(|b| b.map(|b| fields.check("bio", validate::bio(&b))));
        let avatar_url = self
            .avatar_url
            .map(|u| u.map(|u| fields.check("avatar_url", validate::url(&u))));
        fields.finish()?;
        Ok(account::UpdateProfile {
            display_name: display_name.flatten(),
            bio: bio.map(Option::flatten),
            avatar_url: avatar_url.map(Option::flatten),
            at: ctx.issued_at,
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UpdatedProfile {
    #[serde(flatten)]
    profile: Profile,
    #[schema(value_type = String)]
    position: Position,
}

/// A write that stands but is not visible yet.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    #[schema(value_type = String)]
    pub(crate) position: Position,
}

#[utoipa::path(patch, path = "/api/profile", tag = "accounts",
    request_body = UpdateProfileBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Scoped to the token's user, bound to the request (method, path, body) for 24 hours: the same request again gets the first answer and appends nothing")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated and projected", body = UpdatedProfile, headers(("X-Position" = String),
            ("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 202, description = "Updated; not projected within the bounded wait: read it with `X-Min-Position`", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "malformed body; `invalid_idempotency_key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight` (with `Retry-After`): the first request with this Idempotency-Key still runs", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with `errors`; `idempotency_key_reused`: the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn update_profile(
    state: web::Data<ApiState>,
    // Before the request context: missing credentials are answered 401
    // whatever else is wrong (actix extracts in argument order).
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<UpdateProfileBody>,
) -> Result<HttpResponse, ApiError> {
    let update = body.into_inner().into_command(&ctx)?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::account(me.user_id),
        AnyCommand::Account(account::Command::UpdateProfile(update)),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    // Answer with the profile as the read model shows it once it has this
    // write; if it lags past the bounded wait, the write still stands: 202
    // with the position to read it at later.
    let projected = state
        .progress
        .wait_for(&position, state.settings.min_position_wait)
        .await
        .is_ok();
    // From the cache when its entry is that far (the projector fills it
    // before it announces the commit), else from PostgreSQL. A miss here
    // does not fill the cache: that is the projector's part.
    let account = match projected {
        true => match state.cache.account(me.user_id, Some(&position)).await {
            Some(account) => Some(account),
            None => tidings_projections::accounts::by_id(&state.db, me.user_id).await?,
        },
        false => None,
    };
    let Some(account) = account else {
        return Ok(HttpResponse::Accepted()
            .insert_header(("X-Position", position.to_string()))
            .json(Accepted { position }));
    };
    Ok(HttpResponse::Ok()
        .insert_header(("X-Position", position.to_string()))
        .json(UpdatedProfile {
            profile: account.profile(),
            position,
        }))
}

#[utoipa::path(get, path = "/api/users/{id}", tag = "accounts",
    params(("id" = Uuid, Path, description = "user id"),
        ("X-Min-Position" = Option<String>, Header, description = "Answer only once the read model has passed this position")),
    responses(
        (status = 200, description = "A public profile (no email), with the extended profile's fields its owner made public", body = crate::details::UserProfile),
        (status = 404, description = "not found", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn public_profile(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let needed = crate::middleware::MinPosition::of(&req);
    let account = state
        .account(id.into_inner(), needed.as_ref())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let details = crate::details::read(&state, account.id, needed.as_ref()).await?;
    let view: PublicProfile = account.public_profile();
    Ok(HttpResponse::Ok().json(crate::details::UserProfile {
        profile: view,
        details: details.public(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(username: &str, email: &str, password: &str) -> RegisterBody {
        RegisterBody {
            username: username.into(),
            email: email.into(),
            password: password.into(),
            display_name: None,
        }
    }

    #[test]
    fn a_valid_registration_is_normalized() {
        let r =
            Registration::try_from(body("Alice_1", " Alice@Example.COM ", "long enough")).unwrap();
        assert_eq!(r.email, "alice@example.com");
        assert_eq!(r.username, "Alice_1");
        assert_eq!(r.display_name, "Alice_1");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let error = Registration::try_from(body("a", "not an email", "short"))
            .err()
            .unwrap();
        assert_eq!(error.code, "validation_failed");
        let fields: Vec<&str> = error.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "email", "password"]);
    }

    #[test]
    fn a_patch_can_clear_a_field() {
        let body: UpdateProfileBody = serde_json::from_str(r#"{"bio": null}"#).unwrap();
        assert_eq!(body.bio, Some(None));
        let body: UpdateProfileBody = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(body.bio, None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<UpdateProfileBody>(r#"{"email": "x@y.z"}"#).is_err());
    }
}
