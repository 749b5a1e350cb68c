//! # tidings-api: the REST API
//!
//! Handlers are thin: a body is read into a DTO, turned (`TryFrom`) into a
//! command, sent on the [`CommandBus`], and the outcome mapped to a response.
//! Reads come from the projections, through the Redis cache.
//!
//! - [`accounts`]: register, login, profiles — start here;
//! - [`details`]: the extended profile, and its public part;
//! - [`passwords`]: forgot, reset and change (a reset token by mail);
//! - [`posts`], [`follows`], [`notifications`]: the social routes (posts,
//!   reactions, comments, the feed; follows; notifications);
//! - [`media`]: uploads of images and videos, and serving them;
//! - [`rooms`]: rooms, their members and messages, direct conversations;
//! - [`admin`]: the admin routes (the event log, aggregates as of an
//!   instant, projector lag), for `TIDINGS_ADMIN_USERNAMES`;
//! - [`page`]: cursor pagination;
//! - [`auth`]: JWTs, passwords, the [`auth::Authenticated`] extractor;
//! - [`context`]: request id, idempotency key, command envelopes;
//! - [`docs`]: OpenAPI at `/openapi.json`, the reference page at `/docs`;
//! - [`error`]: problem+json with a stable `code`;
//! - [`idempotency`]: `Idempotency-Key` on every write, one middleware;
//! - [`middleware`]: request ids and `X-Min-Position` (read-your-writes);
//! - [`validate`]: field rules.
//!
//! Depends on `tidings-commands` and `tidings-projections`.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod context;
pub mod details;
pub mod docs;
pub mod error;
pub mod follows;
pub mod health;
pub mod idempotency;
pub mod limits;
pub mod media;
pub mod middleware;
pub mod notifications;
pub mod page;
pub mod passwords;
pub mod posts;
pub mod rooms;
pub mod validate;
pub mod webhooks;

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use sqlx::{FromRow, PgPool, Row};
use tidings_commands::CommandBus;
use tidings_projections::accounts::AccountRow;
use tidings_projections::db::Progress;
use tidings_projections::Cache;
use tidings_schemas::Position;
use uuid::Uuid;

use crate::auth::Jwt;
use crate::error::{ApiError, Code, FieldError};

/// The largest JSON body accepted; anything larger is a 413.
pub const MAX_JSON_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The longest a read waits for `X-Min-Position` (and a write for its own
    /// projection) before answering 503.
    pub min_position_wait: Duration,
    /// Partitions of the topics: a position naming another one names no
    /// place in the log.
    pub partitions: i32,
    /// How long a password reset token works.
    pub password_reset_ttl: Duration,
    /// At most one reset mail per address per this.
    pub forgot_interval: Duration,
    /// Mails waiting to be sent beyond which a reset is refused (503).
    pub mail_queue_max: i64,
    /// The usernames of the site's admins, in lower case.
    pub admins: Vec<String>,
    /// The log the admin routes read.
    pub kafka: tidings_schemas::kafka::KafkaSettings,
    /// Where webhook URLs may point.
    pub destinations: tidings_http::outbound::Destinations,
}

/// What every handler shares.
pub struct ApiState {
    pub db: PgPool,
    /// How far the projector has committed; wakes readers waiting for a
    /// position.
    pub progress: Progress,
    pub cache: Cache,
    pub bus: CommandBus,
    pub jwt: Jwt,
    pub settings: ApiSettings,
    /// Rate limits of writes and logins (shared with the gateway's).
    pub limits: std::sync::Arc<tidings_http::limits::Limits>,
}

impl ApiState {
    /// An account as of at least `needed` (read-your-writes): from the cache
    /// when its entry is that far, else from PostgreSQL (refilling the
    /// cache).
    pub async fn account(
        &self,
        id: Uuid,
        needed: Option<&Position>,
    ) -> Result<Option<AccountRow>, ApiError> {
        if let Some(account) = self.cache.account(id, needed).await {
            return Ok(Some(account));
        }
        self.account_from_db(id).await
    }

    /// Whether the read models show a write at `position` within the
    /// bounded wait: a write answers with what it wrote once they do, and
    /// with only its position (202) when they lag.
    pub async fn projected(&self, position: &Position) -> bool {
        self.progress
            .wait_for(position, self.settings.min_position_wait)
            .await
            .is_ok()
    }

    /// An account from PostgreSQL, and into the cache with the projector
    /// offsets of the same snapshot: exactly the position the row reflects.
    pub async fn account_from_db(&self, id: Uuid) -> Result<Option<AccountRow>, ApiError> {
        let row = sqlx::query(
            "SELECT a.*,
                    ARRAY(SELECT partition FROM projector_offsets ORDER BY partition) AS at_partitions,
                    ARRAY(SELECT next_offset FROM projector_offsets ORDER BY partition) AS at_offsets
             FROM accounts a WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let account = AccountRow::from_row(&row)?;
        let partitions: Vec<i32> = row.try_get("at_partitions")?;
        let offsets: Vec<i64> = row.try_get("at_offsets")?;
        let at: Vec<(i32, i64)> = partitions.into_iter().zip(offsets).collect();
        self.cache.put_account(&account, &at).await;
        Ok(Some(account))
    }
}

/// Mounts every REST route, and the extractor settings that turn bad input
/// into problem+json.
/// Health, readiness, metrics and the documents: served by every process
/// that serves HTTP, a gateway without the API among them.
pub fn operations(cfg: &mut web::ServiceConfig) {
    cfg.configure(health::routes).configure(docs::routes);
}

/// The REST API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config())
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .configure(accounts::routes)
        .configure(details::routes)
        .configure(passwords::routes)
        .configure(posts::routes)
        .configure(media::routes)
        .configure(follows::routes)
        .configure(notifications::routes)
        .configure(rooms::routes)
        .configure(admin::routes)
        .configure(webhooks::routes);
}

/// The answer for a request no route takes: 405 with `Allow` when the path
/// exists under other methods (RFC 9110 §15.5.6), else 404. The methods come
/// from the OpenAPI document, which a test holds to the mounted routes.
pub async fn not_found(req: HttpRequest, spec: Option<web::Data<docs::Spec>>) -> HttpResponse {
    let allowed = match (req.match_pattern(), spec) {
        (Some(pattern), Some(spec)) => spec.methods(&pattern),
        _ => Vec::new(),
    };
    if allowed.is_empty() {
        return error_response(ApiError::not_found());
    }
    let allow = allowed.join(", ");
    let mut response = error_response(ApiError::method_not_allowed(&allow));
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_str(&allow).expect("method names are ASCII"),
    );
    response
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_JSON_BODY)
        .error_handler(|error, _req: &HttpRequest| json_error(error).into())
}

fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::new(
                Code::PayloadTooLarge,
                format!("the body is larger than {MAX_JSON_BODY} bytes"),
            )
        }
        JsonPayloadError::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "send the body as application/json",
        ),
        JsonPayloadError::Deserialize(error) if error.is_data() => {
            ApiError::validation(vec![FieldError::new(&field_of(&error), error.to_string())])
        }
        JsonPayloadError::Deserialize(error) => {
            ApiError::new(Code::MalformedJson, error.to_string())
        }
        other => ApiError::new(Code::MalformedBody, other.to_string()),
    }
}

/// The field a serde error names (``missing field `email` ``, ``unknown
/// field `x` ``), or `body` when it names none.
fn field_of(error: &serde_json::Error) -> String {
    let message = error.to_string();
    message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .unwrap_or("body")
        .to_owned()
}

fn path_error(_error: PathError, _req: &HttpRequest) -> actix_web::Error {
    // A path that cannot name anything (an id that is not a UUID) names
    // nothing that exists.
    ApiError::not_found().into()
}

fn query_error(error: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(Code::InvalidQuery, error.to_string()).into()
}

/// Refuses a JSON body that is an array, before any handler reads it: serde
/// reads a struct from an array of its fields in order, which no document
/// describes and no client means. Only the first non-blank byte is looked
/// at; the body goes on to its handler unchanged.
pub async fn json_objects(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if json {
        let mut payload = req.take_payload();
        let mut read = Vec::new();
        let mut first = None;
        while first.is_none() {
            match payload.next().await {
                Some(Ok(chunk)) => {
                    first = chunk.iter().copied().find(|b| !b.is_ascii_whitespace());
                    read.push(Ok(chunk));
                }
                Some(Err(error)) => {
                    read.push(Err(error));
                    break;
                }
                None => break,
            }
        }
        let body = futures_util::stream::iter(read).chain(payload);
        req.set_payload(actix_web::dev::Payload::Stream {
            payload: Box::pin(body),
        });
        if first == Some(b'[') {
            let error = ApiError::validation(vec![FieldError::new("body", "a JSON object")]);
            let (http, _) = req.into_parts();
            return Ok(ServiceResponse::new(http, error_response(error)).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Renders an [`ApiError`] as a response (for middleware).
pub fn error_response(error: ApiError) -> HttpResponse {
    actix_web::ResponseError::error_response(&error)
}
