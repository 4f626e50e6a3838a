//! The operations port (`SENDER_OPS_ADDR`): liveness, readiness and metrics for the orchestrator
//! and Prometheus. None needs a key, so none of it is on the API port but `/healthz`, and none of
//! it is in the public contract but `/healthz`: the metrics show every client's business volume,
//! and each readiness check costs an SQS call and a MySQL connection.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::readiness::{CachedReadiness, ReadinessStatus};
use crate::http::state::AppState;

/// How long reading the dispatch lag for `/metrics` may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// What the operations port's handlers share.
#[derive(Clone)]
struct OpsState {
    app: AppState,
    readiness: CachedReadiness,
}

/// The operations port's routes, with the same request ids, request metrics and problem+json
/// fallbacks as the API's.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let ops = OpsState {
        readiness: CachedReadiness::new(&state),
        app: state,
    };
    let router = Router::new()
        .route("/healthz", get(check_health))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops);
    super::middleware::finish(router, metrics)
}

/// Liveness: the process serves HTTP. On both ports.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process serves HTTP", content_type = "text/plain", body = String)))]
pub async fn check_health() -> &'static str {
    "ok"
}

/// Readiness: 200 when MySQL and SQS answer, 503 otherwise; each dependency's state in the body.
/// Answered from a check at most [`super::readiness::FRESH_FOR`] old.
async fn readyz(State(ops): State<OpsState>) -> impl IntoResponse {
    let readiness = ops.readiness.get().await;
    let status = match readiness.status {
        ReadinessStatus::Ready => StatusCode::OK,
        ReadinessStatus::NotReady => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(readiness))
}

/// Each client's due points not yet dispatched and the age of its oldest due chunk: what waits
/// in MySQL, which the queue's depth does not show (a reserved job counts once it is due).
async fn client_backlogs(pool: &sqlx::MySqlPool) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.client_id, CAST(SUM(c.item_count) AS SIGNED), \
                CAST(TIMESTAMPDIFF(MICROSECOND, MIN(c.due_at), NOW(6)) / 1e6 AS DOUBLE) \
         FROM accrual_chunks c JOIN accrual_jobs j ON j.job_id = c.job_id \
         WHERE c.dispatched_at IS NULL AND c.due_at <= NOW(6) \
         GROUP BY j.client_id",
    )
    .fetch_all(pool)
    .await
}

/// Prometheus metrics, with the dispatch lag and the clients' backlogs read from MySQL at scrape
/// time.
async fn metrics_text(State(ops): State<OpsState>) -> impl IntoResponse {
    let state = ops.app;
    let lag: Result<Result<(Option<f64>, i64), sqlx::Error>, _> =
        tokio::time::timeout(LAG_TIMEOUT, async {
            sqlx::query_as(
                "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, MIN(due_at), NOW(6)) / 1e6 AS DOUBLE), COUNT(*) \
                 FROM accrual_chunks WHERE dispatched_at IS NULL AND due_at <= NOW(6)",
            )
            .fetch_one(&state.pool)
            .await
        })
        .await;
    match lag {
        Ok(Ok((age, pending))) => {
            state
                .metrics
                .dispatch_lag_seconds
                .set(age.unwrap_or(0.0).max(0.0));
            state.metrics.chunks_pending.set(pending);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "Could not read the dispatch lag"),
        Err(_) => tracing::warn!("Reading the dispatch lag timed out"),
    }
    let backlogs = tokio::time::timeout(LAG_TIMEOUT, client_backlogs(&state.pool)).await;
    match backlogs {
        Ok(Ok(rows)) => state.metrics.set_client_backlogs(&rows),
        Ok(Err(e)) => tracing::warn!(error = %e, "Could not read the clients' backlogs"),
        Err(_) => tracing::warn!("Reading the clients' backlogs timed out"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
