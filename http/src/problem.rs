//! `application/problem+json` (RFC 9457) with a stable snake_case `code`
//! (API.md, Conventions), rendered the same way by every HTTP role.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde::Serialize;

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

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("https://tidings.dev/problems/{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            errors: Vec::new(),
        }
    }

    /// The response, with `Retry-After` when given.
    pub fn response(&self, retry_after: Option<u64>) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(seconds) = retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.body(serde_json::to_string(self).expect("problems serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_its_code_in_its_type() {
        let problem = Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "no");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json["type"],
            "https://tidings.dev/problems/method-not-allowed"
        );
        assert_eq!(json["title"], "Method Not Allowed");
        assert_eq!(json["status"], 405);
        assert!(json.get("errors").is_none());
        let response = problem.response(Some(2));
        assert_eq!(response.headers().get("retry-after").unwrap(), "2");
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
    }
}
