//! Authentication: argon2id passwords and HS256 JWTs.
//!
//! A token carries the account's token version (`ver`). A password change
//! bumps the version in the account, and every token issued before stops
//! working at once: [`Authenticated`] compares the two on each request.
//! The JWTs themselves are `tidings-http`'s (re-exported here), shared with
//! the gateway, which this module serves as its [`Authenticator`].

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tidings_http::auth::{Authenticator, Identity, Rejection};
// JWTs and the bearer header live in `tidings-http`, shared with the gateway.
pub use tidings_http::auth::{bearer, Claims, Jwt};
use tidings_projections::accounts::AccountRow;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ApiState;

/// Hashes a password with argon2id off the async workers (it is meant to be
/// slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing a password: {e}")))
}

/// A well-formed hash of no password, checked when the login names no
/// account so that a wrong login takes as long as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0r0hmmYmr2CJLFq0Ejx3p2BvHN8gJqpGv5jOJbKWQx8";

pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && known
    })
    .await
    .map_err(ApiError::internal)
}

/// The signed-in caller of a request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: Uuid,
    /// The account as the read model has it; `None` for an account registered
    /// an instant ago and not projected yet.
    pub account: Option<AccountRow>,
    /// When the token expires (Unix seconds): a socket closes then.
    pub expires_at: i64,
}

/// Checks a token against the account it names.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<Authenticated, ApiError> {
    let claims = state.jwt.verify(token)?;
    let account = state.account(claims.sub).await?;
    match &account {
        Some(account) if account.token_version != claims.ver => Err(ApiError::unauthorized(
            "token_revoked",
            "the token was revoked by a password change",
        )),
        // Not projected yet: only a first-version token can be that new.
        None if claims.ver != 0 => Err(ApiError::unauthorized(
            "invalid_token",
            "the token is not valid",
        )),
        _ => Ok(Authenticated {
            user_id: claims.sub,
            account,
            expires_at: claims.exp,
        }),
    }
}

/// The gateway checks tokens the way the API does.
impl Authenticator for ApiState {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, Rejection>> + Send + 'a>> {
        Box::pin(async move {
            authenticate(self, token)
                .await
                .map(|who| Identity {
                    user_id: who.user_id,
                    expires_at: who.expires_at,
                })
                .map_err(|error| Rejection {
                    code: error.code,
                    detail: error.detail,
                })
        })
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let token = bearer(req).map(str::to_owned);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("ApiState missing")))?;
            let token = token.ok_or_else(|| {
                ApiError::unauthorized("unauthenticated", "sign in: Authorization: Bearer <token>")
            })?;
            authenticate(&state, &token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_is_well_formed_and_never_matches() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong horse".into(), Some(hash))
            .await
            .unwrap());
    }
}
