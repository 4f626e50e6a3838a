//! The HTTP API.

pub mod accruals;
pub mod auth;
pub mod error;
pub mod jobs;
pub mod request_id;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// All routes, with the request-id middleware around them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/accruals", post(accruals::post))
        .route("/v1/jobs/{job_id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{job_id}/events", get(jobs::events))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
        .layer(axum::middleware::from_fn(request_id::assign))
}
