//! Durable jobs: the `accrual_jobs` row and its `accrual_chunks`, written in one transaction.

use accrual_core::db::{
    ER_DUP_ENTRY, ER_LOCK_DEADLOCK, error_number, placeholders, statement_sizes,
};
use accrual_core::job_status::JobStatus;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::MySqlPool;
use uuid::Uuid;

use super::external_ids;
pub use listing::{JobFilter, ListPosition, PlanRow, list, list_plan};

mod listing;

/// A job to store.
#[derive(Debug)]
pub struct NewJob {
    pub job_id: Uuid,
    pub client_id: String,
    pub idempotency_key: Option<String>,
    pub body_sha256: [u8; 32],
    pub total: usize,
    pub members: usize,
    pub reserve_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The client's name for the job (a campaign), shown in its view and filtered on in the list.
    pub label: Option<String>,
    /// Stored chunks (see `accrual_core::chunk`) with their item counts.
    pub chunks: Vec<(Vec<u8>, usize)>,
    /// The client's ids the job's points take: `(external_id, accrual_id)`.
    pub external_ids: Vec<(String, Uuid)>,
    /// Items left out because their `external_id` was used before (`on_duplicate=skip`).
    pub skips: Vec<SkippedItem>,
    /// A reserved job's amounts per (member, point type), for members' balances; empty otherwise.
    pub reserved_amounts: Vec<crate::store::member_ledger::ReservedAmount>,
}

/// An item left out of a job because its `external_id` was used before, and the point holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedItem {
    pub index: usize,
    pub external_id: String,
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
    pub existing_accrual_id: Uuid,
    pub existing_job_id: Uuid,
}

/// A stored job as the API shows it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: Uuid,
    pub client_id: String,
    pub body_sha256: Vec<u8>,
    pub total: u32,
    pub members: u32,
    pub status: JobStatus,
    pub reserve_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Counts stored when the job was settled (see `accrual_core::job_outcome`).
    pub written: Option<u32>,
    pub dead_lettered: Option<u32>,
    pub label: Option<String>,
    /// When retention removed the job's stored chunks (its per-item results went with them).
    pub results_purged_at: Option<DateTime<Utc>>,
    /// Items left out because their `external_id` was taken (`on_duplicate=skip`).
    pub skipped: u32,
    /// The job this one reverses (a reversal job).
    pub reverses: Option<Uuid>,
    /// The reversal job that reverses this one.
    pub reversed_by: Option<Uuid>,
    /// What the reconciler did to the job, if it ever compared it.
    pub reconciler: Option<accrual_core::job_view::Reconciliation>,
}

/// The columns a [`JobRow`] is read from, in the order [`JobRow::from_row`] reads them.
static JOB_COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "job_id, client_id, body_sha256, total, members, status, reserve_at, created_at, \
         completed_at, written, dead_lettered, label, results_purged_at, skipped, reverses, \
         (SELECT r.job_id FROM accrual_jobs r WHERE r.reverses = accrual_jobs.job_id) AS reversed_by, \
         {}",
        accrual_core::job_view::RECONCILER_COLUMNS
    )
});

impl<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow> for JobRow {
    fn from_row(row: &'r sqlx::mysql::MySqlRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            job_id: row.try_get(0)?,
            client_id: row.try_get(1)?,
            body_sha256: row.try_get(2)?,
            total: row.try_get(3)?,
            members: row.try_get(4)?,
            status: row.try_get(5)?,
            reserve_at: row.try_get(6)?,
            created_at: row.try_get(7)?,
            completed_at: row.try_get(8)?,
            written: row.try_get(9)?,
            dead_lettered: row.try_get(10)?,
            label: row.try_get(11)?,
            results_purged_at: row.try_get(12)?,
            skipped: row.try_get(13)?,
            reverses: row.try_get(14)?,
            reversed_by: row.try_get(15)?,
            reconciler: accrual_core::job_view::reconciliation(row, 16)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a job with this client and Idempotency-Key exists already")]
    DuplicateKey,
    /// Another request took one of the job's `external_id`s since they were looked up.
    #[error("an external_id of the job was taken by a concurrent request")]
    ExternalIdTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Stores the job and all its chunks, or nothing.
pub async fn insert(pool: &MySqlPool, job: &NewJob) -> Result<(), StoreError> {
    let tx = claim(pool, &job.client_id, job.job_id, &job.external_ids).await?;
    insert_claimed(tx, job).await
}

/// Opens a job's transaction and takes its `external_id`s for the client in it (sorted, so
/// concurrent requests take their row locks in one order). `ExternalIdTaken` when one is held
/// already, or when a concurrent request holding some of them deadlocked with this one.
pub async fn claim(
    pool: &MySqlPool,
    client_id: &str,
    job_id: Uuid,
    external_ids: &[(String, Uuid)],
) -> Result<sqlx::Transaction<'static, sqlx::MySql>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut sorted: Vec<&(String, Uuid)> = external_ids.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    match external_ids::claim(&mut tx, client_id, job_id, &sorted).await {
        Err(e) if matches!(error_number(&e), Some(ER_DUP_ENTRY | ER_LOCK_DEADLOCK)) => {
            Err(StoreError::ExternalIdTaken)
        }
        other => other.map(|()| tx).map_err(StoreError::from),
    }
}

/// Stores the job and its chunks in the transaction [`claim`] opened, and commits.
pub async fn insert_claimed(
    mut tx: sqlx::Transaction<'static, sqlx::MySql>,
    job: &NewJob,
) -> Result<(), StoreError> {
    let status = initial_status(job);
    // A job whose every item was skipped has nothing to send: it is complete as it is stored.
    let (written, completed_at) = if status == JobStatus::Completed {
        (Some(0u32), Some(job.created_at.naive_utc()))
    } else {
        (None, None)
    };
    let inserted = sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, idempotency_key, body_sha256, total, members, status, reserve_at, created_at, label, skipped, written, dead_lettered, completed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(job.job_id)
    .bind(&job.client_id)
    .bind(&job.idempotency_key)
    .bind(&job.body_sha256[..])
    .bind(job.total as u32)
    .bind(job.members as u32)
    .bind(status)
    .bind(job.reserve_at.map(|t| t.naive_utc()))
    .bind(job.created_at.naive_utc())
    .bind(&job.label)
    .bind(job.skips.len() as u32)
    .bind(written)
    .bind(written)
    .bind(completed_at)
    .execute(&mut *tx)
    .await;
    match inserted {
        // The same client and Idempotency-Key at once: the other request's job stands.
        Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => {
            return Err(StoreError::DuplicateKey);
        }
        other => {
            other?;
        }
    }
    insert_chunks(
        &mut tx,
        job.job_id,
        &job.chunks,
        job.reserve_at.map(|t| t.naive_utc()),
    )
    .await?;
    insert_skips(&mut tx, job).await?;
    crate::store::member_ledger::insert_reserved(&mut tx, job.job_id, &job.reserved_amounts)
        .await?;
    if status == JobStatus::Completed {
        // No settlement will ever see this job change (it is final as stored), so its event is
        // recorded here, with the job, as a settlement records its own.
        accrual_core::webhook::record(&mut tx, job.job_id, accrual_core::webhook::Event::Completed)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `reserved` (released at `reserve_at`), `dispatching`, or `completed` when every item was
/// skipped and nothing is left to send.
pub fn initial_status(job: &NewJob) -> JobStatus {
    if job.total == 0 {
        JobStatus::Completed
    } else if job.reserve_at.is_some() {
        JobStatus::Reserved
    } else {
        JobStatus::Dispatching
    }
}

/// Largest statement of chunk rows, in bytes of chunk bodies: a 500,000-item job's 250 chunks go
/// in a few statements instead of 250 round trips, each well under MySQL's and MariaDB's
/// `max_allowed_packet` (16 MiB by default on MariaDB, 64 MiB on MySQL 8; 4 MiB on old servers).
const CHUNK_STATEMENT_BYTES: usize = 2 * 1024 * 1024;

/// Stores a job's chunks, numbered from 0 in order, in multi-row statements of at most
/// [`CHUNK_STATEMENT_BYTES`] (a chunk larger than that goes alone). Row counts are powers of two,
/// so few statement shapes are prepared. The chunks are due at `reserve_at`, or else at MySQL's
/// `NOW(6)`: the dispatcher claims them by comparing with `NOW(6)`, so a sender whose clock is
/// ahead would otherwise hold its own jobs back by as much.
async fn insert_chunks(
    tx: &mut sqlx::MySqlConnection,
    job_id: Uuid,
    chunks: &[(Vec<u8>, usize)],
    reserve_at: Option<chrono::NaiveDateTime>,
) -> Result<(), sqlx::Error> {
    let largest = chunks
        .iter()
        .map(|(b, _)| b.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let rows = (CHUNK_STATEMENT_BYTES / largest).max(1);
    let mut seq = 0u32;
    for size in statement_sizes(chunks.len(), rows) {
        let rows = vec!["(?, ?, ?, ?, COALESCE(?, NOW(6)))"; size].join(",");
        let sql = format!(
            "INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at) VALUES {rows}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (items, count) in &chunks[seq as usize..seq as usize + size] {
            query = query
                .bind(job_id)
                .bind(seq)
                .bind(&items[..])
                .bind(*count as u32)
                .bind(reserve_at);
            seq += 1;
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Rows per statement when a job records its skipped items (9 placeholders each).
const SKIP_ROWS: usize = 2_048;

async fn insert_skips(tx: &mut sqlx::MySqlConnection, job: &NewJob) -> Result<(), sqlx::Error> {
    let mut rest = &job.skips[..];
    for size in statement_sizes(rest.len(), SKIP_ROWS) {
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO accrual_job_skips (job_id, item_index, external_id, member_id, point_type, \
             amount, existing_accrual_id, existing_job_id) VALUES {}",
            placeholders(size, 8)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for skip in batch {
            query = query
                .bind(job.job_id)
                .bind(skip.index as u32)
                .bind(&skip.external_id)
                .bind(&skip.member_id)
                .bind(&skip.point_type)
                .bind(skip.amount)
                .bind(skip.existing_accrual_id)
                .bind(skip.existing_job_id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The job a client created with an `Idempotency-Key`.
pub async fn find_by_key(
    pool: &MySqlPool,
    client_id: &str,
    key: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {} FROM accrual_jobs WHERE client_id = ? AND idempotency_key = ?",
        *JOB_COLUMNS
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(client_id)
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// A job by id.
pub async fn get(pool: &MySqlPool, job_id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!("SELECT {} FROM accrual_jobs WHERE job_id = ?", *JOB_COLUMNS);
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such job")]
    NotFound,
    #[error("the job is {0} and can no longer be cancelled")]
    NotCancellable(JobStatus),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Cancels a reserved job none of whose chunks has been claimed; removes its chunks.
///
/// Locks the chunks first, then the job: the dispatcher's claim takes them in the same order.
pub async fn cancel(pool: &MySqlPool, job_id: Uuid, client_id: &str) -> Result<(), CancelError> {
    let mut tx = pool.begin().await?;
    let chunk_claimed: Vec<bool> = sqlx::query_scalar(
        "SELECT lease_owner IS NOT NULL OR dispatched_at IS NOT NULL FROM accrual_chunks WHERE job_id = ? FOR UPDATE",
    )
    .bind(job_id)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = chunk_claimed.iter().any(|c| *c);
    let row: Option<(String, JobStatus)> =
        sqlx::query_as("SELECT client_id, status FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
    let status = match row {
        Some((owner, status)) if owner == client_id => status,
        _ => return Err(CancelError::NotFound),
    };
    if status != JobStatus::Reserved || claimed {
        // A reserved job one of whose chunks is claimed is being released: it is dispatching.
        let shown = if status == JobStatus::Reserved {
            JobStatus::Dispatching
        } else {
            status
        };
        return Err(CancelError::NotCancellable(shown));
    }
    // None of the job's points was ever sent: its external ids are free for another job.
    external_ids::free(&mut tx, client_id, job_id).await?;
    sqlx::query("DELETE FROM accrual_chunks WHERE job_id = ?")
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accrual_jobs SET status = ?, completed_at = NOW(6) WHERE job_id = ?")
        .bind(JobStatus::Cancelled)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    accrual_core::webhook::record(&mut tx, job_id, accrual_core::webhook::Event::Cancelled).await?;
    tx.commit().await?;
    Ok(())
}
