//! Every client-visible error: `application/problem+json` with a stable
//! snake_case `code` (API.md, Conventions), rendered the same way everywhere.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tidings_commands::{BusError, Outcome};
use tidings_domain::ErrorKind;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u64>,
}

/// `application/problem+json` (RFC 9457) with a stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, snake_case: what clients branch on (`email_taken`…).
    pub code: String,
    /// One entry per offending field, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_owned(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 400: the request could not be read at all.
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 422 `validation_failed`, with one entry per offending field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        ApiError {
            errors,
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "some fields are not acceptable",
            )
        }
    }

    pub fn unauthorized(code: &str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    /// 404, also for what exists but the caller may not see.
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// 503 with `Retry-After`: a dependency is down or too slow.
    pub fn unavailable(code: &str, detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// 503 `overloaded` with `Retry-After`: beyond capacity (password
    /// hashing saturated), refused before anything was done.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        ApiError::unavailable("overloaded", detail, 1)
    }

    /// 422 `idempotency_key_reused`: the key already stands for another
    /// request of the same caller.
    pub fn idempotency_key_reused() -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request; use a new key",
        )
    }

    /// 409 `idempotency_key_in_flight` with `Retry-After`: the first request
    /// with this key is still being answered.
    pub fn idempotency_key_in_flight() -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still in flight; retry shortly",
            )
        }
    }

    /// 500 for what no client could have caused: the cause chain is logged,
    /// the client sees nothing of it.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side",
        )
    }

    /// A command's rejection, mapped by its kind.
    pub fn rejected(code: &str, kind: ErrorKind, message: &str) -> Self {
        let status = match kind {
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, code, message)
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
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
            kind: format!(
                "https://tidings.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.title().to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
            errors: self.errors.clone(),
        };
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.body(serde_json::to_string(&problem).expect("problems serialize"))
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Unavailable(_) => {
                tracing::warn!(%error, "command log unavailable");
                ApiError::unavailable(
                    "log_unavailable",
                    "the command log is unavailable; retry",
                    2,
                )
            }
            BusError::Timeout(_) => ApiError::unavailable(
                "command_timeout",
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
                    "database_unavailable",
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
