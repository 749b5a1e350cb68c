//! Middleware of every request: a request id, and read-your-writes.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tidings_projections::db::WaitError;
use tidings_schemas::Position;
use uuid::Uuid;

use crate::context::RequestId;
use crate::error::{ApiError, Code};
use crate::{error_response, ApiState};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives each request an id — the client's `X-Request-Id` if it is a UUID —
/// which becomes the correlation id of the commands it sends, and echoes it.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Uuid>().ok())
        .unwrap_or_else(Uuid::new_v4);
    req.extensions_mut().insert(RequestId(id));
    let mut response = next.call(req).await?;
    response.headers_mut().insert(
        X_REQUEST_ID,
        HeaderValue::from_str(&id.to_string()).expect("a UUID is a header value"),
    );
    Ok(response)
}

/// Counts every request by route, method and status, and times it.
pub async fn http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    // The route pattern, not the path: ids must not explode the label set.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let response = next.call(req).await?;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tidings_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tidings_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// The position a request asked to read at (`X-Min-Position`), once the read
/// models passed it: what is read from a cache must be that far too.
#[derive(Debug, Clone)]
pub struct MinPosition(pub Position);

impl MinPosition {
    pub fn of(req: &actix_web::HttpRequest) -> Option<Position> {
        req.extensions().get::<MinPosition>().map(|m| m.0.clone())
    }
}

/// A GET that carries `X-Min-Position` is answered only once the read models
/// have passed that position; past the bounded wait, 503 with `Retry-After`.
pub async fn read_your_writes(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let token = req
        .headers()
        .get("x-min-position")
        .filter(|_| req.method() == actix_web::http::Method::GET)
        .map(|v| v.to_str().map(str::to_owned));
    // Without credentials a secured route answers 401 whatever else is wrong
    // with the request, and reads nothing: no position to wait for.
    let anonymous_on_secured = crate::auth::bearer(req.request()).is_none()
        && match (
            req.match_pattern(),
            req.app_data::<web::Data<crate::docs::Spec>>(),
        ) {
            (Some(pattern), Some(spec)) => spec.secured(&pattern, req.method().as_str()),
            _ => false,
        };
    if let Some(token) = token.filter(|_| !anonymous_on_secured) {
        match wait(&req, token.ok()).await {
            Ok(position) => {
                req.extensions_mut().insert(MinPosition(position));
            }
            Err(error) => {
                let (http, _) = req.into_parts();
                return Ok(ServiceResponse::new(http, error_response(error)).map_into_right_body());
            }
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

async fn wait(req: &ServiceRequest, token: Option<String>) -> Result<Position, ApiError> {
    let position: Position = token.and_then(|t| t.parse().ok()).ok_or_else(|| {
        ApiError::new(
            Code::InvalidPosition,
            "X-Min-Position is not a position token",
        )
    })?;
    let state = req
        .app_data::<web::Data<ApiState>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("ApiState missing")))?;
    if position.partitions().any(|(partition, offset)| {
        !(0..state.settings.partitions).contains(&partition) || offset < 0
    }) {
        return Err(ApiError::new(
            Code::InvalidPosition,
            "X-Min-Position names a place that is not in the log",
        ));
    }
    match state
        .progress
        .wait_for(&position, state.settings.min_position_wait)
        .await
    {
        Ok(()) => Ok(position),
        Err(WaitError::TimedOut(_)) => Err(ApiError::unavailable(
            Code::PositionNotReached,
            "the read model has not caught up with that position yet",
            1,
        )),
        Err(WaitError::Database(error)) => Err(error.into()),
    }
}
