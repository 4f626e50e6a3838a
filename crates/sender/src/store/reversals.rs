//! Reversal jobs: a job that writes, through the same dispatcher and listeners, one compensating
//! ledger row (negative amount, its own `accrual_id`, `reverses` = the original point) for every
//! point another job wrote. The ledger stays append-only.
//!
//! Two unique keys make a double reversal impossible: `accrual_jobs.reverses` (one reversal job per
//! job, decided by whichever concurrent insert commits first) and `point_accruals.reverses` (one
//! compensating row per point).
//!
//! Who may reverse what, and who won a race, is in [`check_reversible`] and [`race_winner`].
//!
//! A reversal is made in one transaction that first locks the original's job row exclusively
//! ([`lock_original`]), claims the reversal by storing its job row ([`claim`]: a concurrent
//! reversal of the same job loses here, before reading anything), counts the original's written
//! points (the caller charges them to the client's allowance), then reads its ledger rows a page
//! at a time ([`PAGE_POINTS`]), storing each page's compensating chunks before reading the next,
//! so memory stays flat whatever the job's size ([`finish`] commits). A listener's write
//! takes a shared lock on the job rows of its points and refuses the points of a job that has a
//! reversal: a late point of the original is either in the ledger before the reversal reads it
//! (and reversed) or refused as a dead letter, never written and left unreversed.

use accrual_core::accrual::Accrual;
use accrual_core::chunk;
use accrual_core::db::{ER_DUP_ENTRY, error_number};
use accrual_core::domain::{Amount, MemberId, PointType, Reason};
use accrual_core::job_status::JobStatus;
use accrual_core::message::PointRecord;
use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool, Transaction};
use uuid::Uuid;

mod eligibility;

pub use eligibility::{REVERSIBLE, RaceWinner, Unreversible, check_reversible, race_winner};

/// A stored chunk (see `accrual_core::chunk`) and its number of points.
pub type StoredChunk = (Vec<u8>, usize);

/// One point the original job wrote, as its ledger row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPoint {
    pub accrual_id: Uuid,
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
    pub expires_at: Option<NaiveDateTime>,
}

/// The original job as its locked row shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedJob {
    pub client_id: String,
    pub status: JobStatus,
    /// The job it reverses, if it is itself a reversal job.
    pub reverses: Option<Uuid>,
    /// Its reversal job, if it has one already.
    pub reversed_by: Option<Uuid>,
}

/// Opens the reversal's transaction and locks the original job's row exclusively, so no listener
/// writes a point of it until the transaction ends; `None` in second place when there is no such
/// job. Under `REPEATABLE READ` the transaction's snapshot is taken at its first plain read, which
/// comes after the lock: what it reads next (the reversal job, the ledger rows) includes every
/// write committed before the lock was granted.
pub async fn lock_original(
    pool: &MySqlPool,
    original: Uuid,
) -> Result<(Transaction<'static, sqlx::MySql>, Option<LockedJob>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, JobStatus, Option<Uuid>)> = sqlx::query_as(
        "SELECT client_id, status, reverses FROM accrual_jobs WHERE job_id = ? FOR UPDATE",
    )
    .bind(original)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((client_id, status, reverses)) = row else {
        return Ok((tx, None));
    };
    let reversed_by: Option<Uuid> =
        sqlx::query_scalar("SELECT job_id FROM accrual_jobs WHERE reverses = ?")
            .bind(original)
            .fetch_optional(&mut *tx)
            .await?;
    let job = LockedJob {
        client_id,
        status,
        reverses,
        reversed_by,
    };
    Ok((tx, Some(job)))
}

/// Ledger rows read, and compensating points encoded and stored, at a time: a reversal of any
/// size holds one page in memory (about 100 bytes a point read, as much again encoded).
pub const PAGE_POINTS: usize = 10_000;

/// How many points `job_id` wrote to the ledger, and for how many distinct members, counted in
/// the transaction [`lock_original`] opened (MySQL counts; nothing is read into memory).
pub async fn written_count(
    conn: &mut MySqlConnection,
    job_id: Uuid,
) -> Result<(u64, u64), sqlx::Error> {
    let (points, members): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT member_id) FROM point_accruals WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(conn)
    .await?;
    Ok((points.max(0) as u64, members.max(0) as u64))
}

/// The next page of points `job_id` wrote to the ledger, in the order they were written: at most
/// `limit` rows after ledger row `after` (0 for the first page), each with its row id (the next
/// page's `after`). Only written points: a dead-lettered point was never credited, so there is
/// nothing to take back.
pub async fn written_page(
    conn: &mut MySqlConnection,
    job_id: Uuid,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, WrittenPoint)>, sqlx::Error> {
    let rows: Vec<(u64, Uuid, String, String, i64, Option<NaiveDateTime>)> = sqlx::query_as(
        "SELECT id, accrual_id, member_id, point_type, amount, expires_at \
         FROM point_accruals WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit as u64)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, accrual_id, member_id, point_type, amount, expires_at)| {
                let point = WrittenPoint {
                    accrual_id,
                    member_id,
                    point_type,
                    amount,
                    expires_at,
                };
                (id, point)
            },
        )
        .collect())
}

/// The `body_sha256` a reversal job is stored with: it names "reversal of `original`", so an
/// `Idempotency-Key` first used for another request (or the reversal of another job) is a 409.
pub fn digest(original: Uuid) -> [u8; 32] {
    Sha256::digest(format!("POST /v1/jobs/{original}/reversal")).into()
}

/// The `reason` every compensating point carries.
pub fn reason(original: Uuid) -> String {
    format!("reversal of job {original}")
}

/// A ledger row that cannot be turned into a compensating point (it would not pass the checks
/// the API and the listener make).
#[derive(Debug, thiserror::Error)]
#[error("ledger row {accrual_id} cannot be reversed: {field} {message}")]
pub struct UnreversibleRow {
    pub accrual_id: Uuid,
    pub field: &'static str,
    pub message: &'static str,
}

/// The reversal job's stored chunks (see `accrual_core::chunk`, `chunk_items` points each) for
/// `points`, one page of the original's ledger rows. Each compensating point: a new UUID v7 `accrual_id`,
/// `job_id` = the reversal job, the original's member, point type, expiry and amount magnitude
/// (negative on the wire and in the ledger, through `reverses`), `reverses` = the original
/// `accrual_id`, `accepted_at` = `accepted_at`.
pub fn compensating_chunks(
    original: Uuid,
    reversal_job: Uuid,
    accepted_at: DateTime<Utc>,
    points: &[WrittenPoint],
    chunk_items: usize,
) -> Result<Vec<StoredChunk>, UnreversibleRow> {
    let chunk_items = chunk_items.max(1);
    let reason = Reason::try_from(reason(original)).map_err(|e| UnreversibleRow {
        accrual_id: original,
        field: "reason",
        message: e.0,
    })?;
    let mut chunks = Vec::with_capacity(points.len().div_ceil(chunk_items));
    for slice in points.chunks(chunk_items) {
        let mut records = Vec::with_capacity(slice.len());
        for point in slice {
            let bad = |field| {
                move |e: accrual_core::domain::FieldError| UnreversibleRow {
                    accrual_id: point.accrual_id,
                    field,
                    message: e.0,
                }
            };
            records.push(PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id: reversal_job,
                accrual: Accrual {
                    member_id: MemberId::try_from(point.member_id.as_str())
                        .map_err(bad("member_id"))?,
                    point_type: PointType::try_from(point.point_type.as_str())
                        .map_err(bad("point_type"))?,
                    // A credit's amount is its magnitude; a row that is itself negative (a
                    // compensating row) is refused here.
                    amount: Amount::try_from(point.amount).map_err(bad("amount"))?,
                    reason: Some(reason.clone()),
                    expires_at: point.expires_at.map(|t| t.and_utc()),
                    external_id: None,
                },
                accepted_at,
                reverses: Some(point.accrual_id),
            });
        }
        chunks.push((chunk::encode(&records), records.len()));
    }
    Ok(chunks)
}

/// A reversal job to claim: its row, stored before anything of the original is read.
#[derive(Debug)]
pub struct NewReversal {
    pub job_id: Uuid,
    /// The job it reverses.
    pub reverses: Uuid,
    pub client_id: String,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReversalStoreError {
    /// Another reversal of the same job, or a job with the same client and `Idempotency-Key`,
    /// exists already (a concurrent call committed first).
    #[error("the job is reversed already, or the Idempotency-Key is taken")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Claims the reversal in the transaction [`lock_original`] opened: stores the reversal job's row
/// (`dispatching`, no points yet) first, so the unique key on `accrual_jobs.reverses` decides
/// between concurrent reversals before either reads the ledger; a loser gets
/// [`ReversalStoreError::Duplicate`].
pub async fn claim(
    conn: &mut MySqlConnection,
    job: &NewReversal,
) -> Result<(), ReversalStoreError> {
    let inserted = sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, idempotency_key, body_sha256, total, members, status, created_at, reverses) \
         VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?)",
    )
    .bind(job.job_id)
    .bind(&job.client_id)
    .bind(&job.idempotency_key)
    .bind(&digest(job.reverses)[..])
    .bind(JobStatus::Dispatching)
    .bind(job.created_at.naive_utc())
    .bind(job.reverses)
    .execute(conn)
    .await;
    match inserted {
        Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => Err(ReversalStoreError::Duplicate),
        other => other.map(drop).map_err(ReversalStoreError::Db),
    }
}

/// Stores one page's chunks, numbered from `first_seq`, due at MySQL's `NOW(6)`.
pub async fn insert_chunks(
    conn: &mut MySqlConnection,
    job_id: Uuid,
    first_seq: usize,
    chunks: &[StoredChunk],
) -> Result<(), sqlx::Error> {
    for (seq, (items, count)) in (first_seq..).zip(chunks) {
        sqlx::query(
            "INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(job_id)
        .bind(seq as u32)
        .bind(items)
        .bind(*count as u32)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Sets the claimed reversal job's point and member counts and commits (which releases the
/// original's row and hands the job to the dispatcher).
pub async fn finish(
    mut tx: Transaction<'static, sqlx::MySql>,
    job_id: Uuid,
    total: u64,
    members: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accrual_jobs SET total = ?, members = ? WHERE job_id = ?")
        .bind(total)
        .bind(members)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn written(i: i64) -> WrittenPoint {
        WrittenPoint {
            accrual_id: Uuid::now_v7(),
            member_id: format!("m{}", i % 3),
            point_type: "WELFARE".into(),
            amount: i + 1,
            expires_at: (i == 0).then(|| {
                chrono::NaiveDate::from_ymd_opt(2030, 1, 2)
                    .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
                    .expect("a valid instant")
            }),
        }
    }

    #[test]
    fn each_written_point_gets_one_compensating_point_with_a_negative_amount() {
        let original = Uuid::now_v7();
        let reversal = Uuid::now_v7();
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let points: Vec<WrittenPoint> = (0..25).map(written).collect();
        let chunks = compensating_chunks(original, reversal, now, &points, 10).expect("reversible");
        assert_eq!(
            chunks.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let records: Vec<PointRecord> = chunks
            .iter()
            .flat_map(|(blob, _)| chunk::decode(blob).expect("decodes"))
            .map(|body| PointRecord::decode(&body).expect("a valid message"))
            .collect();
        assert_eq!(records.len(), 25);
        let ids: HashSet<Uuid> = records.iter().map(|r| r.accrual_id).collect();
        assert_eq!(
            ids.len(),
            25,
            "each compensating point has its own accrual_id"
        );
        for (record, point) in records.iter().zip(&points) {
            assert_ne!(record.accrual_id, point.accrual_id);
            assert_eq!(record.reverses, Some(point.accrual_id));
            assert_eq!(record.job_id, reversal);
            assert_eq!(record.ledger_amount(), -point.amount);
            assert_eq!(record.accrual.member_id.as_str(), point.member_id);
            assert_eq!(record.accrual.point_type.as_str(), point.point_type);
            assert_eq!(
                record.accrual.expires_at.map(|t| t.naive_utc()),
                point.expires_at
            );
            assert_eq!(record.accepted_at, now);
            assert_eq!(
                record.accrual.reason.as_ref().map(Reason::as_str),
                Some(format!("reversal of job {original}").as_str())
            );
        }
    }

    #[test]
    fn a_compensating_row_cannot_be_reversed_again() {
        let mut point = written(1);
        point.amount = -2;
        let err = compensating_chunks(Uuid::now_v7(), Uuid::now_v7(), Utc::now(), &[point], 10)
            .expect_err("negative");
        assert_eq!(err.field, "amount");
    }

    #[test]
    fn the_digest_names_the_reversed_job() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(digest(a), digest(a));
        assert_ne!(digest(a), digest(b));
    }
}
