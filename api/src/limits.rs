//! Rate limits on writes and logins (`tidings_http::limits`), checked
//! before anything else of a request is done.
//!
//! - registration, login and password forgot/reset: per address;
//! - every other write (POST, PUT, PATCH, DELETE): per signed-in user (the
//!   token's subject, when its signature holds) and per address;
//! - login attempts naming one account: in [`crate::accounts`], where the
//!   name is read.
//!
//! A request let through carries the `RateLimit` headers of the tightest
//! limit it counted against; one refused gets 429 `rate_limited`.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::web;
use tidings_http::limits::{Key, Limiter, Verdict, RATELIMIT};

use crate::ApiState;

/// The anonymous routes that try a password or send mail.
const LOGINS: [&str; 4] = [
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/password/forgot",
    "/api/auth/password/reset",
];

pub async fn middleware(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let state = req.app_data::<web::Data<ApiState>>().cloned();
    let (Some(state), true) = (state, writes) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let limits = &state.limits;
    let ip = req.peer_addr().map(|addr| Key::ip(addr.ip()));
    let mut counted: Vec<(&Limiter, Key)> = Vec::with_capacity(2);
    if LOGINS.contains(&req.path()) {
        counted.extend(limits.ip_logins.as_ref().zip(ip));
    } else {
        let user = crate::auth::bearer(req.request())
            .and_then(|token| state.jwt.verify(token).ok())
            .map(|claims| Key::User(claims.sub));
        counted.extend(limits.user_writes.as_ref().zip(user));
        counted.extend(limits.ip_writes.as_ref().zip(ip));
    }
    let mut tightest: Option<(&Limiter, u32, std::time::Duration)> = None;
    for (limiter, key) in counted {
        match limiter.check(key) {
            Verdict::Refused { retry_after } => {
                let (http, _) = req.into_parts();
                let response = limiter.refusal(retry_after);
                return Ok(ServiceResponse::new(http, response).map_into_right_body());
            }
            Verdict::Allowed { remaining, reset } => {
                if tightest.is_none_or(|(_, least, _)| remaining < least) {
                    tightest = Some((limiter, remaining, reset));
                }
            }
        }
    }
    let mut response = next.call(req).await?;
    // A handler's own limit (an account's logins) speaks for itself.
    let answered = response.headers().contains_key(RATELIMIT);
    if let Some((limiter, remaining, reset)) = tightest.filter(|_| !answered) {
        for (name, value) in limiter.headers(remaining, reset) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response.map_into_left_body())
}
