//! The small HTTP listener of the worker and the sender: `GET /api/health`
//! and `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::consume::Liveness;

/// Liveness answer: the service is up (it depends on nothing).
pub async fn health() -> (StatusCode, &'static str) {
    (StatusCode::OK, "{\"status\":\"ok\"}")
}

pub async fn metrics(State(handle): State<PrometheusHandle>) -> String {
    crate::telemetry::render(&handle)
}

/// Liveness of a service with consumer runtimes: 503 naming the runtime
/// whose dispatcher has stopped turning.
async fn health_of(State(checks): State<Arc<Vec<Liveness>>>) -> (StatusCode, String) {
    for check in checks.iter() {
        if let Some(silence) = check.stalled() {
            let body = serde_json::json!({
                "status": "stalled",
                "consumer": check.name(),
                "silent_ms": u64::try_from(silence.as_millis()).unwrap_or(u64::MAX),
            });
            return (StatusCode::SERVICE_UNAVAILABLE, body.to_string());
        }
    }
    (StatusCode::OK, "{\"status\":\"ok\"}".to_owned())
}

/// `/api/health` (failing when one of `checks` has stalled) and `/metrics`.
pub fn router(checks: Vec<Liveness>) -> Router {
    Router::new()
        .route("/api/health", get(health_of).with_state(Arc::new(checks)))
        .route("/metrics", get(metrics).with_state(crate::telemetry::metrics_handle()))
}

/// A bound ops listener; `serve` runs it until `shutdown`.
pub struct OpsServer {
    listener: TcpListener,
}

impl OpsServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        // The recorder before any metric handle the service makes.
        crate::telemetry::metrics_handle();
        Ok(Self { listener: TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; `/api/health` watches `checks`.
    pub async fn serve(self, shutdown: CancellationToken, checks: Vec<Liveness>) -> std::io::Result<()> {
        tokio::spawn(crate::telemetry::upkeep(shutdown.clone()));
        axum::serve(self.listener, router(checks)).with_graceful_shutdown(shutdown.cancelled_owned()).await
    }
}
