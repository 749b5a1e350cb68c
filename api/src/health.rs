//! `GET /health` (the process is alive), `GET /ready` (each dependency
//! reported; 503 when one is down) and `GET /metrics` (Prometheus text).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

/// Renders this process's metrics in the Prometheus text format.
pub struct Metrics(pub Box<dyn Fn() -> String + Send + Sync>);

async fn metrics(metrics: Option<web::Data<Metrics>>) -> HttpResponse {
    let body = metrics.map(|m| (m.0)()).unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    kafka: &'static str,
    postgres: &'static str,
    redis: &'static str,
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let (kafka, postgres, redis) = tokio::join!(
        state.bus.ping(),
        async { sqlx::query("SELECT 1").execute(&state.db).await.is_ok() },
        state.cache.ping(),
    );
    // Redis down makes reads slower, not wrong: reported, not fatal.
    let ready = kafka && postgres;
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        kafka: word(kafka),
        postgres: word(postgres),
        redis: word(redis),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "2"))
            .json(body)
    }
}
