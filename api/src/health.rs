//! `GET /health` (the process is alive), `GET /ready` (each dependency and
//! each role of the process reported; 503 when one is down) and
//! `GET /metrics` (Prometheus text).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::ApiState;

/// A check that answers within [`CHECK_TIMEOUT`]: a hung dependency is a
/// down one.
async fn bounded(check: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

/// How long `/ready` waits on one dependency before calling it down.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

/// Renders this process's metrics in the Prometheus text format.
pub struct Metrics(pub Box<dyn Fn() -> String + Send + Sync>);

/// This process's metrics, Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(crate) async fn metrics(metrics: Option<web::Data<Metrics>>) -> HttpResponse {
    let body = metrics.map(|m| (m.0)()).unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

/// Whether the process is alive.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "alive")))]
pub(crate) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Reports what each role of this process is doing.
pub struct Roles(pub Box<dyn Fn() -> Vec<RoleReport> + Send + Sync>);

/// One role of the process, as `/ready` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoleReport {
    /// `deciders`, `projector`, `outbox relay`…
    pub role: String,
    /// `running`; `restarting` (it failed and starts again after a pause);
    /// `stopped`.
    pub state: String,
    /// How many partitions it owns, for a role that shares its work in a
    /// consumer group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<usize>,
    /// Partitions it stopped at an event this build cannot read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub halted: Vec<i32>,
    /// Running, owning partitions if it should, and none halted.
    pub ready: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    status: &'static str,
    kafka: &'static str,
    postgres: &'static str,
    redis: &'static str,
    roles: Vec<RoleReport>,
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// Whether Kafka and PostgreSQL answer and every role of the process runs and
/// owns its share of partitions (Redis is reported; without it reads are
/// slower, not wrong).
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "a dependency is down, or a role is restarting or owns no partition; `Retry-After`", body = Readiness)))]
pub(crate) async fn ready(
    state: web::Data<ApiState>,
    roles: Option<web::Data<Roles>>,
) -> HttpResponse {
    let (kafka, postgres, redis) = tokio::join!(
        bounded(state.bus.ping()),
        bounded(async { sqlx::query("SELECT 1").execute(&state.db).await.is_ok() }),
        bounded(state.cache.ping()),
    );
    let roles = roles.map(|r| (r.0)()).unwrap_or_default();
    // Redis down makes reads slower, not wrong: reported, not fatal.
    let ready = kafka && postgres && roles.iter().all(|r| r.ready);
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        kafka: word(kafka),
        postgres: word(postgres),
        redis: word(redis),
        roles,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "2"))
            .json(body)
    }
}
