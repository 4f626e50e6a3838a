//! The points a write must not make, each dead-lettered in the write's own transaction instead.
//!
//! Two kinds:
//! - a point of a job that has a reversal (a job row whose `reverses` names it): the reversal took
//!   back only the points written before it ([`REVERSED_REASON`]). The write transaction takes a
//!   shared lock on the job rows of its points, and the creation of a reversal an exclusive lock on
//!   the original's row before it reads that job's ledger rows: the two serialize, so a point is
//!   either written before the reversal reads the ledger (and reversed) or refused;
//! - a point whose `external_id` a later job holds now (it was dead-lettered, and the id claimed
//!   again): the id is credited by that job's point ([`SUPERSEDED_REASON`]). The holder row is
//!   read with a shared lock, and a take-over updates it under an exclusive one, so an id is
//!   credited at most once.

use std::collections::{HashMap, HashSet};

use accrual_core::db::placeholders;
use accrual_core::message::PointRecord;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// Why a point of a reversed job is refused: its job's reversal did not take it back.
pub const REVERSED_REASON: &str = "job reversed before this point was written";
/// Why a point is refused whose `external_id` a later job claimed after this point was
/// dead-lettered: the id is credited by that job's point.
pub const SUPERSEDED_REASON: &str = "superseded: its external_id was claimed again by a later job after this point was dead-lettered";
/// External ids looked up per statement (a batch has at most `max_rows` points).
const HOLDER_ROWS: usize = 4_096;

/// Records in `records` (repeats included) whose point is in `refused`.
pub(super) fn refused_of(records: &[PointRecord], refused: &HashSet<Uuid>) -> usize {
    if refused.is_empty() {
        return 0;
    }
    records
        .iter()
        .filter(|r| refused.contains(&r.accrual_id))
        .count()
}

/// The points of `records` that must not be written, each with the reason: those of a job that
/// has a reversal ([`REVERSED_REASON`]) and those whose `external_id` a later point of the client
/// holds now ([`SUPERSEDED_REASON`]); and the client of each job, which the insert writes into
/// every row's `client_id`.
///
/// It first takes a shared lock on the job rows of `records` (held until the transaction ends). A
/// reversal is created under an exclusive lock on the original's row, so it either committed
/// before this lock was granted (and the read below sees it: under `REPEATABLE READ` a
/// transaction's snapshot is taken at its first plain read, which comes after the lock) or waits
/// for this transaction's commit before it reads the ledger. The `external_id` holders are read
/// with a shared lock too: a later job takes an id over only under an exclusive lock on its row,
/// after checking that the old point is not in the ledger.
pub(super) async fn refusals(
    tx: &mut sqlx::MySqlConnection,
    records: &[&PointRecord],
) -> Result<(HashMap<Uuid, &'static str>, HashMap<Uuid, String>), sqlx::Error> {
    let mut jobs: Vec<Uuid> = records.iter().map(|r| r.job_id).collect();
    jobs.sort_unstable();
    jobs.dedup();
    let marks = vec!["?"; jobs.len()].join(",");
    // `LOCK IN SHARE MODE` rather than `FOR SHARE`: MariaDB knows only the former.
    let lock = format!(
        "SELECT job_id, client_id FROM accrual_jobs WHERE job_id IN ({marks}) ORDER BY job_id \
         LOCK IN SHARE MODE"
    );
    let mut query = sqlx::query_as::<_, (Uuid, String)>(AssertSqlSafe(lock));
    for job in &jobs {
        query = query.bind(*job);
    }
    let clients: HashMap<Uuid, String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
    let mut refused = HashMap::new();
    if clients.is_empty() {
        return Ok((refused, clients));
    }
    let read = format!(
        "SELECT reverses FROM accrual_jobs WHERE reverses IN ({})",
        vec!["?"; clients.len()].join(",")
    );
    let mut query = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(read));
    for job in clients.keys() {
        query = query.bind(*job);
    }
    let reversed: HashSet<Uuid> = query.fetch_all(&mut *tx).await?.into_iter().collect();
    // The external ids to check, by client: (external_id, accrual_id).
    let mut by_client: HashMap<&str, Vec<(&str, Uuid)>> = HashMap::new();
    for r in records {
        if reversed.contains(&r.job_id) {
            refused.insert(r.accrual_id, REVERSED_REASON);
        } else if let (Some(client), Some(id)) = (clients.get(&r.job_id), &r.accrual.external_id) {
            by_client
                .entry(client.as_str())
                .or_default()
                .push((id.as_str(), r.accrual_id));
        }
    }
    for (client, ids) in by_client {
        for part in ids.chunks(HOLDER_ROWS) {
            let sql = format!(
                "SELECT external_id, accrual_id FROM accrual_external_ids \
                 WHERE client_id = ? AND external_id IN ({}) LOCK IN SHARE MODE",
                vec!["?"; part.len()].join(",")
            );
            let mut query = sqlx::query_as::<_, (String, Uuid)>(AssertSqlSafe(sql)).bind(client);
            for (id, _) in part {
                query = query.bind(*id);
            }
            let holders: HashMap<String, Uuid> =
                query.fetch_all(&mut *tx).await?.into_iter().collect();
            for (id, accrual_id) in part {
                if holders.get(*id).is_some_and(|holder| holder != accrual_id) {
                    refused.insert(*accrual_id, SUPERSEDED_REASON);
                }
            }
        }
    }
    Ok((refused, clients))
}

/// Records `records` as dead letters with `reason` in the write's transaction. The reason replaces
/// an earlier one (a redriven dead letter is refused now for this reason), and the dead letter
/// counts at once.
pub(super) async fn refuse(
    tx: &mut sqlx::MySqlConnection,
    records: &[&PointRecord],
    reason: &str,
) -> Result<(), sqlx::Error> {
    for chunk in records.chunks(accrual_core::db::MAX_PLACEHOLDERS / 3) {
        let sql = format!(
            "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason) VALUES {} \
             ON DUPLICATE KEY UPDATE reason = VALUES(reason), counts_from = NULL",
            placeholders(chunk.len(), 3)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            query = query.bind(r.accrual_id).bind(r.job_id).bind(reason);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}
