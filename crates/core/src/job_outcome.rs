//! A job's outcome, counted exactly from MySQL and stored when the job is done.
//!
//! Every accepted point ends written (a ledger row) or dead-lettered (a row in
//! `accrual_dead_letters`), whoever moved it. The counts follow three rules:
//! - a point is written once: the ledger's unique `accrual_id`;
//! - a dead letter whose point is in the ledger (redriven, then written) is not counted: a point
//!   counts as written or dead-lettered, never both;
//! - a dead letter recorded ahead of time (`counts_from`, see the listener's last-receive rule)
//!   counts only from that instant.
//!
//! [`settle`] stores the outcome in `accrual_jobs` (status, `written`, `dead_lettered`, and
//! `completed_at`: the time of the last write or dead letter, not the time anyone looked), counted
//! and stored in one transaction under the job row's lock. The sender's completion task settles
//! jobs whose points are all sent, and now and then re-settles finished jobs with dead letters;
//! the listener settles again a finished job one of whose dead letters it has just written.
//!
//! A settlement that changes a job's status records its webhook event (`job.completed`,
//! `job.completed_with_errors`, and `job.reversed` for the job a reversal job reverses once the
//! reversal is `completed` without errors) in the same transaction: see [`crate::webhook`].

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{AssertSqlSafe, MySqlConnection, MySqlPool};
use uuid::Uuid;

use crate::job_status::JobStatus;
use crate::webhook;

/// A job's points as MySQL has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub written: u64,
    pub dead_lettered: u64,
    /// When the last of those points was written or dead-lettered.
    pub last_at: Option<DateTime<Utc>>,
}

/// Counts a job's written and dead-lettered points (see the module rules). One index range of the
/// ledger per job: meant for settling a job, not for every read of it.
pub async fn count(pool: &MySqlPool, job_id: Uuid) -> Result<Outcome, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    count_on(&mut conn, job_id).await
}

/// [`count`] on one connection: inside a transaction, as that transaction sees the tables.
pub async fn count_on(conn: &mut MySqlConnection, job_id: Uuid) -> Result<Outcome, sqlx::Error> {
    let (written, dead_lettered, last_written, last_dead): (
        i64,
        i64,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
    ) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM point_accruals WHERE job_id = ?), \
           (SELECT COUNT(*) FROM accrual_dead_letters d WHERE d.job_id = ? \
              AND (d.counts_from IS NULL OR d.counts_from <= NOW(6)) \
              AND NOT EXISTS (SELECT 1 FROM point_accruals p WHERE p.accrual_id = d.accrual_id)), \
           (SELECT created_at FROM point_accruals WHERE id = \
              (SELECT MAX(id) FROM point_accruals WHERE job_id = ?)), \
           (SELECT MAX(COALESCE(d.counts_from, d.created_at)) FROM accrual_dead_letters d \
              WHERE d.job_id = ? AND (d.counts_from IS NULL OR d.counts_from <= NOW(6)) \
              AND NOT EXISTS (SELECT 1 FROM point_accruals p WHERE p.accrual_id = d.accrual_id))",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(job_id)
    .bind(job_id)
    .fetch_one(conn)
    .await?;
    let last_at = last_written.max(last_dead).map(|t| t.and_utc());
    Ok(Outcome {
        written: written as u64,
        dead_lettered: dead_lettered as u64,
        last_at,
    })
}

/// The status a job of `total` points has with `outcome`, once every point is accounted for.
pub fn final_status(total: u64, outcome: &Outcome) -> Option<JobStatus> {
    if outcome.written + outcome.dead_lettered < total {
        None
    } else if outcome.dead_lettered > 0 {
        Some(JobStatus::CompletedWithErrors)
    } else {
        Some(JobStatus::Completed)
    }
}

/// A settlement that changed the stored job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub status: JobStatus,
    /// Set when this was the job's first settlement (it left `dispatching` or `enqueued`): the
    /// time from its release (`reserve_at`, else `created_at`) to its `completed_at`. Exactly one
    /// settlement of a job, whichever replica makes it, has it.
    pub first_took: Option<std::time::Duration>,
}

/// How a settler waits for the job's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Up to the session's lock wait timeout (`DATABASE_STATEMENT_TIMEOUT`).
    Wait,
    /// Not at all: a job whose row another transaction holds fails at once with a lock conflict
    /// ([`crate::db::is_lock_conflict`]), so a task settling many jobs goes on with the next.
    NoWait,
}

/// Counts a job exactly and, when every point is written or dead-lettered, stores its final
/// status, counts and completion time. Returns what it stored, if anything changed.
///
/// The count and the store are one transaction under the job row's lock (`FOR UPDATE`), and the
/// count starts after the lock is granted: of two settlers, the one that stores last counted last,
/// so the stored counts are never older than a settlement before them. Every settlement also
/// stamps `checked_at` (the completion task looks at the least recently checked jobs first).
///
/// A job not yet released (`reserved`) or `cancelled` is left alone; a finished job is settled
/// again (its counts change when a dead letter is redriven and written).
pub async fn settle(pool: &MySqlPool, job_id: Uuid) -> Result<Option<Settled>, sqlx::Error> {
    settle_with(pool, job_id, LockWait::Wait).await
}

/// Settles a job again only if it is finished already (`completed` or `completed_with_errors`):
/// what a listener does when one of a job's dead letters has just been written. A job still
/// running is left to the sender's completion task, which makes every first settlement (and
/// observes its completion time).
pub async fn settle_if_final(
    pool: &MySqlPool,
    job_id: Uuid,
) -> Result<Option<Settled>, sqlx::Error> {
    let status: Option<JobStatus> =
        sqlx::query_scalar("SELECT status FROM accrual_jobs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    if matches!(
        status,
        Some(JobStatus::Completed | JobStatus::CompletedWithErrors)
    ) {
        settle(pool, job_id).await
    } else {
        Ok(None)
    }
}

/// [`settle`], waiting for the job's row lock as `wait` says.
pub async fn settle_with(
    pool: &MySqlPool,
    job_id: Uuid,
    wait: LockWait,
) -> Result<Option<Settled>, sqlx::Error> {
    Ok(settle_counting(pool, job_id, wait).await?.0)
}

/// [`settle_with`], also answering the count it made (`None` for a job it left alone: unknown,
/// reserved or cancelled), so a caller can tell a job that progresses from one that does not.
pub async fn settle_counting(
    pool: &MySqlPool,
    job_id: Uuid,
    wait: LockWait,
) -> Result<(Option<Settled>, Option<Outcome>), sqlx::Error> {
    type Row = (
        u32,
        JobStatus,
        Option<u32>,
        Option<u32>,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<Uuid>,
    );
    let lock = match wait {
        LockWait::Wait => "FOR UPDATE",
        LockWait::NoWait => "FOR UPDATE NOWAIT",
    };
    let mut tx = pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT total, status, written, dead_lettered, created_at, reserve_at, reverses \
         FROM accrual_jobs WHERE job_id = ? {lock}"
    )))
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((total, status, stored_written, stored_dead, created_at, reserve_at, reverses)) = row
    else {
        return Ok((None, None));
    };
    if matches!(status, JobStatus::Reserved | JobStatus::Cancelled) {
        return Ok((None, None));
    }
    // The first consistent read of this transaction: its snapshot is taken now, under the lock.
    let outcome = count_on(&mut tx, job_id).await?;
    let next = final_status(u64::from(total), &outcome);
    let unchanged = next.is_none_or(|next| {
        status == next
            && stored_written.map(u64::from) == Some(outcome.written)
            && stored_dead.map(u64::from) == Some(outcome.dead_lettered)
    });
    let Some(next) = next.filter(|_| !unchanged) else {
        sqlx::query("UPDATE accrual_jobs SET checked_at = NOW(6) WHERE job_id = ?")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok((None, Some(outcome)));
    };
    let completed_at = outcome.last_at.unwrap_or_else(Utc::now).naive_utc();
    sqlx::query(
        "UPDATE accrual_jobs SET status = ?, completed_at = ?, written = ?, dead_lettered = ?, \
         checked_at = NOW(6) WHERE job_id = ?",
    )
    .bind(next)
    .bind(completed_at)
    .bind(outcome.written as u32)
    .bind(outcome.dead_lettered as u32)
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    // The first settlement moves the job out of a running status; under the row lock, only one
    // settler ever sees it running, so only one counts it as the job's first.
    let first = matches!(status, JobStatus::Dispatching | JobStatus::Enqueued);
    // The webhook events of the change are written in its transaction (see `webhook`). A status
    // that changed (always, on the first settlement) is an event; counts alone are not.
    if status != next {
        if let Some(event) = webhook::Event::settled(next) {
            webhook::record(&mut tx, job_id, event).await?;
        }
        // A reversal job that completes without errors: the job it reverses is reversed. One
        // that ends `completed_with_errors` has its own event only, and the original gets one
        // when (if ever) the reversal becomes `completed`.
        if next == JobStatus::Completed
            && let Some(reversed) = reverses
        {
            webhook::record(&mut tx, reversed, webhook::Event::Reversed).await?;
        }
    }
    tx.commit().await?;
    tracing::info!(%job_id, status = next.as_str(), written = outcome.written, dead_lettered = outcome.dead_lettered, "Job settled");
    let released = reserve_at.unwrap_or(created_at);
    let settled = Settled {
        status: next,
        first_took: first.then(|| (completed_at - released).to_std().unwrap_or_default()),
    };
    Ok((Some(settled), Some(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(written: u64, dead_lettered: u64) -> Outcome {
        Outcome {
            written,
            dead_lettered,
            last_at: None,
        }
    }

    #[test]
    fn a_job_is_final_only_when_every_point_is_accounted_for() {
        assert_eq!(final_status(10, &outcome(9, 0)), None);
        assert_eq!(
            final_status(10, &outcome(10, 0)),
            Some(JobStatus::Completed)
        );
        assert_eq!(
            final_status(10, &outcome(9, 1)),
            Some(JobStatus::CompletedWithErrors)
        );
    }
}
