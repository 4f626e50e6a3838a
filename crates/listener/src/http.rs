//! The listener's own HTTP endpoints: `/healthz` for liveness and `/metrics` for Prometheus.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::gate::DatabaseGate;
use crate::metrics::ListenerMetrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<ListenerMetrics>,
    gate: DatabaseGate,
}

pub fn router(metrics: Arc<ListenerMetrics>, gate: DatabaseGate) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, gate })
}

/// Always 200 while the process runs: a listener waiting out a MySQL outage is healthy and must
/// not be restarted. The body says whether MySQL currently takes writes.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let database = if state.gate.is_up() { "up" } else { "down" };
    axum::Json(serde_json::json!({ "status": "ok", "database": database }))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
