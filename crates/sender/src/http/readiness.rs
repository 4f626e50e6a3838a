//! Readiness: whether MySQL, Redis and SQS answer, checked at most once per [`FRESH_FOR`].
//!
//! Each check costs a pooled MySQL connection, a Redis round trip and an SQS
//! `GetQueueAttributes` call. Probes, a scraper or anything else that reaches the operations port
//! may ask as often as it likes: a caller within `FRESH_FOR` of the last check gets its result,
//! and callers that arrive while a check runs wait for that check instead of starting their own.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::http::state::AppState;
use crate::metrics::SenderMetrics;

/// How long a check's result answers `/readyz`: a kubelet probing every 5 s always gets a fresh
/// check, and a flood costs one check a second at most.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// How long each dependency may take to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Up,
    Down,
}

/// Whether the sender can do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    NotReady,
}

/// Each dependency, `up` or `down`. Why one is down goes to the log only: errors name hosts,
/// queue URLs and account ids.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub mysql: CheckStatus,
    pub redis: CheckStatus,
    pub sqs: CheckStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// `ready` when MySQL and SQS answer, `not_ready` otherwise (Redis is reported but does not
    /// decide: see [`Readiness::of`]).
    pub status: ReadinessStatus,
    pub checks: Checks,
}

impl Readiness {
    /// Redis does not decide: it holds nothing the API needs to accept a job (rate limits fail
    /// open, progress falls back to MySQL), and a Redis blip must not take every replica out of
    /// its Service at once.
    fn of(checks: Checks) -> Self {
        let ready = checks.mysql == CheckStatus::Up && checks.sqs == CheckStatus::Up;
        Self {
            status: if ready {
                ReadinessStatus::Ready
            } else {
                ReadinessStatus::NotReady
            },
            checks,
        }
    }
}

/// The last check and when it ended, shared by every `/readyz` of this replica.
#[derive(Clone, Debug)]
pub struct CachedReadiness {
    pool: MySqlPool,
    progress: Progress,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    metrics: Arc<SenderMetrics>,
    /// A tokio Mutex, held across the check on purpose: whoever finds the result stale checks
    /// while the others wait for that result.
    last: Arc<Mutex<Option<(Instant, Readiness)>>>,
}

impl CachedReadiness {
    pub fn new(state: &AppState) -> Self {
        Self {
            pool: state.pool.clone(),
            progress: state.progress.clone(),
            sqs: state.sqs.clone(),
            queue_url: state.queue_url.clone(),
            metrics: state.metrics.clone(),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The last check if it ended less than [`FRESH_FOR`] ago, else a new one.
    pub async fn get(&self) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return readiness.clone();
        }
        let readiness = self.check().await;
        *last = Some((Instant::now(), readiness.clone()));
        readiness
    }

    /// Asks each dependency at once, each for at most [`CHECK_TIMEOUT`].
    async fn check(&self) -> Readiness {
        self.metrics.readiness_checks.inc();
        let mysql = tokio::time::timeout(CHECK_TIMEOUT, async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::new)
        });
        let redis = tokio::time::timeout(CHECK_TIMEOUT, async {
            let mut conn = self
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
            accrual_core::sqs::approximate_depth(&self.sqs, &self.queue_url)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::new)
        });
        let (mysql, redis, sqs) = tokio::join!(mysql, redis, sqs);
        Readiness::of(Checks {
            mysql: status("mysql", mysql),
            redis: status("redis", redis),
            sqs: status("sqs", sqs),
        })
    }
}

/// `up` or `down` for one check, logging why it is down.
fn status(
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
