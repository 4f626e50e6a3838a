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
        .route("/backlog", get(backlog_json))
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

/// Per client: due chunks not yet dispatched, their points, the messages they will make (a
/// chunk's points over `points_per_message`, rounded up) and the age of the oldest: what waits in
/// MySQL, which the queue's depth does not show (a reserved job counts once it is due).
async fn due_by_client(
    pool: &sqlx::MySqlPool,
    points_per_message: u64,
) -> Result<Vec<(String, i64, i64, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.client_id, COUNT(*), CAST(SUM(c.item_count) AS SIGNED), \
                CAST(SUM(CEIL(c.item_count / ?)) AS SIGNED), \
                CAST(TIMESTAMPDIFF(MICROSECOND, MIN(c.due_at), NOW(6)) / 1e6 AS DOUBLE) \
         FROM accrual_chunks c JOIN accrual_jobs j ON j.job_id = c.job_id \
         WHERE c.dispatched_at IS NULL AND c.due_at <= NOW(6) \
         GROUP BY j.client_id",
    )
    .bind(points_per_message)
    .fetch_all(pool)
    .await
}

/// The pipeline's backlog in messages, for KEDA's metrics-api scaler (`valueLocation:
/// messages`): the due points not yet dispatched as the messages they will make, plus the
/// queue's messages. Every replica reads the same MySQL and queue, so any one answers for all.
/// 503 when either cannot be read: KEDA then counts a failure towards its `fallback`, instead of
/// scaling the listeners in on a backlog that only looks empty.
async fn backlog_json(State(ops): State<OpsState>) -> axum::response::Response {
    let state = ops.app;
    match read_backlog(&state).await {
        Backlog {
            due_messages: Some(due),
            queue_messages: Some(queue),
        } => Json(serde_json::json!({
            "messages": due + queue,
            "due_messages": due,
            "queue_messages": queue,
        }))
        .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "MySQL or SQS did not answer; see the sender's log"})),
        )
            .into_response(),
    }
}

/// What one scrape reads: the messages the due chunks will make (MySQL) and the queue's depth
/// (SQS), each `None` when it could not be read.
struct Backlog {
    due_messages: Option<i64>,
    queue_messages: Option<i64>,
}

/// Reads the due chunks and the queue's depth at once, sets the gauges read at scrape time
/// (the dispatch lag, the chunks pending, the clients' backlogs and the pipeline backlog) and
/// returns what it read.
async fn read_backlog(state: &AppState) -> Backlog {
    let per_message = state.placing.points_per_message;
    let (due, depth) = tokio::join!(
        tokio::time::timeout(LAG_TIMEOUT, due_by_client(&state.pool, per_message)),
        tokio::time::timeout(
            LAG_TIMEOUT,
            accrual_core::sqs::approximate_depth(&state.sqs, &state.queue_url)
        ),
    );
    let queue_messages = match depth {
        Ok(Ok(depth)) => Some(depth as i64),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Could not read the queue's depth for the pipeline backlog");
            None
        }
        Err(_) => {
            tracing::warn!("Reading the queue's depth for the pipeline backlog timed out");
            None
        }
    };
    let rows = match due {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Could not read the dispatch lag");
            None
        }
        Err(_) => {
            tracing::warn!("Reading the dispatch lag timed out");
            None
        }
    };
    let due_messages = rows
        .as_ref()
        .map(|rows| rows.iter().map(|(_, _, _, messages, _)| messages).sum());
    if let Some(rows) = &rows {
        let pending = rows.iter().map(|(_, chunks, ..)| chunks).sum();
        let lag = rows.iter().map(|(.., lag)| *lag).fold(0.0, f64::max);
        state.metrics.dispatch_lag_seconds.set(lag);
        state.metrics.chunks_pending.set(pending);
        let backlogs: Vec<(String, i64, f64)> = rows
            .iter()
            .map(|(client, _, points, _, lag)| (client.clone(), *points, *lag))
            .collect();
        state.metrics.set_client_backlogs(&backlogs);
    }
    // Either part missing keeps the gauge at its last value: a backlog that dropped to one part
    // because the other did not answer would scale the listeners in.
    if let (Some(due), Some(queue)) = (due_messages, queue_messages) {
        state.metrics.pipeline_backlog_messages.set(due + queue);
    }
    Backlog {
        due_messages,
        queue_messages,
    }
}

/// Prometheus metrics, with the dispatch lag, the clients' backlogs and the pipeline's backlog
/// read at scrape time: one MySQL query (the totals are the clients' sums) and, beside it, the
/// queue's depth.
async fn metrics_text(State(ops): State<OpsState>) -> impl IntoResponse {
    let state = ops.app;
    read_backlog(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
