//! The ledger's `client_id`, added expand-and-contract so that `init` stays quick:
//! 1. migration 0010 adds the column, nullable (instant: metadata only);
//! 2. the listener fills it for every row it writes, from the job rows it already reads under a
//!    shared lock in the write's transaction;
//! 3. `accrualctl backfill ledger-client-ids` ([`backfill`], then [`create_index`]) fills the
//!    older rows by primary-key ranges, in small statements of their own, then builds the index
//!    [`CLIENT_INDEX`] `(client_id, member_id, id)` online;
//! 4. the sender's member queries use that index once it exists ([`client_index_exists`]): the
//!    index is only built after a complete walk, so its presence means every row is filled.
//!
//! A row whose job row is missing keeps a NULL `client_id`. No client sees it either way: the
//! queries before the backfill join `accrual_jobs` too (and job rows are never deleted).

use std::time::{Duration, Instant};

use sqlx::MySqlPool;

use crate::db::{ER_UNKNOWN_SYSTEM_VARIABLE, error_number};

/// The index member queries read once the backfill is done.
pub const CLIENT_INDEX: &str = "ix_point_accruals_client_member";
/// Ledger ids per backfill statement by default: a few tens of milliseconds each on a laptop
/// (see docs/performance.md), far below the 1 s a concurrent write may wait.
pub const DEFAULT_BATCH_ROWS: u64 = 5_000;
/// Longest the index build waits for the table's metadata lock, at its start and at its end.
/// While an `ALTER TABLE` waits for it, every later statement on the table queues behind it, so
/// the build gives up (and is retried) rather than blocking the listeners' writes longer.
const INDEX_LOCK_WAIT_SECS: u64 = 1;
/// Attempts at the index build when it cannot get the metadata lock in time.
const INDEX_ATTEMPTS: u32 = 10;
/// MySQL error: lock wait timeout (here the metadata lock of the index build).
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// MySQL error: the index exists already (another run built it).
const ER_DUP_KEYNAME: u16 = 1061;

/// Whether [`CLIENT_INDEX`] exists, that is whether the backfill has completed.
pub async fn client_index_exists(pool: &MySqlPool) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'point_accruals' AND INDEX_NAME = ?",
    )
    .bind(CLIENT_INDEX)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// One backfill statement: the ledger ids it covered, the rows it filled and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub first_id: u64,
    pub last_id: u64,
    pub updated: u64,
    pub took: Duration,
}

/// What a [`backfill`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backfilled {
    pub batches: u64,
    /// Ledger ids walked (the ranges' width, filled or not).
    pub ids_walked: u64,
    /// Rows whose `client_id` was filled.
    pub updated: u64,
    /// The last ledger id walked: pass it plus one as `from_id` to resume.
    pub last_id: u64,
    /// The slowest single statement, in milliseconds.
    pub longest_batch_ms: u64,
    pub elapsed_ms: u64,
}

/// Fills `client_id` of the rows with ids `first_id..=last_id` that have none, from their job.
/// One autocommitted statement: it locks only the rows of its range, for as long as it runs.
///
/// The plan is fixed (`FORCE INDEX (PRIMARY)`, `STRAIGHT_JOIN`): left to itself, MariaDB may
/// start from the few jobs and read each one's rows through `ix_point_accruals_job_id`, which on
/// a 10,000,000-row ledger reads all of them per statement and runs into the statement timeout.
pub async fn fill_range(pool: &MySqlPool, first_id: u64, last_id: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE point_accruals p FORCE INDEX (PRIMARY) \
         STRAIGHT_JOIN accrual_jobs j ON j.job_id = p.job_id \
         SET p.client_id = j.client_id \
         WHERE p.id BETWEEN ? AND ? AND p.client_id IS NULL",
    )
    .bind(first_id)
    .bind(last_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Walks the ledger from `from_id` (its first row if 0) to its last row, `batch_rows` ids a
/// statement, filling missing `client_id`s; `on_batch` sees each statement. Idempotent (filled
/// rows are left alone) and resumable: a run cut short starts again from the start, where ranges
/// already filled cost an index range read each, or from the last id it reported. The last id is
/// read again at the end, so rows written meanwhile by a listener of an older version are covered.
pub async fn backfill(
    pool: &MySqlPool,
    from_id: u64,
    batch_rows: u64,
    mut on_batch: impl FnMut(&Batch),
) -> Result<Backfilled, sqlx::Error> {
    let started = Instant::now();
    let batch_rows = batch_rows.max(1);
    let (min_id, mut max_id): (Option<u64>, Option<u64>) =
        sqlx::query_as("SELECT MIN(id), MAX(id) FROM point_accruals")
            .fetch_one(pool)
            .await?;
    let mut next = from_id.max(min_id.unwrap_or(1));
    let mut done = Backfilled {
        last_id: next.saturating_sub(1),
        ..Backfilled::default()
    };
    let mut longest = Duration::ZERO;
    let mut caught_up = false;
    loop {
        while let Some(max) = max_id.filter(|max| next <= *max) {
            let last_id = next.saturating_add(batch_rows - 1).min(max);
            let at = Instant::now();
            let updated = fill_range(pool, next, last_id).await?;
            let batch = Batch {
                first_id: next,
                last_id,
                updated,
                took: at.elapsed(),
            };
            longest = longest.max(batch.took);
            done.batches += 1;
            done.ids_walked += last_id - next + 1;
            done.updated += updated;
            done.last_id = last_id;
            on_batch(&batch);
            next = last_id + 1;
        }
        if caught_up {
            break;
        }
        caught_up = true;
        max_id = sqlx::query_scalar("SELECT MAX(id) FROM point_accruals")
            .fetch_one(pool)
            .await?;
    }
    done.longest_batch_ms = u64::try_from(longest.as_millis()).unwrap_or(u64::MAX);
    done.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(done)
}

/// Builds [`CLIENT_INDEX`] online (`ALGORITHM=INPLACE, LOCK=NONE`: reads and writes go on while it
/// builds) unless it exists; `Ok(true)` if this call built it. Run it only after a complete
/// [`backfill`]: the sender takes the index as the sign that every row is filled.
///
/// The build runs without the pool's statement time limit (it takes minutes on a large ledger),
/// on a connection that is closed afterwards rather than returned with that setting. It waits at
/// most [`INDEX_LOCK_WAIT_SECS`] for the table's metadata lock, and is tried again if it did not
/// get it (a long transaction on the table holds it).
pub async fn create_index(pool: &MySqlPool) -> Result<bool, sqlx::Error> {
    if client_index_exists(pool).await? {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?.detach();
    let unlimited = sqlx::query("SET SESSION max_statement_time = 0")
        .execute(&mut conn)
        .await;
    match unlimited {
        Err(e) if error_number(&e) == Some(ER_UNKNOWN_SYSTEM_VARIABLE) => {}
        other => {
            other?;
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET SESSION lock_wait_timeout = {INDEX_LOCK_WAIT_SECS}"
    )))
    .execute(&mut conn)
    .await?;
    let build = format!(
        "ALTER TABLE point_accruals ADD INDEX {CLIENT_INDEX} (client_id, member_id, id), \
         ALGORITHM = INPLACE, LOCK = NONE"
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sqlx::query(sqlx::AssertSqlSafe(build.clone()))
            .execute(&mut conn)
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) if error_number(&e) == Some(ER_DUP_KEYNAME) => return Ok(false),
            Err(e)
                if error_number(&e) == Some(ER_LOCK_WAIT_TIMEOUT) && attempt < INDEX_ATTEMPTS =>
            {
                tracing::warn!(
                    attempt,
                    "The index build waited too long for the table's metadata lock; trying again"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
