//! Routes for operators and machines: liveness, readiness and metrics. None needs an API key.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use crate::state::AppState;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process serves HTTP", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `up` or `down`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` when MySQL and SQS answer (Redis is optional: without it rate limits fail open and
    /// progress comes from MySQL), `not_ready` otherwise.
    pub status: &'static str,
    pub mysql: Check,
    pub redis: Check,
    pub sqs: Check,
}

fn check<E: std::fmt::Display>(
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Check {
    match result {
        Ok(Ok(())) => Check {
            status: "up",
            error: None,
        },
        Ok(Err(e)) => Check {
            status: "down",
            error: Some(e.to_string()),
        },
        Err(_) => Check {
            status: "down",
            error: Some(format!("no answer within {CHECK_TIMEOUT:?}")),
        },
    }
}

/// Readiness: 200 when MySQL and SQS answer, 503 otherwise; each dependency's state in the body.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "MySQL and SQS answer", body = Readiness),
    (status = 503, description = "MySQL or SQS does not answer", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mysql = tokio::time::timeout(CHECK_TIMEOUT, async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    });
    let redis = tokio::time::timeout(CHECK_TIMEOUT, async {
        match state.progress.connection() {
            Some(mut conn) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("not connected (unreachable at start-up)".to_owned()),
        }
    });
    let sqs = tokio::time::timeout(CHECK_TIMEOUT, async {
        accrual_core::sqs::approximate_depth(&state.sqs, &state.queue_url)
            .await
            .map(|_| ())
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
    });
    let (mysql, redis, sqs) = tokio::join!(mysql, redis, sqs);
    let body = Readiness {
        mysql: check(mysql),
        redis: check(redis),
        sqs: check(sqs),
        status: "ready",
    };
    let ready = body.mysql.status == "up" && body.sqs.status == "up";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            ..body
        }),
    )
}

/// Prometheus metrics, with the dispatch lag read from MySQL at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let lag: Result<Result<(Option<f64>, i64), sqlx::Error>, _> =
        tokio::time::timeout(CHECK_TIMEOUT, async {
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
