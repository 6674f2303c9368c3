//! The small HTTP listener of the worker and the sender: `GET /api/health`
//! and `GET /metrics`.

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Liveness answer: the service is up (it depends on nothing).
pub async fn health() -> (StatusCode, &'static str) {
    (StatusCode::OK, "{\"status\":\"ok\"}")
}

pub async fn metrics(State(handle): State<PrometheusHandle>) -> String {
    handle.render()
}

/// `/api/health` and `/metrics`, to merge into a service's router or serve alone.
pub fn router() -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(crate::telemetry::metrics_handle())
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

    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tokio::spawn(crate::telemetry::upkeep(shutdown.clone()));
        axum::serve(self.listener, router()).with_graceful_shutdown(shutdown.cancelled_owned()).await
    }
}
