//! Passwords: forgot (a reset token by mail), reset with the token, and
//! change by the signed-in owner.
//!
//! A change is one command, `account.change_password`, whose event
//! `account.password_changed` is the commit point: the new hash is first
//! kept in the private store under (user, new token version), and the
//! projector puts it in force together with the new token version when it
//! applies the event. A crash at any step leaves the old password and
//! tokens, or the new ones, never a mix. The answer waits for the projector
//! (bounded), so an old token fails on every process once it is given.
//!
//! Reset tokens are 32 random bytes, URL-safe base64; only their SHA-256 is
//! kept. Asking for one answers 202 whatever the address, after the same
//! work, and at most one mail per address per `forgot_interval`.

use actix_web::{web, HttpResponse};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tidings_commands::AnyCommand;
use tidings_domain::account::{self, PasswordChangeReason};
use tidings_projections::credentials::{self, ResetToken};
use tidings_projections::mail::{self, Mail};
use tidings_schemas::{AggregateRef, Position};
use uuid::Uuid;

use crate::auth::{hash_password, verify_password, Authenticated};
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Code, Problem};
use crate::validate::{self, Fields};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/password/forgot", web::post().to(forgot))
        .route("/api/auth/password/reset", web::post().to(reset))
        .route("/api/auth/password/change", web::post().to(change));
}

/// Bytes of randomness in a reset token (256 bits).
const RESET_TOKEN_BYTES: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    pub email: String,
}

#[utoipa::path(post, path = "/api/auth/password/forgot", tag = "accounts",
    request_body = ForgotBody,
    responses(
        (status = 202, description = "Whatever the address: if an account has it, a reset token is mailed to it (at most one mail per address per interval)"),
        (status = 503, description = "`overloaded`: the mail queue is full, nothing was done; or a dependency is down. `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying")))
    ))]
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub(crate) async fn forgot(
    state: web::Data<ApiState>,
    ctx: RequestContext,
    body: web::Json<ForgotBody>,
) -> Result<HttpResponse, ApiError> {
    // An address that is not one names no account: the same 202, no work
    // that would tell it apart from an unknown one by its timing.
    let Ok(email) = validate::email(&body.email) else {
        return Ok(HttpResponse::Accepted().finish());
    };
    let settings = &state.settings;
    // The queue's bound holds for every request alike, so the answer says
    // nothing about the address.
    if mail::waiting(&state.db).await? >= settings.mail_queue_max {
        metrics::counter!("tidings_mail_refused_total", "reason" => "queue_full").increment(1);
        return Err(ApiError::overloaded(
            "too many mails are waiting to be sent; retry later",
        ));
    }
    let account = tidings_projections::accounts::by_login(&state.db, &email).await?;
    let mut tx = state.db.begin().await?;
    let email_hash = Sha256::digest(email.as_bytes());
    let may_send =
        credentials::may_send_reset(&mut *tx, &email_hash, settings.forgot_interval).await?;
    if let (true, Some(account)) = (may_send, account) {
        let token = reset_token();
        let mail = Mail::password_reset(
            &account.email,
            &account.username,
            &token,
            settings.password_reset_ttl,
        );
        credentials::issue_reset_token(
            &mut tx,
            account.id,
            &Sha256::digest(token.as_bytes()),
            settings.password_reset_ttl,
            &mail,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(HttpResponse::Accepted().finish())
}

/// A fresh reset token: 32 random bytes, URL-safe base64 without padding.
fn reset_token() -> String {
    let mut bytes = [0u8; RESET_TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The token of the reset mail.
    pub token: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

/// A change that stands but is not in force everywhere yet.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Pending {
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/auth/password/reset", tag = "accounts",
    request_body = ResetBody,
    responses(
        (status = 204, description = "The new password is in force; every token issued before is revoked", headers(("X-Position" = String))),
        (status = 202, description = "Changed; not projected within the bounded wait (old tokens stop working once it is)", body = Pending, headers(("X-Position" = String))),
        (status = 400, description = "`invalid_reset_token`: unknown, expired, used, or ended by a newer one; malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`password_change_conflict`: another change came first, retry; `idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (the password), with `errors`; `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (password hashing) or a dependency is down; the token stays usable. `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying")))
    ))]
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id))]
pub(crate) async fn reset(
    state: web::Data<ApiState>,
    ctx: RequestContext,
    body: web::Json<ResetBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let password = new_password(&body.password)?;
    let invalid = || {
        ApiError::new(
            Code::InvalidResetToken,
            "the reset token is unknown, expired, used or replaced by a newer one",
        )
    };
    if body.token.len() > 128 || body.token.contains('\0') {
        return Err(invalid());
    }
    let token_hash = Sha256::digest(body.token.as_bytes());
    // Looked up before the hash is made, used after: a reset refused for
    // overload keeps its token.
    if credentials::reset_token(&state.db, &token_hash).await? == ResetToken::Invalid {
        return Err(invalid());
    }
    let password_hash = hash_password(password).await?;
    let ResetToken::Open(user_id) = credentials::use_reset_token(&state.db, &token_hash).await?
    else {
        return Err(invalid());
    };
    // The token was issued to a projected account, which stays.
    let account = match tidings_projections::accounts::by_id(&state.db, user_id).await {
        Ok(Some(account)) => account,
        outcome => {
            credentials::release_reset_token(&state.db, &token_hash).await?;
            return Err(outcome.map_or_else(ApiError::from, |_| invalid()));
        }
    };
    match put_in_force(
        &state,
        &ctx,
        user_id,
        account.token_version,
        &password_hash,
        PasswordChangeReason::Reset,
    )
    .await
    {
        Ok((position, _, projected)) => Ok(answer(position, projected)),
        Err(error) => {
            // Nothing was changed, or the change is still undecided: the
            // token may be tried again (a change that lands after all ends
            // it, as every change ends the open tokens).
            credentials::release_reset_token(&state.db, &token_hash).await?;
            Err(error)
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    pub current_password: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

#[utoipa::path(post, path = "/api/auth/password/change", tag = "accounts",
    request_body = ChangeBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The new password is in force; every other token is revoked; `X-Token` is one of the new version",
            headers(("X-Token" = String, description = "a JWT of the new token version"), ("X-Position" = String))),
        (status = 202, description = "Changed; not projected within the bounded wait (`X-Token` works, and old tokens stop working, once it is)", body = Pending,
            headers(("X-Token" = String, description = "a JWT of the new token version"), ("X-Position" = String))),
        (status = 401, description = "`invalid_credentials`: the current password is wrong; or no valid token (`unauthenticated`, `invalid_token`, `token_expired`, `token_revoked`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "the account is not projected yet", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`password_change_conflict`: another change came first, retry; `idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (the new password), with `errors`; `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (password hashing) or a dependency is down. `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying")))
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn change(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<ChangeBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let password = new_password(&body.password)?;
    let account = me.account.ok_or_else(ApiError::not_found)?;
    let current = match body.current_password.len() <= validate::MAX_PASSWORD {
        true => credentials::password_hash(&state.db, me.user_id).await?,
        false => None,
    };
    // 401, as for a wrong password at login: the caller did not prove who
    // it is (its token alone does not change the password).
    if !verify_password(body.current_password, current).await? {
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "the current password is wrong",
        ));
    }
    let password_hash = hash_password(password).await?;
    let (position, version, projected) = put_in_force(
        &state,
        &ctx,
        me.user_id,
        account.token_version,
        &password_hash,
        PasswordChangeReason::Change,
    )
    .await?;
    let mut response = answer(position, projected);
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-token"),
        actix_web::http::header::HeaderValue::from_str(&state.jwt.issue(me.user_id, version))
            .map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// A new password, by the rules of registration (422 otherwise).
fn new_password(password: &str) -> Result<String, ApiError> {
    let mut fields = Fields::default();
    let password = fields.check("password", validate::password(password));
    fields.finish()?;
    Ok(password.expect("checked"))
}

/// Keeps the new hash under the next token version, then sends the command
/// that puts it in force, and waits (bounded) for the projector to apply
/// it: its position, the new token version, and whether it is applied.
async fn put_in_force(
    state: &ApiState,
    ctx: &RequestContext,
    user_id: Uuid,
    current_version: i32,
    password_hash: &str,
    reason: PasswordChangeReason,
) -> Result<(Position, i32, bool), ApiError> {
    let version = current_version + 1;
    let command_id = ctx.command_id(Some(user_id));
    credentials::store_pending(&state.db, user_id, command_id, version, password_hash).await?;
    let command = ctx.envelope(
        command_id,
        Some(user_id),
        AggregateRef::account(user_id),
        AnyCommand::Account(account::Command::ChangePassword(account::ChangePassword {
            token_version: version,
            reason,
            at: ctx.issued_at,
        })),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    let projected = state.projected(&position).await;
    Ok((position, version, projected))
}

/// 204 once the change is in force; 202 with its position while the
/// projector lags past the bounded wait.
fn answer(position: Position, projected: bool) -> HttpResponse {
    if projected {
        HttpResponse::NoContent()
            .insert_header(("X-Position", position.to_string()))
            .finish()
    } else {
        HttpResponse::Accepted()
            .insert_header(("X-Position", position.to_string()))
            .json(Pending { position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_tokens_are_url_safe_and_carry_32_bytes() {
        let token = reset_token();
        assert_eq!(token.len(), 43);
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(token, reset_token());
    }
}
