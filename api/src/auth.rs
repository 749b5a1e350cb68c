//! Authentication: argon2id passwords and HS256 JWTs.
//!
//! A token carries the account's token version (`ver`). A password change
//! bumps the version in the account, and every token issued before stops
//! working at once: [`Authenticated`] compares the two on each request.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::Utc;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tidings_projections::accounts::AccountRow;
use tidings_schemas::Position;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ApiState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    /// The account's token version when the token was issued.
    pub ver: i32,
}

#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl Jwt {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Jwt {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            ttl,
        }
    }

    pub fn issue(&self, user_id: Uuid, token_version: i32) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            ver: token_version,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks signature and expiry; what the token says is not yet checked
    /// against the account (see [`authenticate`]).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                JwtErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "the token has expired")
                }
                _ => ApiError::unauthorized("invalid_token", "the token is not valid"),
            })
    }
}

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

/// The bearer token of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks a token against the account it names.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<Authenticated, ApiError> {
    authenticate_at(state, token, None).await
}

/// Checks a token against the account it names, and reads the account as of
/// at least `needed`. The token version always comes from PostgreSQL: a
/// cache entry whose refresh failed must not keep a revoked token working,
/// here or on any other process.
pub async fn authenticate_at(
    state: &ApiState,
    token: &str,
    needed: Option<&Position>,
) -> Result<Authenticated, ApiError> {
    let claims = state.jwt.verify(token)?;
    let current: Option<(i64, i32)> =
        sqlx::query_as("SELECT version, token_version FROM accounts WHERE id = $1")
            .bind(claims.sub)
            .fetch_optional(&state.db)
            .await?;
    let account = match current {
        Some((_, token_version)) if token_version != claims.ver => {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "the token was revoked by a password change",
            ))
        }
        // Not projected yet: only a first-version token can be that new.
        None if claims.ver != 0 => {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "the token is not valid",
            ))
        }
        None => None,
        // The cached row serves only if it is the version PostgreSQL has.
        Some((version, _)) => match state.cache.account(claims.sub, needed).await {
            Some(cached) if cached.version == version => Some(cached),
            _ => state.account_from_db(claims.sub).await?,
        },
    };
    Ok(Authenticated {
        user_id: claims.sub,
        account,
        expires_at: claims.exp,
    })
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let token = bearer(req).map(str::to_owned);
        let needed = crate::middleware::MinPosition::of(req);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::internal(anyhow::anyhow!("ApiState missing")))?;
            let token = token.ok_or_else(|| {
                ApiError::unauthorized("unauthenticated", "sign in: Authorization: Bearer <token>")
            })?;
            authenticate_at(&state, &token, needed.as_ref()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_a_tampered_one_does_not() {
        let jwt = Jwt::new("secret", Duration::from_secs(60));
        let user = Uuid::new_v4();
        let token = jwt.issue(user, 3);
        let claims = jwt.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.ver), (user, 3));
        let other = Jwt::new("other secret", Duration::from_secs(60));
        assert_eq!(other.verify(&token).unwrap_err().code, "invalid_token");
    }

    #[test]
    fn an_expired_token_says_so() {
        let jwt = Jwt::new("secret", Duration::from_secs(0));
        let token = jwt.issue(Uuid::new_v4(), 0);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(jwt.verify(&token).unwrap_err().code, "token_expired");
    }

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
