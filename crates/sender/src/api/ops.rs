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

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Up,
    Down,
}

/// Whether the sender can do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    NotReady,
}

/// Each dependency, `up` or `down`. Why one is down goes to the log only: errors name hosts,
/// queue URLs and account ids.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub mysql: CheckStatus,
    pub redis: CheckStatus,
    pub sqs: CheckStatus,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` when MySQL, Redis and SQS all answer, `not_ready` otherwise.
    pub status: ReadinessStatus,
    pub checks: Checks,
}

/// `up` or `down` for one check, logging why it is down.
fn check(
    dependency: &'static str,
    result: Result<anyhow::Result<()>, tokio::time::error::Elapsed>,
) -> CheckStatus {
    match result {
        Ok(Ok(())) => CheckStatus::Up,
        Ok(Err(e)) => {
            tracing::warn!(
                dependency,
                error = format!("{e:#}"),
                "Readiness check failed"
            );
            CheckStatus::Down
        }
        Err(_) => {
            tracing::warn!(dependency, timeout = ?CHECK_TIMEOUT, "Readiness check got no answer in time");
            CheckStatus::Down
        }
    }
}

/// Readiness: 200 when MySQL and SQS answer, 503 otherwise; each dependency's state in the body.
/// Redis is reported but does not decide: it holds nothing the API needs to accept a job (rate
/// limits fail open, progress falls back to MySQL), and a Redis blip must not take every replica
/// out of its Service at once.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "MySQL and SQS answer (Redis may be down: see checks)", body = Readiness),
    (status = 503, description = "MySQL or SQS does not answer", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mysql = tokio::time::timeout(CHECK_TIMEOUT, async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::new)
    });
    let redis = tokio::time::timeout(CHECK_TIMEOUT, async {
        let mut conn = state
            .progress
            .connection()
            .ok_or_else(|| anyhow::anyhow!("not connected since start-up; retrying"))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::new)
    });
    let sqs = tokio::time::timeout(CHECK_TIMEOUT, async {
        accrual_core::sqs::approximate_depth(&state.sqs, &state.queue_url)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::new)
    });
    let (mysql, redis, sqs) = tokio::join!(mysql, redis, sqs);
    let checks = Checks {
        mysql: check("mysql", mysql),
        redis: check("redis", redis),
        sqs: check("sqs", sqs),
    };
    let ready = [checks.mysql, checks.sqs]
        .iter()
        .all(|c| *c == CheckStatus::Up);
    let (status, readiness) = if ready {
        (StatusCode::OK, ReadinessStatus::Ready)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, ReadinessStatus::NotReady)
    };
    (
        status,
        Json(Readiness {
            status: readiness,
            checks,
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
