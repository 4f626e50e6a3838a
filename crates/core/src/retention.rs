//! Retention: what the pipeline stops keeping once it is old enough. Shared by the sender's
//! retention task (one replica at a time, by [`crate::lease`]) and `accrualctl purge`.
//!
//! What goes:
//! - the stored chunk bodies (`accrual_chunks`) of a **final** job (`completed`,
//!   `completed_with_errors`, `cancelled`) that completed more than `RESULTS_RETENTION_DAYS` ago.
//!   The job is then marked `results_purged_at`, and its results answer `410`. A job that is not
//!   final (reserved, dispatching, enqueued) keeps its chunks whatever their age: the dispatcher
//!   still needs them;
//! - the `Idempotency-Key` of every job created more than `IDEMPOTENCY_RETENTION_HOURS` ago. A
//!   request with that key afterwards is a new request and makes a new job.
//!
//! - the reserved amounts of a job no longer `reserved` ([`purge_released_reserved_amounts`], run
//!   by the sender's retention task only, at once: they already count for nothing).
//!
//! What stays: the ledger (`point_accruals`, never read or locked here), dead letters, and every
//! job row with its stored outcome, so `GET /v1/jobs/{job_id}` answers as before.
//!
//! Every statement changes a few rows found by an index and commits on its own, with a pause
//! between statements, so no lock is held for long. A job is marked purged only once none of its
//! chunks is left: a purge cut short (a crash, a shutdown) picks the job again next time. Instants
//! are MySQL's `NOW(6)`, one clock for every replica.

use std::time::Duration;

use serde::Serialize;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::parse_duration;

/// Final jobs picked per query, oldest completion first.
const JOBS_PER_PICK: u32 = 50;
/// Chunks deleted per statement: at the default `CHUNK_ITEMS` (2,000 points) a chunk holds about
/// 100 KiB, so a statement frees a few MiB and holds its row locks for milliseconds.
const CHUNKS_PER_DELETE: u64 = 20;
/// Idempotency keys cleared per statement.
const KEYS_PER_UPDATE: u64 = 500;
/// Pause between two statements, so that a large backlog (retention switched on over years of
/// jobs) runs as a trickle beside the pipeline's own writes, not as one long burst.
const PAUSE: Duration = Duration::from_millis(5);

/// The longest retention accepted: longer is a typo (hours given as days), and the cut-off would
/// leave the calendar.
pub const MAX_RETENTION: Duration = Duration::from_secs(3_650 * 24 * 60 * 60);

/// The part of the `WHERE` clause that picks jobs whose chunks may go (bind: the retention in
/// microseconds). `ix_accrual_jobs_results_purge (results_purged_at, completed_at)` serves it.
macro_rules! expired_results {
    () => {
        "results_purged_at IS NULL AND completed_at < NOW(6) - INTERVAL ? MICROSECOND \
         AND status IN ('completed', 'completed_with_errors', 'cancelled')"
    };
}

/// How long results and idempotency keys are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct RetentionSettings {
    /// How long a final job's stored chunk bodies (its per-item results) are kept after it
    /// completes: a number of days (`30`) or a duration with a unit (`90s`, `12h`, `2d`).
    #[arg(
        long = "results-retention-days",
        env = "RESULTS_RETENTION_DAYS",
        value_name = "DAYS",
        default_value = "30",
        value_parser = parse_days
    )]
    pub results_retention: Duration,

    /// How long a job's `Idempotency-Key` is kept after the job was created: a number of hours
    /// (`168`) or a duration with a unit (`90s`, `30m`, `2d`). A retry with the key after that
    /// makes a new job.
    #[arg(
        long = "idempotency-retention-hours",
        env = "IDEMPOTENCY_RETENTION_HOURS",
        value_name = "HOURS",
        default_value = "168",
        value_parser = parse_hours
    )]
    pub idempotency_retention: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            results_retention: Duration::from_secs(30 * 24 * 60 * 60),
            idempotency_retention: Duration::from_secs(168 * 60 * 60),
        }
    }
}

impl RetentionSettings {
    /// Refuses a retention of zero (everything would go at once) or beyond [`MAX_RETENTION`].
    pub fn validate(&self) -> Result<(), String> {
        for (kept, name) in [
            (self.results_retention, "RESULTS_RETENTION_DAYS"),
            (self.idempotency_retention, "IDEMPOTENCY_RETENTION_HOURS"),
        ] {
            if kept < Duration::from_secs(1) || kept > MAX_RETENTION {
                return Err(format!(
                    "{name} must be at least 1s and at most 3650 days (zero would delete at once)"
                ));
            }
        }
        Ok(())
    }
}

/// Parses `RESULTS_RETENTION_DAYS`: a plain number of days, or a duration with a unit.
pub fn parse_days(s: &str) -> Result<Duration, String> {
    parse_retention(s, 24 * 60 * 60)
}

/// Parses `IDEMPOTENCY_RETENTION_HOURS`: a plain number of hours, or a duration with a unit.
pub fn parse_hours(s: &str) -> Result<Duration, String> {
    parse_retention(s, 60 * 60)
}

/// A plain number counts `plain_secs` each; with a unit, `h` and `d` as well as
/// [`parse_duration`]'s `ms`, `s` and `m`.
fn parse_retention(s: &str, plain_secs: u64) -> Result<Duration, String> {
    let s = s.trim();
    let too_long = || format!("`{s}` is too long a retention");
    let times = |digits: &str, secs: u64| -> Result<Duration, String> {
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a retention like 30, 90s, 12h or 2d"))?;
        n.checked_mul(secs)
            .map(Duration::from_secs)
            .ok_or_else(too_long)
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return times(s, plain_secs);
    }
    if let Some(digits) = s.strip_suffix('d') {
        return times(digits, 24 * 60 * 60);
    }
    if let Some(digits) = s.strip_suffix('h') {
        return times(digits, 60 * 60);
    }
    parse_duration(s).map_err(|e| format!("{e} (or h, d)"))
}

/// What a purge would remove now (`accrualctl purge --dry-run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Final jobs whose results would go.
    pub jobs: u64,
    /// Their stored chunks.
    pub chunks: u64,
    /// Bytes of those chunks' bodies.
    pub chunk_bytes: u64,
    /// Idempotency keys that would be cleared.
    pub idempotency_keys: u64,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Jobs marked `results_purged_at`.
    pub jobs: u64,
    /// Chunks deleted.
    pub chunks: u64,
    /// Idempotency keys cleared.
    pub idempotency_keys: u64,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Counts what [`purge`] would remove now, changing nothing (plain reads take no locks). Reads
/// the length of every chunk body that would go, so it costs more than the purge's own picks.
pub async fn plan(pool: &MySqlPool, settings: &RetentionSettings) -> Result<Plan, sqlx::Error> {
    let (jobs, chunks, chunk_bytes): (i64, i64, i64) = sqlx::query_as(concat!(
        "SELECT COUNT(DISTINCT j.job_id), COUNT(c.job_id), \
           CAST(COALESCE(SUM(LENGTH(c.items)), 0) AS SIGNED) \
         FROM accrual_jobs j LEFT JOIN accrual_chunks c ON c.job_id = j.job_id WHERE j.",
        expired_results!()
    ))
    .bind(micros(settings.results_retention))
    .fetch_one(pool)
    .await?;
    let keys: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accrual_jobs \
         WHERE created_at < NOW(6) - INTERVAL ? MICROSECOND AND idempotency_key IS NOT NULL",
    )
    .bind(micros(settings.idempotency_retention))
    .fetch_one(pool)
    .await?;
    Ok(Plan {
        jobs: jobs as u64,
        chunks: chunks as u64,
        chunk_bytes: chunk_bytes as u64,
        idempotency_keys: keys as u64,
    })
}

/// A purge that stopped on an error; what it removed before stays removed.
#[derive(Debug, thiserror::Error)]
#[error("purge stopped on a MySQL error after removing {purged:?}")]
pub struct PurgeError {
    /// What went before the error.
    pub purged: Purged,
    #[source]
    pub source: sqlx::Error,
}

/// Removes what has outlived its retention (see the module rules) until nothing is left or `stop`
/// is cancelled (checked between statements); returns what went. After an error the next purge
/// carries on where this one stopped.
pub async fn purge(
    pool: &MySqlPool,
    settings: &RetentionSettings,
    stop: &CancellationToken,
) -> Result<Purged, PurgeError> {
    let mut purged = Purged::default();
    let done = async {
        purge_results(pool, settings.results_retention, stop, &mut purged).await?;
        purge_keys(pool, settings.idempotency_retention, stop, &mut purged).await
    }
    .await;
    match done {
        Ok(()) => Ok(purged),
        Err(source) => Err(PurgeError { purged, source }),
    }
}

async fn purge_results(
    pool: &MySqlPool,
    retention: Duration,
    stop: &CancellationToken,
    purged: &mut Purged,
) -> Result<(), sqlx::Error> {
    loop {
        let jobs: Vec<Uuid> = sqlx::query_scalar(concat!(
            "SELECT job_id FROM accrual_jobs WHERE ",
            expired_results!(),
            " ORDER BY completed_at LIMIT ?"
        ))
        .bind(micros(retention))
        .bind(JOBS_PER_PICK)
        .fetch_all(pool)
        .await?;
        for &job_id in &jobs {
            if stop.is_cancelled() {
                return Ok(());
            }
            if purge_job(pool, job_id, stop, purged).await? {
                purged.jobs += 1;
            }
        }
        if jobs.len() < JOBS_PER_PICK as usize || stop.is_cancelled() {
            return Ok(());
        }
    }
}

/// Deletes one final job's chunks a few at a time, then marks it; `false` if `stop` came first
/// (the job stays unmarked, to be picked again).
async fn purge_job(
    pool: &MySqlPool,
    job_id: Uuid,
    stop: &CancellationToken,
    purged: &mut Purged,
) -> Result<bool, sqlx::Error> {
    loop {
        let deleted = sqlx::query("DELETE FROM accrual_chunks WHERE job_id = ? LIMIT ?")
            .bind(job_id)
            .bind(CHUNKS_PER_DELETE)
            .execute(pool)
            .await?
            .rows_affected();
        purged.chunks += deleted;
        tokio::time::sleep(PAUSE).await;
        if deleted < CHUNKS_PER_DELETE {
            break;
        }
        if stop.is_cancelled() {
            return Ok(false);
        }
    }
    // The skipped items' records (on_duplicate=skip) are part of the results too.
    loop {
        let deleted = sqlx::query("DELETE FROM accrual_job_skips WHERE job_id = ? LIMIT 10000")
            .bind(job_id)
            .execute(pool)
            .await?
            .rows_affected();
        if deleted < 10_000 {
            break;
        }
        tokio::time::sleep(PAUSE).await;
        if stop.is_cancelled() {
            return Ok(false);
        }
    }
    let marked = sqlx::query(
        "UPDATE accrual_jobs SET results_purged_at = NOW(6) \
         WHERE job_id = ? AND results_purged_at IS NULL",
    )
    .bind(job_id)
    .execute(pool)
    .await?
    .rows_affected();
    // 0: another purger (accrualctl beside the sender) marked it first.
    Ok(marked == 1)
}

async fn purge_keys(
    pool: &MySqlPool,
    retention: Duration,
    stop: &CancellationToken,
    purged: &mut Purged,
) -> Result<(), sqlx::Error> {
    while !stop.is_cancelled() {
        let cleared = sqlx::query(
            "UPDATE accrual_jobs SET idempotency_key = NULL \
             WHERE created_at < NOW(6) - INTERVAL ? MICROSECOND AND idempotency_key IS NOT NULL \
             LIMIT ?",
        )
        .bind(micros(retention))
        .bind(KEYS_PER_UPDATE)
        .execute(pool)
        .await?
        .rows_affected();
        purged.idempotency_keys += cleared;
        if cleared < KEYS_PER_UPDATE {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(())
}

/// Jobs picked per query by [`purge_released_reserved_amounts`].
const RESERVED_JOBS_PER_PICK: u32 = 50;
/// Reserved amounts deleted per statement.
const RESERVED_ROWS_PER_DELETE: u64 = 1_000;

/// Deletes the reserved amounts (`accrual_reserved_amounts`, migration 0007) of every job that is
/// no longer `reserved` (released by the dispatcher, or cancelled), until none is left or `stop`
/// is cancelled; returns the rows deleted. Not a retention with a delay: such rows already count
/// for nothing (a balance counts only jobs whose status is `reserved`, and a job never returns to
/// it), so this only keeps the table as small as the reserved jobs themselves. The pick reads the
/// table's primary key (job_id first) and each job's `accrual_jobs` row.
pub async fn purge_released_reserved_amounts(
    pool: &MySqlPool,
    stop: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    while !stop.is_cancelled() {
        let jobs: Vec<Uuid> = sqlx::query_scalar(
            "SELECT r.job_id FROM (SELECT DISTINCT job_id FROM accrual_reserved_amounts) r \
             JOIN accrual_jobs j ON j.job_id = r.job_id WHERE j.status <> 'reserved' LIMIT ?",
        )
        .bind(RESERVED_JOBS_PER_PICK)
        .fetch_all(pool)
        .await?;
        for &job_id in &jobs {
            loop {
                if stop.is_cancelled() {
                    return Ok(deleted);
                }
                let n =
                    sqlx::query("DELETE FROM accrual_reserved_amounts WHERE job_id = ? LIMIT ?")
                        .bind(job_id)
                        .bind(RESERVED_ROWS_PER_DELETE)
                        .execute(pool)
                        .await?
                        .rows_affected();
                deleted += n;
                tokio::time::sleep(PAUSE).await;
                if n < RESERVED_ROWS_PER_DELETE {
                    break;
                }
            }
        }
        if jobs.len() < RESERVED_JOBS_PER_PICK as usize {
            break;
        }
    }
    Ok(deleted)
}

/// A retention as an `INTERVAL ? MICROSECOND` (validated retentions are far below `u64::MAX` µs).
fn micros(retention: Duration) -> u64 {
    u64::try_from(retention.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 60 * 60;

    #[test]
    fn a_plain_number_counts_days_or_hours_and_a_unit_counts_itself() {
        assert_eq!(parse_days("30"), Ok(Duration::from_secs(30 * DAY)));
        assert_eq!(parse_hours("168"), Ok(Duration::from_secs(168 * 3_600)));
        for parse in [parse_days, parse_hours] {
            assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
            assert_eq!(parse(" 2h "), Ok(Duration::from_secs(7_200)));
            assert_eq!(parse("3d"), Ok(Duration::from_secs(3 * DAY)));
            assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
            assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1_500)));
            for bad in [
                "",
                "d",
                "thirty",
                "-1",
                "2w",
                "1.5d",
                "99999999999999999999d",
            ] {
                assert!(parse(bad).is_err(), "{bad:?}");
            }
        }
        assert!(parse_days("999999999999999999").is_err(), "overflows");
    }

    #[test]
    fn zero_and_absurd_retentions_are_refused_by_name() {
        assert!(RetentionSettings::default().validate().is_ok());
        let zero_results = RetentionSettings {
            results_retention: Duration::ZERO,
            ..RetentionSettings::default()
        };
        let message = zero_results.validate().expect_err("refused");
        assert!(message.contains("RESULTS_RETENTION_DAYS"), "{message}");
        let long_keys = RetentionSettings {
            idempotency_retention: MAX_RETENTION + Duration::from_secs(1),
            ..RetentionSettings::default()
        };
        let message = long_keys.validate().expect_err("refused");
        assert!(message.contains("IDEMPOTENCY_RETENTION_HOURS"), "{message}");
        let short = RetentionSettings {
            results_retention: Duration::from_millis(999),
            ..RetentionSettings::default()
        };
        assert!(short.validate().is_err(), "under a second");
    }
}
