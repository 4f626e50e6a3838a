//! The completion task: settles jobs whose points are all sent, so a job reaches its final status
//! (and `completed_at` the time of its last point) by itself, with nobody reading it.
//!
//! Every sender replica runs one; settling is idempotent and happens under the job row's lock
//! ([`job_outcome::settle_with`]), so replicas need no lease.
//!
//! - **Every running job is looked at.** A round takes a page of `enqueued` jobs, least recently
//!   checked first (`accrual_jobs.checked_at`, which every settlement stamps): jobs that cannot
//!   finish yet go to the back of the line instead of hiding newer ones, on every replica alike.
//! - **One job's trouble stays its own.** A job whose row another transaction holds is not waited
//!   for (`NOWAIT`), and any error on a job backs that job off (1 s, doubling to 10 s, in this
//!   replica's memory) while the round goes on with the next.
//! - **New jobs are looked at every round** besides the page (the [`RECENT_PER_ROUND`] most
//!   recently created, on their Redis hint alone), so a new job's hint is seen at once however
//!   many old jobs wait, and a round ends after [`ROUND_BUDGET`] of counting: with hundreds of
//!   jobs to count on a loaded MySQL (a quarter of a second each, seen in CI), a round over the
//!   whole page would keep the next look at the new jobs waiting for minutes. Jobs are counted
//!   for staleness in page order only, so the least recently checked are never starved by the
//!   new ones.
//! - **A job is counted** when Redis's live counters say it may be done, and in any case once it
//!   has gone [`RECHECK`] without a count ([`RECHECK_WITHOUT_REDIS`] when Redis has nothing): live
//!   counters can lag, and a dead letter recorded ahead of time starts counting later without
//!   anyone touching Redis. A 500,000-point job draining for ten minutes is thus counted about
//!   twenty times, not on every poll. A job whose count did not change since its last count waits
//!   twice as long for the next, up to [`MAX_RECHECK`]: hundreds of jobs that cannot finish cost a
//!   count each every few minutes, not every few seconds.
//! - **Finished jobs are looked at again**, slowly: every [`SWEEP`], the least recently checked
//!   `completed_with_errors` jobs are settled again, so a job whose dead letter was redriven and
//!   written becomes `completed` even if the listener's own re-settlement was lost (a failed
//!   query, a listener killed after its commit).

use accrual_core::job_status::JobStatus;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use accrual_core::job_outcome::{self, LockWait, Settled};
use accrual_core::progress::Progress;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{JobLabels, SenderMetrics};

/// How often the task looks for jobs to settle.
pub const POLL: Duration = Duration::from_secs(1);
/// Longest time a sent job goes without an exact count while Redis's live counters are there to
/// say when it may be done.
pub const RECHECK: Duration = Duration::from_secs(30);
/// The same without live counters (Redis down or flushed): the exact count is the only signal.
pub const RECHECK_WITHOUT_REDIS: Duration = Duration::from_secs(5);
/// Longest a running job whose count does not change waits between counts.
pub const MAX_RECHECK: Duration = Duration::from_secs(300);
/// The most recently created running jobs, looked at every round besides the page.
pub const RECENT_PER_ROUND: u32 = 100;
/// Jobs whose recheck interval is remembered, at most (beyond, every interval starts again).
const MAX_REMEMBERED: usize = 100_000;
/// How often finished jobs with dead letters are settled again.
pub const SWEEP: Duration = Duration::from_secs(60);
/// Running jobs looked at per round, least recently checked first.
const JOBS_PER_ROUND: usize = 500;
/// Longest a round goes on counting jobs before it ends, so the next round (which starts with the
/// newest jobs) comes soon however slow counting is; the jobs it did not reach are still the least
/// recently checked, so the next page starts with them.
pub const ROUND_BUDGET: Duration = Duration::from_secs(2);
/// Finished jobs settled again per sweep.
const JOBS_PER_SWEEP: u32 = 100;
/// Back-off of a job whose settlement failed: doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A running job a round may count: its id, its points, and microseconds since it was last counted
/// (`None`: never).
type Candidate = (Uuid, u32, Option<i64>);

#[derive(Clone, Debug)]
pub struct Completion {
    pub pool: MySqlPool,
    pub progress: Progress,
    /// `jobs_completed_total` and `job_completion_seconds`, counted once per job across replicas.
    pub metrics: Arc<SenderMetrics>,
}

/// Per job, in this replica: when to try again after a failed settlement (and how many failed),
/// and the last count with the recheck interval it earned.
#[derive(Debug, Default)]
pub struct BackedOff(
    HashMap<Uuid, (Instant, u32)>,
    HashMap<Uuid, (u64, Duration)>,
);

impl BackedOff {
    fn waiting(&self, job_id: &Uuid, now: Instant) -> bool {
        self.0.get(job_id).is_some_and(|(until, _)| *until > now)
    }

    fn failed(&mut self, job_id: Uuid, now: Instant) -> Duration {
        let failures = self.0.get(&job_id).map_or(0, |(_, n)| *n);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << failures.min(6))
            .min(MAX_BACKOFF);
        self.0.insert(job_id, (now + backoff, failures + 1));
        backoff
    }

    fn succeeded(&mut self, job_id: &Uuid) {
        self.0.remove(job_id);
    }

    /// How long `job_id` waits between counts: `base`, doubled for each count in a row that found
    /// nothing new.
    fn recheck(&self, job_id: &Uuid, base: Duration) -> Duration {
        self.1
            .get(job_id)
            .map_or(base, |(_, every)| (*every).max(base))
    }

    /// Records a count of `accounted` points (written or dead-lettered) of `job_id`.
    fn counted(&mut self, job_id: Uuid, accounted: u64, base: Duration) {
        if self.1.len() >= MAX_REMEMBERED {
            self.1.clear();
        }
        let every = match self.1.get(&job_id) {
            Some((before, every)) if *before == accounted => {
                every.saturating_mul(2).clamp(base, MAX_RECHECK)
            }
            _ => base,
        };
        self.1.insert(job_id, (accounted, every));
    }
}

impl Completion {
    /// Settles jobs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backed_off = BackedOff::default();
        let mut last_sweep: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            if let Err(e) = self.round(&mut backed_off).await {
                tracing::warn!(error = %e, "Looking for jobs to settle failed; trying again");
            }
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP) {
                last_sweep = Some(Instant::now());
                if let Err(e) = self.sweep_finished(&mut backed_off).await {
                    tracing::warn!(error = %e, "Looking for finished jobs to settle again failed");
                }
            }
        }
    }

    /// One round and one sweep now, as the loop makes them: settles every job that can be, with
    /// no job backed off.
    pub async fn run_once(&self) -> Result<(), sqlx::Error> {
        let mut backed_off = BackedOff::default();
        self.round(&mut backed_off).await?;
        self.sweep_finished(&mut backed_off).await
    }

    /// One look at a page of running jobs, least recently checked first. Public so tests can run
    /// rounds themselves.
    pub async fn round(&self, backed_off: &mut BackedOff) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        // Jobs backed off in this replica are skipped: ask for as many more.
        let waiting = backed_off
            .0
            .values()
            .filter(|(until, _)| *until > now)
            .count();
        let page: Vec<Candidate> = sqlx::query_as(
            "SELECT job_id, total, TIMESTAMPDIFF(MICROSECOND, checked_at, NOW(6)) \
             FROM accrual_jobs WHERE status = ? ORDER BY checked_at LIMIT ?",
        )
        .bind(JobStatus::Enqueued)
        .bind((JOBS_PER_ROUND + waiting.min(JOBS_PER_ROUND)) as u64)
        .fetch_all(&self.pool)
        .await?;
        let recent: Vec<Candidate> = sqlx::query_as(
            "SELECT job_id, total, TIMESTAMPDIFF(MICROSECOND, checked_at, NOW(6)) \
             FROM accrual_jobs WHERE status = ? ORDER BY created_at DESC LIMIT ?",
        )
        .bind(JobStatus::Enqueued)
        .bind(RECENT_PER_ROUND)
        .fetch_all(&self.pool)
        .await?;
        backed_off
            .0
            .retain(|job, _| page.iter().chain(&recent).any(|(j, _, _)| j == job));
        // The new jobs first, on their Redis hint alone; then the page, least recently checked
        // first, on the hint or because the job is due a count. A round over hundreds of old jobs
        // takes a while, so it stops after ROUND_BUDGET: the next round comes back to the new
        // jobs, and its page starts with the old jobs this one did not reach.
        // The hints of every job of the round in one round trip, so the budget goes to counting
        // (one Redis read per job ate it all on a loaded machine: in a CI run the page was never
        // reached and a job stayed unsettled for a minute after its lock went).
        let jobs: Vec<(Candidate, bool)> = recent
            .into_iter()
            .map(|job| (job, false))
            .chain(page.into_iter().map(|job| (job, true)))
            .collect();
        let ids: Vec<Uuid> = jobs.iter().map(|((job_id, _, _), _)| *job_id).collect();
        let hints = self.progress.get_many(&ids).await;
        let counting = Instant::now();
        let mut settled = HashSet::new();
        for (i, ((job_id, total, since_checked), from_page)) in jobs.into_iter().enumerate() {
            if counting.elapsed() >= ROUND_BUDGET {
                break;
            }
            if backed_off.waiting(&job_id, now) || settled.contains(&job_id) {
                continue;
            }
            let live = hints.as_ref().and_then(|h| h.get(i).copied());
            let may_be_done = live.is_some_and(|c| c.written + c.dead_lettered >= u64::from(total));
            // Counters that are all zero are no hint: Redis lost them, or nothing was counted.
            let recheck = match live {
                Some(c) if c.enqueued + c.written + c.dead_lettered > 0 => RECHECK,
                _ => RECHECK_WITHOUT_REDIS,
            };
            let every = backed_off.recheck(&job_id, recheck);
            let stale = since_checked
                .is_none_or(|micros| micros >= i64::try_from(every.as_micros()).unwrap_or(0));
            if may_be_done || (from_page && stale) {
                self.settle(job_id, backed_off, recheck).await;
                settled.insert(job_id);
            }
        }
        Ok(())
    }

    /// Settles again the least recently checked jobs that ended with dead letters: a dead letter
    /// redriven and written since makes the job `completed`. Public so tests can run it.
    pub async fn sweep_finished(&self, backed_off: &mut BackedOff) -> Result<(), sqlx::Error> {
        let page: Vec<Uuid> = sqlx::query_scalar(
            "SELECT job_id FROM accrual_jobs WHERE status = ? ORDER BY checked_at LIMIT ?",
        )
        .bind(JobStatus::CompletedWithErrors)
        .bind(JOBS_PER_SWEEP)
        .fetch_all(&self.pool)
        .await?;
        let now = Instant::now();
        for job_id in page {
            // Within a round's budget too: the sweep runs between rounds.
            if now.elapsed() >= ROUND_BUDGET {
                break;
            }
            if !backed_off.waiting(&job_id, now) {
                self.settle(job_id, backed_off, SWEEP).await;
            }
        }
        Ok(())
    }

    /// Settles one job without waiting for its row lock; a failure backs the job off. `recheck` is
    /// the job's base interval between counts.
    async fn settle(&self, job_id: Uuid, backed_off: &mut BackedOff, recheck: Duration) {
        match job_outcome::settle_counting(&self.pool, job_id, LockWait::NoWait).await {
            Ok((settled, outcome)) => {
                backed_off.succeeded(&job_id);
                if let Some(o) = outcome {
                    backed_off.counted(job_id, o.written + o.dead_lettered, recheck);
                }
                if let Some(Settled {
                    status,
                    first_took: Some(took),
                }) = settled
                {
                    self.metrics
                        .jobs_completed
                        .get_or_create(&JobLabels {
                            status: status.as_str(),
                        })
                        .inc();
                    self.metrics
                        .job_completion_seconds
                        .observe(took.as_secs_f64());
                }
            }
            Err(e) => {
                let backoff = backed_off.failed(job_id, Instant::now());
                tracing::warn!(%job_id, error = %e, backoff_ms = backoff.as_millis() as u64, "Settling a job failed; trying it again later, and the others now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_job_backs_off_doubling_up_to_ten_seconds_and_is_forgotten_once_it_settles() {
        let mut backed_off = BackedOff::default();
        let job = Uuid::now_v7();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..9).map(|_| backed_off.failed(job, t0)).collect();
        assert_eq!(waits[0], Duration::from_secs(1));
        assert_eq!(waits[1], Duration::from_secs(2));
        assert_eq!(waits[3], Duration::from_secs(8));
        assert_eq!(waits[8], MAX_BACKOFF);
        assert!(backed_off.waiting(&job, t0));
        assert!(!backed_off.waiting(&job, t0 + MAX_BACKOFF));
        backed_off.succeeded(&job);
        assert!(!backed_off.waiting(&job, t0));
    }

    #[test]
    fn a_job_whose_count_does_not_change_is_counted_ever_less_often_until_it_moves() {
        let mut jobs = BackedOff::default();
        let job = Uuid::now_v7();
        let base = RECHECK_WITHOUT_REDIS;
        assert_eq!(jobs.recheck(&job, base), base);
        jobs.counted(job, 3, base);
        assert_eq!(jobs.recheck(&job, base), base);
        for expected in [10, 20, 40, 80, 160, 300, 300] {
            jobs.counted(job, 3, base);
            assert_eq!(jobs.recheck(&job, base), Duration::from_secs(expected));
        }
        jobs.counted(job, 4, base);
        assert_eq!(jobs.recheck(&job, base), base);
    }
}
