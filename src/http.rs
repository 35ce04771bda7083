//! The operator's HTTP endpoints: `/metrics`, `/healthz` (the process is alive) and
//! `/readyz` (the replica's last Lease round got an answer from the API server: it leads,
//! or stands by able to take over).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(|State(h): State<Health>| async move { h.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "no answer from the API server")
                }
            }),
        )
        .with_state(health)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health)).with_graceful_shutdown(shutdown).await
}
