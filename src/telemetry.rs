//! Logs (human-readable on a terminal, JSON lines otherwise) and metrics
//! (the Prometheus recorder behind `GET /metrics`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().try_init()
    };
    // A second init (tests share a process) keeps the first subscriber.
    drop(installed);
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets of the HTTP histogram, in seconds: 1 ms to 10 s.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide metrics recorder, once.
pub fn install_metrics() {
    METRICS.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("tidings_http_request_duration_seconds".into()),
                HTTP_BUCKETS,
            )
            .expect("buckets are not empty")
            .install_recorder()
            .expect("the only metrics recorder of this process")
    });
}

/// This process's metrics in the Prometheus text format.
pub fn render_metrics() -> String {
    METRICS
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}
