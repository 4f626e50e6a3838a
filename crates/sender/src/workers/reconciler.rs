//! The reconciler: the safety net under "every point ends written or dead-lettered, counted".
//!
//! Every other part of the pipeline keeps the promise on the paths someone thought of. The
//! reconciler keeps it on the others, by looking at outcomes instead of paths: a job whose every
//! chunk was sent and that has made no progress (no ledger row, no dead letter, no chunk sent, no
//! re-send) for longer than any legitimate wait is *quiet*; for a quiet job that is still not
//! final, its stored chunks are compared with the ledger and the dead letters ([`compare`]).
//! Points in neither are sent again with the same `accrual_id` (a late original is then absorbed
//! as a duplicate). Re-sending is harmless, giving up is not: only after
//! `RECONCILE_ATTEMPTS` re-sends, each followed by a whole quiet period, are the points still
//! missing dead-lettered with the reason `lost in transit after N attempts`, so the job settles.
//!
//! **The quiet period** is the longest of: `RECONCILE_QUIET_FLOOR`; the visibility timeout times
//! the queue's `maxReceiveCount` (a point failing on every receive); the listener's hold cap
//! ([`HOLD_CAP_VISIBILITY_TIMEOUTS`] visibility timeouts: a listener never holds a message longer);
//! and the time the queue's current depth takes to drain at the rate the ledger grew since the
//! last round (a backlog is not a loss: while the queue holds messages and the ledger does not
//! grow, nothing is quiet). The queue's attributes are read every round, so `accrualctl init`
//! changing them on the live queue is seen.
//!
//! **Cost.** A healthy job settles before it can go quiet and is never compared
//! (`reconciler_jobs_compared_total` stays 0). A quiet job is compared in one pass over its
//! chunks, one primary-key look-up statement per chunk. One replica at a time reconciles, by the
//! `reconciler` lease in `maintenance_leases`; the holder also reports the age of the oldest
//! unfinished job (`oldest_unfinished_job_seconds`).

mod compare;

use accrual_core::job_status::JobStatus;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::settings::parse_duration;
use accrual_core::sqs::HOLD_CAP_VISIBILITY_TIMEOUTS;
use accrual_core::{lease, sqs};
use sqlx::MySqlPool;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::SenderMetrics;
use crate::workers::dispatch::DeadLetterQueue;
use crate::workers::dispatch::fanout::Fanout;

pub use compare::{Compared, compare};

/// The lease one replica holds to reconcile.
pub const LEASE: &str = "reconciler";
/// Quiet jobs compared per round, those compared least recently first.
const JOBS_PER_ROUND: u32 = 100;

/// The reconciler's settings (environment variables and the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcilerSettings {
    /// How often the replica holding the reconciler's lease looks for quiet jobs (e.g. 30s; at
    /// least 100ms, at most 1h).
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// The shortest time without progress after which a job whose chunks are all sent counts as
    /// quiet (e.g. 5m; at least 100ms). The queue's visibility timeout and receive count, the
    /// listeners' hold cap and the queue's backlog can make the quiet period longer, never shorter.
    #[arg(long, env = "RECONCILE_QUIET_FLOOR", default_value = "5m", value_parser = parse_duration)]
    pub reconcile_quiet_floor: Duration,

    /// Re-sends of a quiet job's missing points before the ones still missing are dead-lettered
    /// as lost in transit (1-100).
    #[arg(long, env = "RECONCILE_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reconcile_attempts: u32,
}

impl ReconcilerSettings {
    /// Refuses values that would make the reconciler spin or never act, naming each one.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !(Duration::from_millis(100)..=Duration::from_secs(3_600))
            .contains(&self.reconcile_interval)
        {
            problems.push("RECONCILE_INTERVAL must be at least 100ms and at most 1h");
        }
        if self.reconcile_quiet_floor < Duration::from_millis(100) {
            problems.push("RECONCILE_QUIET_FLOOR must be at least 100ms");
        }
        if !(1..=100).contains(&self.reconcile_attempts) {
            problems.push("RECONCILE_ATTEMPTS must be 1-100");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What the quiet period is made of, read each round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueReading {
    pub visibility_timeout: Duration,
    /// `None` without a redrive policy (a message is then received until it is deleted).
    pub max_receive_count: Option<u32>,
    /// Points the queue holds, visible and in flight (messages times points per message).
    pub depth_points: u64,
    /// Points the ledger took per second since the last round; `None` on the first round.
    pub ledger_points_per_sec: Option<f64>,
}

/// How long a job must go without progress to be quiet; `None` while the queue holds a backlog
/// that is not draining (or whose rate is not known yet): a backlog is not a loss.
pub fn quiet_period(floor: Duration, q: &QueueReading) -> Option<Duration> {
    let receives = q
        .visibility_timeout
        .saturating_mul(q.max_receive_count.unwrap_or(1));
    let hold_cap = q
        .visibility_timeout
        .saturating_mul(HOLD_CAP_VISIBILITY_TIMEOUTS);
    let drain = if q.depth_points == 0 {
        Duration::ZERO
    } else {
        match q.ledger_points_per_sec {
            Some(rate) if rate > 0.0 => {
                Duration::try_from_secs_f64(q.depth_points as f64 / rate).ok()?
            }
            _ => return None,
        }
    };
    Some(floor.max(receives).max(hold_cap).max(drain))
}

#[derive(Clone, Debug)]
pub struct Reconciler {
    pub pool: MySqlPool,
    pub fanout: Fanout,
    pub dead_letters: DeadLetterQueue,
    pub queue_url: String,
    /// Points per message the dispatchers pack (to turn the queue's depth into points).
    pub points_per_message: u32,
    pub settings: ReconcilerSettings,
    pub metrics: Arc<SenderMetrics>,
    /// This replica's name in `maintenance_leases.owner`.
    pub owner: String,
}

/// The ledger's size at the last round, to measure its growth.
#[derive(Debug, Default)]
pub struct LedgerMark(Option<(u64, Instant)>);

impl Reconciler {
    /// The reconciler as `settings` say (validated), re-sending what is missing as `dispatcher`
    /// would, on its pool and queues; `owner` is this replica's name in leases.
    pub fn new(
        settings: &ReconcilerSettings,
        dispatcher: &super::dispatch::Dispatcher,
        queue_url: String,
        metrics: Arc<SenderMetrics>,
        owner: String,
    ) -> Self {
        Self {
            pool: dispatcher.pool().clone(),
            fanout: dispatcher.fanout().clone(),
            dead_letters: dispatcher.dead_letters().clone(),
            queue_url,
            points_per_message: dispatcher.points_per_message() as u32,
            settings: settings.clone(),
            metrics,
            owner,
        }
    }

    /// Reconciles every interval until `shutdown` is cancelled, then gives the lease up.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            owner = %self.owner,
            interval_secs = self.settings.reconcile_interval.as_secs_f64(),
            quiet_floor_secs = self.settings.reconcile_quiet_floor.as_secs_f64(),
            attempts = self.settings.reconcile_attempts,
            "Reconciler starting"
        );
        let mut ticks = tokio::time::interval(self.settings.reconcile_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut mark = LedgerMark::default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.round(&mut mark, &shutdown).await {
                tracing::warn!(error = %e, "Reconciling failed; trying again next round");
            }
        }
        if let Err(e) = lease::release(&self.pool, LEASE, &self.owner).await {
            tracing::debug!(error = %e, "Could not give the reconciler's lease up; it expires by itself");
        }
    }

    /// One round now, as the loop makes every `RECONCILE_INTERVAL` (a job is still compared only
    /// once it has been quiet for the quiet period).
    pub async fn run_once(&self) -> anyhow::Result<()> {
        self.round(&mut LedgerMark::default(), &CancellationToken::new())
            .await
    }

    fn lease_length(&self) -> Duration {
        self.settings
            .reconcile_interval
            .saturating_mul(3)
            .max(Duration::from_secs(60))
    }

    /// One round: take or renew the lease; if held, report the oldest unfinished job and compare
    /// the quiet ones. Public so tests can drive rounds.
    pub async fn round(
        &self,
        mark: &mut LedgerMark,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if !lease::take(&self.pool, LEASE, &self.owner, self.lease_length()).await? {
            self.metrics.oldest_unfinished_job_seconds.set(0.0);
            self.metrics.reconciler_quiet_period_seconds.set(0.0);
            return Ok(());
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(COALESCE(reserve_at, created_at)), NOW(6)) \
             FROM accrual_jobs WHERE status IN (?, ?)",
        )
        .bind(JobStatus::Dispatching)
        .bind(JobStatus::Enqueued)
        .fetch_one(&self.pool)
        .await?;
        self.metrics
            .oldest_unfinished_job_seconds
            .set(oldest.unwrap_or(0).max(0) as f64 / 1e6);

        let reading = self.read_queue(mark).await?;
        let Some(quiet) = quiet_period(self.settings.reconcile_quiet_floor, &reading) else {
            tracing::info!(
                depth_points = reading.depth_points,
                ledger_points_per_sec = reading.ledger_points_per_sec,
                "The queue holds a backlog that is not draining yet; no job is quiet"
            );
            return Ok(());
        };
        self.metrics
            .reconciler_quiet_period_seconds
            .set(quiet.as_secs_f64());
        for (job_id, attempts) in self.quiet_jobs(quiet).await? {
            if shutdown.is_cancelled() {
                break;
            }
            // Renewed per job: comparing a large job takes a while.
            if !lease::take(&self.pool, LEASE, &self.owner, self.lease_length()).await? {
                break;
            }
            let give_up = attempts >= self.settings.reconcile_attempts;
            match compare(self, job_id, give_up).await {
                Ok(compared) => compared.log(job_id, attempts),
                Err(e) => {
                    tracing::warn!(%job_id, error = %e, "Comparing a quiet job with the ledger failed; the next round tries again")
                }
            }
        }
        Ok(())
    }

    /// The queue's attributes and depth, and the ledger's rate since the last round.
    async fn read_queue(&self, mark: &mut LedgerMark) -> anyhow::Result<QueueReading> {
        let client = &self.dead_letters.client;
        let visibility_timeout = sqs::visibility_timeout(client, &self.queue_url).await?;
        let max_receive_count = sqs::max_receive_count(client, &self.queue_url).await?;
        let depth = sqs::approximate_depth(client, &self.queue_url).await?;
        let ledger: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM point_accruals")
            .fetch_one(&self.pool)
            .await?;
        let (ledger, now) = (ledger.unwrap_or(0), Instant::now());
        let ledger_points_per_sec = mark.0.and_then(|(before, at)| {
            let secs = now.duration_since(at).as_secs_f64();
            (secs > 0.0).then(|| ledger.saturating_sub(before) as f64 / secs)
        });
        mark.0 = Some((ledger, now));
        Ok(QueueReading {
            visibility_timeout,
            max_receive_count,
            depth_points: depth.saturating_mul(u64::from(self.points_per_message.max(1))),
            ledger_points_per_sec,
        })
    }

    /// Running jobs whose chunks are all sent and that made no progress for `quiet`, with the
    /// re-sends made for each so far; those compared least recently first.
    async fn quiet_jobs(&self, quiet: Duration) -> Result<Vec<(Uuid, u32)>, sqlx::Error> {
        let quiet_micros = u64::try_from(quiet.as_micros()).unwrap_or(u64::MAX);
        // A job younger than the quiet period cannot be quiet: the range stays small. Its last
        // progress is the latest of its last chunk sent, ledger row, dead letter and comparison,
        // every one of them an instant of MySQL's clock.
        let rows: Vec<(Uuid, u32, Option<i64>)> = sqlx::query_as(
            "SELECT j.job_id, j.reconcile_attempts, TIMESTAMPDIFF(MICROSECOND, GREATEST( \
               COALESCE((SELECT MAX(c.dispatched_at) FROM accrual_chunks c WHERE c.job_id = j.job_id), j.created_at), \
               COALESCE((SELECT p.created_at FROM point_accruals p WHERE p.id = \
                 (SELECT MAX(p2.id) FROM point_accruals p2 WHERE p2.job_id = j.job_id)), j.created_at), \
               COALESCE((SELECT MAX(d.created_at) FROM accrual_dead_letters d WHERE d.job_id = j.job_id), j.created_at), \
               COALESCE(j.reconciled_at, j.created_at)), NOW(6)) \
             FROM accrual_jobs j \
             WHERE j.status = ? AND j.created_at < NOW(6) - INTERVAL ? MICROSECOND \
             ORDER BY COALESCE(j.reconciled_at, j.created_at) LIMIT ?",
        )
        .bind(JobStatus::Enqueued)
        .bind(quiet_micros)
        .bind(JOBS_PER_ROUND)
        .fetch_all(&self.pool)
        .await?;
        let quiet_micros = i64::try_from(quiet_micros).unwrap_or(i64::MAX);
        Ok(rows
            .into_iter()
            .filter(|(_, _, idle)| idle.is_some_and(|idle| idle >= quiet_micros))
            .map(|(job_id, attempts, _)| (job_id, attempts))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(depth_points: u64, rate: Option<f64>) -> QueueReading {
        QueueReading {
            visibility_timeout: Duration::from_secs(60),
            max_receive_count: Some(5),
            depth_points,
            ledger_points_per_sec: rate,
        }
    }

    #[test]
    fn the_quiet_period_is_the_longest_legitimate_wait() {
        let floor = Duration::from_secs(300);
        // The hold cap (10 visibility timeouts) is longer than 5 receives and the floor.
        assert_eq!(
            quiet_period(floor, &reading(0, None)),
            Some(Duration::from_secs(600))
        );
        // A long floor wins.
        assert_eq!(
            quiet_period(Duration::from_secs(3_600), &reading(0, None)),
            Some(Duration::from_secs(3_600))
        );
        // 2,000,000 points in the queue at 1,000 points/s: 2,000 s to drain.
        assert_eq!(
            quiet_period(floor, &reading(2_000_000, Some(1_000.0))),
            Some(Duration::from_secs(2_000))
        );
        let many_receives = QueueReading {
            max_receive_count: Some(20),
            ..reading(0, None)
        };
        assert_eq!(
            quiet_period(floor, &many_receives),
            Some(Duration::from_secs(1_200))
        );
    }

    #[test]
    fn a_backlog_that_is_not_draining_or_not_measured_yet_leaves_nothing_quiet() {
        let floor = Duration::from_secs(1);
        assert_eq!(quiet_period(floor, &reading(10, None)), None);
        assert_eq!(quiet_period(floor, &reading(10, Some(0.0))), None);
    }

    #[test]
    fn settings_that_would_spin_or_never_act_are_refused_by_name() {
        let ok = ReconcilerSettings {
            reconcile_interval: Duration::from_secs(30),
            reconcile_quiet_floor: Duration::from_secs(300),
            reconcile_attempts: 3,
        };
        assert!(ok.validate().is_ok());
        for (bad, named) in [
            (
                ReconcilerSettings {
                    reconcile_interval: Duration::ZERO,
                    ..ok.clone()
                },
                "RECONCILE_INTERVAL",
            ),
            (
                ReconcilerSettings {
                    reconcile_quiet_floor: Duration::from_millis(1),
                    ..ok.clone()
                },
                "RECONCILE_QUIET_FLOOR",
            ),
            (
                ReconcilerSettings {
                    reconcile_attempts: 0,
                    ..ok.clone()
                },
                "RECONCILE_ATTEMPTS",
            ),
        ] {
            let message = bad.validate().expect_err("refused");
            assert!(message.contains(named), "{message}");
        }
    }
}
