//! The completion task: settles jobs whose points are all sent, so a job reaches its final status
//! (and `completed_at` the time of its last point) by itself, with nobody reading it.
//!
//! Every sender replica runs one; settling is idempotent, so replicas need no lease. A job is
//! counted exactly ([`job_outcome::settle`]) when Redis's live counters say it may be done, and in
//! any case every [`RECHECK`] ([`RECHECK_WITHOUT_REDIS`] when Redis has nothing): live counters can
//! lag, and a dead letter recorded ahead of time starts counting later without anyone touching
//! Redis. A 500,000-point job draining for ten minutes is thus counted about twenty times, not
//! on every poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::job_outcome::{self, Settled};
use accrual_core::progress::Progress;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{JobLabels, SenderMetrics};

/// How often the task looks for jobs to settle.
pub const POLL: Duration = Duration::from_secs(1);
/// Longest time a sent job goes without an exact count while Redis's live counters are there to
/// say when it may be done. The exact count still runs now and then: live counters can lag, and a
/// dead letter recorded ahead starts counting without anyone touching Redis.
pub const RECHECK: Duration = Duration::from_secs(30);
/// The same without live counters (Redis down or flushed): the exact count is the only signal.
pub const RECHECK_WITHOUT_REDIS: Duration = Duration::from_secs(5);
/// Jobs looked at per round, oldest first.
const JOBS_PER_ROUND: u32 = 500;

#[derive(Clone, Debug)]
pub struct Completion {
    pub pool: MySqlPool,
    pub progress: Progress,
    /// `jobs_completed_total` and `job_completion_seconds`, counted once per job across replicas.
    pub metrics: Arc<SenderMetrics>,
}

impl Completion {
    /// Settles jobs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut counted: HashMap<Uuid, Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            if let Err(e) = self.round(&mut counted).await {
                tracing::warn!(error = %e, "Settling jobs failed; trying again");
            }
        }
    }

    /// One look at every job whose points are all sent.
    async fn round(&self, counted: &mut HashMap<Uuid, Instant>) -> Result<(), sqlx::Error> {
        let jobs: Vec<(Uuid, u32)> = sqlx::query_as(
            "SELECT job_id, total FROM accrual_jobs WHERE status = 'enqueued' \
             ORDER BY created_at LIMIT ?",
        )
        .bind(JOBS_PER_ROUND)
        .fetch_all(&self.pool)
        .await?;
        counted.retain(|job, _| jobs.iter().any(|(j, _)| j == job));
        for (job_id, total) in jobs {
            let live = self.progress.get(job_id).await;
            let may_be_done = live.is_some_and(|c| c.written + c.dead_lettered >= u64::from(total));
            // Counters that are all zero are no hint: Redis lost them, or nothing was counted.
            let recheck = match live {
                Some(c) if c.enqueued + c.written + c.dead_lettered > 0 => RECHECK,
                _ => RECHECK_WITHOUT_REDIS,
            };
            let stale = counted
                .get(&job_id)
                .is_none_or(|at| at.elapsed() >= recheck);
            if may_be_done || stale {
                counted.insert(job_id, Instant::now());
                let settled = job_outcome::settle(&self.pool, job_id).await?;
                if let Some(Settled {
                    status,
                    first_took: Some(took),
                }) = settled
                {
                    self.metrics
                        .jobs_completed
                        .get_or_create(&JobLabels { status })
                        .inc();
                    self.metrics
                        .job_completion_seconds
                        .observe(took.as_secs_f64());
                }
            }
        }
        Ok(())
    }
}
