//! The retention task: every `RETENTION_INTERVAL`, one sender replica deletes the stored chunk
//! bodies of jobs final for longer than `RESULTS_RETENTION_DAYS` and clears idempotency keys older
//! than `IDEMPOTENCY_RETENTION_HOURS` (the rules are in [`accrual_core::retention`]).
//!
//! Every replica runs the task; the one holding the `retention` lease
//! ([`accrual_core::lease`]) purges, the others find it held and wait for their next round. A lease
//! lasts [`LEASE_ROUNDS`] intervals and the holder renews it every round, so it keeps the work while
//! it lives; while a purge runs the lease is renewed every third of its length, and a purge whose
//! lease was lost stops at its next statement. Two replicas purging at once would do no harm
//! (deleting what is gone deletes nothing), only twice the statements. Errors are logged and the
//! next round tries again; nothing here stops the sender.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::lease;
use accrual_core::retention::{self, Purged, RetentionSettings};
use accrual_core::settings::{Problems, parse_duration};
use sqlx::MySqlPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::metrics::SenderMetrics;

/// A lease lasts this many intervals: the holder renews it every round, and if it dies another
/// replica takes over within this many rounds.
pub const LEASE_ROUNDS: u32 = 2;

/// The retention task's round and its rules.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionTaskSettings {
    /// How often the retention task looks for chunk bodies and idempotency keys past their
    /// retention (e.g. 10m; at least 1s, at most 24h). One replica at a time does it, by lease.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    #[command(flatten)]
    pub rules: RetentionSettings,
}

/// The retention task sweeps at most this often; more often would be all it does.
pub const MIN_RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// The retention task sweeps at least this often.
pub const MAX_RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

impl RetentionTaskSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        problems.require(
            (MIN_RETENTION_INTERVAL..=MAX_RETENTION_INTERVAL).contains(&self.retention_interval),
            "RETENTION_INTERVAL must be at least 1s and at most 24h",
        );
        problems.check(self.rules.validate());
        problems.into_group_result()
    }
}

#[derive(Clone, Debug)]
pub struct Retention {
    pool: MySqlPool,
    settings: RetentionSettings,
    /// How often a round runs (`RETENTION_INTERVAL`).
    interval: Duration,
    metrics: Arc<SenderMetrics>,
    /// This replica's name in `maintenance_leases.owner`.
    owner: String,
}

impl Retention {
    /// The task as `settings` say (validated), on the background's `pool`; `owner` is this
    /// replica's name in leases.
    pub fn new(
        settings: &RetentionTaskSettings,
        pool: MySqlPool,
        metrics: Arc<SenderMetrics>,
        owner: String,
    ) -> Self {
        Self {
            pool,
            settings: settings.rules,
            interval: settings.retention_interval,
            metrics,
            owner,
        }
    }

    /// Runs a round now and then every interval until `shutdown` is cancelled (a purge in progress
    /// stops at its next statement); then gives the lease up, so another replica need not wait
    /// for it to expire.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            owner = %self.owner,
            interval_secs = self.interval.as_secs_f64(),
            results_retention_secs = self.settings.results_retention.as_secs(),
            idempotency_retention_secs = self.settings.idempotency_retention.as_secs(),
            "Retention task starting"
        );
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.round(&shutdown).await;
        }
        if let Err(e) = lease::release(&self.pool, lease::RETENTION, &self.owner).await {
            tracing::debug!(error = %e, "Could not give the retention lease up; it expires by itself");
        }
    }

    /// One round now, as the loop makes every `RETENTION_INTERVAL`: takes or renews the lease and,
    /// if this replica holds it, purges what is past its retention.
    pub async fn run_once(&self) {
        self.round(&CancellationToken::new()).await;
    }

    fn lease_length(&self) -> Duration {
        self.interval * LEASE_ROUNDS
    }

    /// Takes or renews the lease, and purges if this replica holds it.
    async fn round(&self, shutdown: &CancellationToken) {
        match lease::take(
            &self.pool,
            lease::RETENTION,
            &self.owner,
            self.lease_length(),
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("Another replica holds the retention lease");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not take the retention lease; trying again next round");
                return;
            }
        }
        let stop = shutdown.child_token();
        let purged = tokio::select! {
            purged = retention::purge(&self.pool, &self.settings, &stop) => purged,
            never = self.keep_lease(&stop) => match never {},
        };
        match purged {
            Ok(purged) => self.count(&purged),
            Err(e) => {
                self.count(&e.purged);
                tracing::warn!(error = %e.source, "Retention purge failed; trying again next round");
            }
        }
        let released = tokio::select! {
            n = retention::purge_released_reserved_amounts(&self.pool, &stop) => n,
            never = self.keep_lease(&stop) => match never {},
        };
        match released {
            Ok(0) => {}
            Ok(rows) => tracing::info!(
                rows,
                "Deleted the reserved amounts of released or cancelled jobs"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Could not delete released reserved amounts; trying again next round")
            }
        }
        if stop.is_cancelled() && !shutdown.is_cancelled() {
            tracing::warn!(
                "Retention lease lost or not renewed during a purge; stopped it, the next round carries on"
            );
        }
    }

    /// Renews the lease every third of its length while a purge runs; cancels `stop` once the lease
    /// is no longer this replica's (or cannot be renewed), then waits forever.
    async fn keep_lease(&self, stop: &CancellationToken) -> Infallible {
        let length = self.lease_length();
        loop {
            tokio::time::sleep(length / 3).await;
            let held = lease::take(&self.pool, lease::RETENTION, &self.owner, length).await;
            if !matches!(held, Ok(true)) {
                stop.cancel();
                std::future::pending::<()>().await;
            }
        }
    }

    /// Logs and counts what went.
    fn count(&self, purged: &Purged) {
        self.metrics.retention_jobs_purged.inc_by(purged.jobs);
        self.metrics.retention_chunks_purged.inc_by(purged.chunks);
        self.metrics
            .retention_idempotency_keys_purged
            .inc_by(purged.idempotency_keys);
        if !purged.is_empty() {
            tracing::info!(
                jobs = purged.jobs,
                chunks = purged.chunks,
                idempotency_keys = purged.idempotency_keys,
                "Purged expired results and idempotency keys"
            );
        }
    }
}
