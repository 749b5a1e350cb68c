//! Bearer tokens: HS256 JWTs that carry the account's token version (`ver`),
//! and the header they come in.
//!
//! Checking a token against its account (is `ver` still the account's?)
//! needs the read model: the REST API does it, and gives the gateway an
//! [`Authenticator`] that does it the same way.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::HttpRequest;
use chrono::Utc;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    /// The account's token version when the token was issued.
    pub ver: i32,
}

/// Why a token is refused (401); `code` is the problem's and the frame's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub code: crate::codes::Code,
    pub detail: &'static str,
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
    /// against the account (see [`Authenticator`]).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                JwtErrorKind::ExpiredSignature => TokenError {
                    code: crate::codes::Code::TokenExpired,
                    detail: "the token has expired",
                },
                _ => TokenError {
                    code: crate::codes::Code::InvalidToken,
                    detail: "the token is not valid",
                },
            })
    }
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

/// Who a token names, once checked against the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    /// When the token expires (Unix seconds).
    pub expires_at: i64,
    /// The account's token version the token carries: a socket learns from
    /// its channel when a password change moves past it.
    pub token_version: i32,
}

/// Why a token was not accepted: a stable `code` and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
}

/// Checks a token the way the REST API does (signature, expiry, the
/// account's token version).
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, Rejection>> + Send + 'a>>;
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
        assert_eq!(
            other.verify(&token).unwrap_err().code.as_str(),
            "invalid_token"
        );
    }

    #[test]
    fn an_expired_token_says_so() {
        let jwt = Jwt::new("secret", Duration::from_secs(0));
        let token = jwt.issue(Uuid::new_v4(), 0);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            jwt.verify(&token).unwrap_err().code.as_str(),
            "token_expired"
        );
    }
}
