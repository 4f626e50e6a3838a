//! Writes points to `point_accruals`: one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per statement
//! size, all of a batch in one transaction.
//!
//! A write (and a record-ahead) runs on one connection of its own until a deadline, the hold cap
//! of its messages. If the deadline passes first, the attempt is dropped, the connection taken out
//! of the pool and closed, and the server asked to `KILL` that session (best effort: the server
//! may be the reason it is stuck), so no statement or lock of it outlives the messages' hold.
//!
//! Two kinds of points are refused, dead-lettered in the write's own transaction:
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
use std::sync::Arc;

use accrual_core::db::{placeholders, statement_sizes};
use accrual_core::domain::{ExternalId, Reason};
use accrual_core::message::PointRecord;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};
use tokio::time::Instant;
use uuid::Uuid;

/// Longest wait for the server to take a `KILL` of a session given up at the hold cap.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const INSERT_COLUMNS: usize = 10;

/// Why a point of a reversed job is refused: its job's reversal did not take it back.
pub const REVERSED_REASON: &str = "job reversed before this point was written";
/// Why a point is refused whose `external_id` a later job claimed after this point was
/// dead-lettered: the id is credited by that job's point.
pub const SUPERSEDED_REASON: &str = "superseded: its external_id was claimed again by a later job after this point was dead-lettered";
/// External ids looked up per statement (a batch has at most `max_rows` points).
const HOLDER_ROWS: usize = 4_096;

/// What a batch did to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// Points newly stored.
    pub written: usize,
    /// Points that were already stored (or repeated within the batch).
    pub duplicates: usize,
    /// The same two counts per job, for progress counters.
    pub by_job: HashMap<Uuid, (u64, u64)>,
    /// Jobs one of whose points had been dead-lettered and is now written (redriven, or recorded
    /// ahead of time on its last receive): their outcome must be counted again.
    pub resettle: HashSet<Uuid>,
    /// Points refused and recorded as dead letters in the write's transaction (their job was
    /// reversed), with the reason: still to be sent to the dead-letter queue.
    pub refused: Vec<(Uuid, &'static str)>,
}

impl WriteOutcome {
    /// Adds the counts of another write (a part of the same batch) to these.
    pub fn absorb(&mut self, other: WriteOutcome) {
        self.written += other.written;
        self.duplicates += other.duplicates;
        self.resettle.extend(other.resettle);
        self.refused.extend(other.refused);
        for (job_id, (written, duplicates)) in other.by_job {
            let counts = self.by_job.entry(job_id).or_default();
            counts.0 += written;
            counts.1 += duplicates;
        }
    }
}

/// The SQL of a multi-row insert of `rows` points into `table`, each row the ten columns that
/// [`insert_query`] binds; an existing `accrual_id` is left as it is.
pub fn insert_sql(table: &str, rows: usize) -> String {
    format!(
        "INSERT INTO {table} \
         (accrual_id, job_id, member_id, point_type, amount, reason, expires_at, accepted_at, \
          external_id, reverses) \
         VALUES {} ON DUPLICATE KEY UPDATE accrual_id = accrual_id",
        placeholders(rows, INSERT_COLUMNS)
    )
}

/// Binds the points to an insert made by [`insert_sql`] for exactly `records.len()` rows.
pub fn insert_query<'q>(
    sql: Arc<str>,
    records: &[&'q PointRecord],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for r in records {
        let a = &r.accrual;
        query = query
            .bind(r.accrual_id)
            .bind(r.job_id)
            .bind(a.member_id.as_str())
            .bind(a.point_type.as_str())
            .bind(r.ledger_amount())
            .bind(a.reason.as_ref().map(Reason::as_str))
            // As `DATETIME` values in UTC: sqlx binds a `DateTime<Utc>` as a `TIMESTAMP`, which
            // MariaDB stores as NULL (or a zero date) past 2038-01-19, without an error.
            .bind(a.expires_at.map(|t| t.naive_utc()))
            .bind(r.accepted_at.naive_utc())
            .bind(a.external_id.as_ref().map(ExternalId::as_str))
            .bind(r.reverses);
    }
    query
}

/// Records in `records` (repeats included) whose point is in `refused`.
fn refused_of(records: &[PointRecord], refused: &HashSet<Uuid>) -> usize {
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
/// holds now ([`SUPERSEDED_REASON`]).
///
/// It first takes a shared lock on the job rows of `records` (held until the transaction ends). A
/// reversal is created under an exclusive lock on the original's row, so it either committed
/// before this lock was granted (and the read below sees it: under `REPEATABLE READ` a
/// transaction's snapshot is taken at its first plain read, which comes after the lock) or waits
/// for this transaction's commit before it reads the ledger. The `external_id` holders are read
/// with a shared lock too: a later job takes an id over only under an exclusive lock on its row,
/// after checking that the old point is not in the ledger.
async fn refusals(
    tx: &mut sqlx::MySqlConnection,
    records: &[&PointRecord],
) -> Result<HashMap<Uuid, &'static str>, sqlx::Error> {
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
        return Ok(refused);
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
    Ok(refused)
}

/// Records `records` as dead letters with `reason` in the write's transaction. The reason replaces
/// an earlier one (a redriven dead letter is refused now for this reason), and the dead letter
/// counts at once.
async fn refuse(
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

/// The ledger table, with its statements prepared once per shape.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: MySqlPool,
    max_rows: usize,
    /// `insert_sql[k]` inserts `2^k` rows; `select_sql[k]` looks up `2^k` accrual ids;
    /// `dead_letter_sql[k]` finds the jobs of `2^k` accrual ids that have dead letters.
    insert_sql: Arc<Vec<Arc<str>>>,
    select_sql: Arc<Vec<Arc<str>>>,
    dead_letter_sql: Arc<Vec<Arc<str>>>,
    /// Points a write of this process is writing now (see [`Claimed`]).
    in_flight: Arc<InFlight>,
}

/// The points the writes of this process are writing, and a signal sent each time a write lets
/// its points go.
#[derive(Debug)]
struct InFlight {
    points: std::sync::Mutex<HashSet<Uuid>>,
    released: tokio::sync::watch::Sender<u64>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            points: std::sync::Mutex::default(),
            released: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl InFlight {
    fn points(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.points
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The points of one write attempt, held until the attempt ends (committed, failed or
/// abandoned). Up to three batches are written at once, and a message delivered twice (its
/// visibility ran out while a write held it) can be in two of them: both would find its points
/// absent from the ledger (the look-up runs before the insert) and count them as written. So an
/// attempt waits until no other write of this process holds any of its points, then claims them
/// all at once (never holding some while waiting for others, so two attempts never wait for each
/// other). The second attempt then finds what the first committed, and counts it as duplicate;
/// or, if the first failed, writes the points itself: the message it deletes may be the only copy.
struct Claimed {
    in_flight: Arc<InFlight>,
    ids: Vec<Uuid>,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut points = self.in_flight.points();
        for id in &self.ids {
            points.remove(id);
        }
        drop(points);
        self.in_flight.released.send_modify(|n| *n += 1);
    }
}

impl Ledger {
    pub fn new(pool: MySqlPool, max_rows: usize) -> Self {
        let max_rows = max_rows.max(1);
        let shapes = max_rows.ilog2() as usize + 1;
        let insert_sql = (0..shapes)
            .map(|k| insert_sql("point_accruals", 1 << k).into())
            .collect();
        let select_sql = (0..shapes)
            .map(|k| {
                format!(
                    "SELECT accrual_id FROM point_accruals WHERE accrual_id IN ({})",
                    vec!["?"; 1 << k].join(",")
                )
                .into()
            })
            .collect();
        let dead_letter_sql = (0..shapes)
            .map(|k| {
                format!(
                    "SELECT DISTINCT job_id FROM accrual_dead_letters WHERE accrual_id IN ({})",
                    vec!["?"; 1 << k].join(",")
                )
                .into()
            })
            .collect();
        Self {
            pool,
            max_rows,
            insert_sql: Arc::new(insert_sql),
            select_sql: Arc::new(select_sql),
            dead_letter_sql: Arc::new(dead_letter_sql),
            in_flight: Arc::default(),
        }
    }

    /// Claims every point of `records` once no other write of this process holds any of them;
    /// `None` if `give_up_at` passes first.
    async fn claim(&self, records: &[PointRecord], give_up_at: Instant) -> Option<Claimed> {
        let ids: Vec<Uuid> = records
            .iter()
            .map(|r| r.accrual_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        loop {
            let mut released = {
                let mut points = self.in_flight.points();
                if !ids.iter().any(|id| points.contains(id)) {
                    points.extend(ids.iter().copied());
                    return Some(Claimed {
                        in_flight: self.in_flight.clone(),
                        ids,
                    });
                }
                // Subscribed under the lock: a release after it is seen as a change.
                self.in_flight.released.subscribe()
            };
            match tokio::time::timeout_at(give_up_at, released.changed()).await {
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The pool the ledger writes through.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Stores the points not yet in the ledger; counts the others as duplicates. `Ok(None)` when
    /// `give_up_at` passed first: the attempt is abandoned and its connection closed.
    ///
    /// The look-up of existing ids only serves the duplicate count: the unique key on
    /// `accrual_id` is what keeps a point from being stored twice, even when two listeners
    /// write the same point at the same moment.
    pub async fn write(
        &self,
        records: &[PointRecord],
        give_up_at: Instant,
    ) -> Result<Option<WriteOutcome>, sqlx::Error> {
        let Some(_claimed) = self.claim(records, give_up_at).await else {
            return Ok(None);
        };
        let Some((mut conn, session)) = self.connection_before(give_up_at).await? else {
            return Ok(None);
        };
        match tokio::time::timeout_at(give_up_at, self.write_on(&mut conn, records)).await {
            Ok(written) => written.map(Some),
            Err(_) => {
                self.give_up(conn, session).await;
                Ok(None)
            }
        }
    }

    /// A pooled connection and its session id, unless `give_up_at` passes first.
    async fn connection_before(
        &self,
        give_up_at: Instant,
    ) -> Result<Option<(PoolConnection<MySql>, u64)>, sqlx::Error> {
        if Instant::now() >= give_up_at {
            return Ok(None);
        }
        let Ok(conn) = tokio::time::timeout_at(give_up_at, self.pool.acquire()).await else {
            return Ok(None);
        };
        let mut conn = conn?;
        let id = tokio::time::timeout_at(
            give_up_at,
            sqlx::query_scalar::<_, u64>("SELECT CAST(CONNECTION_ID() AS UNSIGNED)")
                .fetch_one(&mut *conn),
        )
        .await;
        match id {
            Ok(id) => Ok(Some((conn, id?))),
            Err(_) => {
                drop(conn.detach());
                Ok(None)
            }
        }
    }

    /// Closes a connection whose attempt was abandoned mid-statement (it is never returned to
    /// the pool) and asks the server to end its session, with the statement and the locks it
    /// holds: closing the socket alone is noticed by the server only when it next writes to it.
    async fn give_up(&self, conn: PoolConnection<MySql>, session: u64) {
        drop(conn.detach());
        let kill = sqlx::query(AssertSqlSafe(format!("KILL {session}"))).execute(&self.pool);
        match tokio::time::timeout(KILL_TIMEOUT, kill).await {
            Ok(Ok(_)) => tracing::warn!(session, "Gave up a MySQL session at the hold cap"),
            Ok(Err(e)) => {
                tracing::warn!(session, error = %e, "Killing a MySQL session given up at the hold cap failed; its socket is closed")
            }
            Err(_) => {
                tracing::warn!(
                    session,
                    "Killing a MySQL session given up at the hold cap timed out; its socket is closed"
                )
            }
        }
    }

    async fn write_on(
        &self,
        conn: &mut MySqlConnection,
        records: &[PointRecord],
    ) -> Result<WriteOutcome, sqlx::Error> {
        let mut seen = HashSet::with_capacity(records.len());
        let unique: Vec<&PointRecord> = records
            .iter()
            .filter(|r| seen.insert(r.accrual_id))
            .collect();
        let existing = self.look_up(conn, &self.select_sql, &unique).await?;
        let mut fresh: Vec<&PointRecord> = unique
            .into_iter()
            .filter(|r| !existing.contains(&r.accrual_id))
            .collect();
        let mut refused = Vec::new();
        if !fresh.is_empty() {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let refusals = refusals(&mut tx, &fresh).await?;
            if !refusals.is_empty() {
                let (gone, kept): (Vec<&PointRecord>, Vec<&PointRecord>) = fresh
                    .into_iter()
                    .partition(|r| refusals.contains_key(&r.accrual_id));
                fresh = kept;
                for reason in [REVERSED_REASON, SUPERSEDED_REASON] {
                    let these: Vec<&PointRecord> = gone
                        .iter()
                        .copied()
                        .filter(|r| refusals.get(&r.accrual_id) == Some(&reason))
                        .collect();
                    if these.is_empty() {
                        continue;
                    }
                    refuse(&mut tx, &these, reason).await?;
                    refused.extend(these.iter().map(|r| (r.accrual_id, reason)));
                    tracing::warn!(points = these.len(), reason, "Refused points");
                }
            }
            let mut rest = &fresh[..];
            for size in statement_sizes(fresh.len(), self.max_rows) {
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let sql = self.insert_sql[size.ilog2() as usize].clone();
                insert_query(sql, chunk).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        let mut by_job: HashMap<Uuid, (u64, u64)> = HashMap::new();
        for r in records {
            by_job.entry(r.job_id).or_default().1 += 1;
        }
        for r in &fresh {
            let counts = by_job.entry(r.job_id).or_default();
            counts.0 += 1;
            counts.1 -= 1;
        }
        let refused_ids: HashSet<Uuid> = refused.iter().map(|(id, _)| *id).collect();
        for r in records
            .iter()
            .filter(|r| refused_ids.contains(&r.accrual_id))
        {
            // Neither written nor a duplicate: counted as a dead letter once it is sent.
            by_job.entry(r.job_id).or_default().1 -= 1;
        }
        let mut resettle = self.look_up(conn, &self.dead_letter_sql, &fresh).await?;
        // A finished job whose refused point had no dead letter yet now has one more.
        resettle.extend(
            records
                .iter()
                .filter(|r| refused_ids.contains(&r.accrual_id))
                .map(|r| r.job_id),
        );
        let duplicates = records.len() - fresh.len() - refused_of(records, &refused_ids);
        Ok(WriteOutcome {
            written: fresh.len(),
            duplicates,
            by_job,
            resettle,
            refused,
        })
    }

    /// Records that a point of a job went to the dead-letter queue, so the job can complete.
    pub async fn record_dead_letter(
        &self,
        ids: accrual_core::dead_letter::PointIds,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        accrual_core::dead_letter::record(&self.pool, ids, reason).await
    }

    /// Runs a look-up by accrual id (`shapes[k]` takes `2^k` ids) over `records`, in statements
    /// of power-of-two sizes; collects the ids it returns.
    async fn look_up(
        &self,
        conn: &mut MySqlConnection,
        shapes: &[Arc<str>],
        records: &[&PointRecord],
    ) -> Result<HashSet<Uuid>, sqlx::Error> {
        let mut found = HashSet::new();
        let mut rest = records;
        for size in statement_sizes(records.len(), self.max_rows) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let sql = shapes[size.ilog2() as usize].clone();
            let mut query = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(sql));
            for r in chunk {
                query = query.bind(r.accrual_id);
            }
            found.extend(query.fetch_all(&mut *conn).await?);
        }
        Ok(found)
    }

    /// Records dead letters ahead of time for points on their last receive: each counts only from
    /// `counts_in` after MySQL's `NOW(6)`, and never once its point is in the ledger. An existing
    /// dead letter stays. The instant is MySQL's, like the `NOW(6)` that settlement compares it
    /// with, so a listener whose clock is off neither counts its points early nor late.
    /// `Ok(None)` when `give_up_at` passed first (the attempt abandoned, as for [`Self::write`]).
    pub async fn record_dead_letters_ahead(
        &self,
        records: &[PointRecord],
        reason: &str,
        counts_in: std::time::Duration,
        give_up_at: Instant,
    ) -> Result<Option<()>, sqlx::Error> {
        let micros = u64::try_from(counts_in.as_micros()).unwrap_or(u64::MAX);
        let Some((mut conn, session)) = self.connection_before(give_up_at).await? else {
            return Ok(None);
        };
        let insert = async {
            let mut rest = records;
            for size in statement_sizes(records.len(), self.max_rows) {
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let rows = vec!["(?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND)"; size].join(",");
                let sql = format!(
                    "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason, counts_from) VALUES {rows} \
                     ON DUPLICATE KEY UPDATE accrual_id = accrual_id"
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for r in chunk {
                    query = query
                        .bind(r.accrual_id)
                        .bind(r.job_id)
                        .bind(reason)
                        .bind(micros);
                }
                query.execute(&mut *conn).await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        match tokio::time::timeout_at(give_up_at, insert).await {
            Ok(recorded) => recorded.map(Some),
            Err(_) => {
                self.give_up(conn, session).await;
                Ok(None)
            }
        }
    }

    /// Moves the `counts_from` of dead letters recorded ahead for these points to `counts_in`
    /// after MySQL's `NOW(6)` if that is later: their message is kept hidden that long. Dead
    /// letters that count at once (no `counts_from`) are left alone.
    pub async fn defer_dead_letters_ahead(
        &self,
        accrual_ids: &[Uuid],
        counts_in: std::time::Duration,
    ) -> Result<(), sqlx::Error> {
        let micros = u64::try_from(counts_in.as_micros()).unwrap_or(u64::MAX);
        let mut rest = accrual_ids;
        for size in statement_sizes(accrual_ids.len(), self.max_rows) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let sql = format!(
                "UPDATE accrual_dead_letters SET counts_from = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE counts_from < NOW(6) + INTERVAL ? MICROSECOND AND accrual_id IN ({})",
                vec!["?"; size].join(",")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(micros).bind(micros);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }
}
