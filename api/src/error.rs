//! Every client-visible error: `application/problem+json` with a stable
//! snake_case `code` (API.md, Conventions), rendered the same way everywhere.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use tidings_commands::{BusError, Outcome};
use tidings_domain::ErrorKind;
use tidings_http::auth::TokenError;
// The rendering and the codes are shared with the gateway.
pub use tidings_http::codes::Code;
pub use tidings_http::problem::{FieldError, Problem};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// The error of `code`, with the status the code answers with.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        let status = code
            .status()
            .expect("an HTTP answer carries a code with an HTTP status");
        ApiError::of(status, code.as_str(), detail)
    }

    fn of(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_owned(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 422 `validation_failed`, with one entry per offending field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        ApiError {
            errors,
            ..ApiError::new(Code::ValidationFailed, "some fields are not acceptable")
        }
    }

    /// 404, also for what exists but the caller may not see.
    pub fn not_found() -> Self {
        ApiError::new(Code::NotFound, "no such resource")
    }

    /// 405 `method_not_allowed`: the path exists, not under this method.
    pub fn method_not_allowed(allow: &str) -> Self {
        ApiError::new(
            Code::MethodNotAllowed,
            format!("this path answers {allow} only"),
        )
    }

    /// 503 with `Retry-After`: a dependency is down or too slow.
    pub fn unavailable(code: Code, detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(code, detail)
        }
    }

    /// 503 `overloaded` with `Retry-After`: beyond capacity (password
    /// hashing saturated), refused before anything was done.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        ApiError::unavailable(Code::Overloaded, detail, 1)
    }

    /// 422 `idempotency_key_reused`: the key already stands for another
    /// request of the same caller.
    pub fn idempotency_key_reused() -> Self {
        ApiError::new(
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used for another request; use a new key",
        )
    }

    /// 409 `idempotency_key_in_flight` with `Retry-After`: the first request
    /// with this key is still being answered.
    pub fn idempotency_key_in_flight() -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                Code::IdempotencyKeyInFlight,
                "a request with this Idempotency-Key is still in flight; retry shortly",
            )
        }
    }

    /// 500 for what no client could have caused: the cause chain is logged,
    /// the client sees nothing of it.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        ApiError::new(Code::Internal, "something went wrong on our side")
    }

    /// A command's rejection, mapped by its kind.
    pub fn rejected(code: &str, kind: ErrorKind, message: &str) -> Self {
        let status = match kind {
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::of(status, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = Problem {
            errors: self.errors.clone(),
            ..Problem::new(self.status, &self.code, self.detail.clone())
        };
        problem.response(self.retry_after)
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::new(error.code, error.detail)
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Unavailable(_) => {
                tracing::warn!(%error, "command log unavailable");
                ApiError::unavailable(
                    Code::LogUnavailable,
                    "the command log is unavailable; retry",
                    2,
                )
            }
            BusError::Timeout(_) => ApiError::unavailable(
                Code::CommandTimeout,
                "the command was not decided in time; retry with the same Idempotency-Key",
                1,
            ),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(%error, "database unavailable");
                ApiError::unavailable(
                    Code::DatabaseUnavailable,
                    "the database is unavailable; retry",
                    2,
                )
            }
            other => ApiError::internal(other),
        }
    }
}

/// What a command's outcome means for a handler that expected acceptance.
pub fn accepted(outcome: Outcome) -> Result<tidings_schemas::Position, ApiError> {
    match outcome {
        Outcome::Accepted { position } => Ok(position),
        Outcome::Rejected {
            code,
            kind,
            message,
        } => Err(ApiError::rejected(&code, kind, &message)),
    }
}
