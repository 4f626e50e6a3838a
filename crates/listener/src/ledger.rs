//! Writes points to `point_accruals`: one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per statement
//! size, all of a batch in one transaction.
//!
//! A write (and a record-ahead) runs on one connection of its own until a deadline, the hold cap
//! of its messages. If the deadline passes first, the attempt is dropped, the connection taken out
//! of the pool and closed, and the server asked to `KILL` that session (best effort: the server
//! may be the reason it is stuck), so no statement or lock of it outlives the messages' hold.
//!
//! Every row gets its job's `client_id`, taken from the job rows the write transaction reads under
//! a shared lock anyway (for the refusals below), so it costs no extra statement.
//!
//! Two kinds of points are refused, dead-lettered in the write's own transaction: those of a
//! reversed job and those whose `external_id` a later job holds now ([`refusals`]). Dead letters
//! of points that are not written (recorded ahead on a last receive, or after SQS refused a point)
//! are in [`dead_letters`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use accrual_core::db::{placeholders, statement_sizes};
use accrual_core::domain::{ExternalId, Reason};
use accrual_core::message::PointRecord;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, MySqlPool};
use tokio::time::Instant;
use uuid::Uuid;

use in_flight::InFlight;
pub use refusals::{REVERSED_REASON, SUPERSEDED_REASON};
use refusals::{refusals, refuse, refused_of};

mod dead_letters;
mod in_flight;
mod refusals;

/// Longest wait for the server to take a `KILL` of a session given up at the hold cap.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const INSERT_COLUMNS: usize = 11;

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

/// The SQL of a multi-row insert of `rows` points into `table`, each row the eleven columns that
/// [`insert_query`] binds; an existing `accrual_id` is left as it is.
pub fn insert_sql(table: &str, rows: usize) -> String {
    format!(
        "INSERT INTO {table} \
         (accrual_id, job_id, member_id, point_type, amount, reason, expires_at, accepted_at, \
          external_id, reverses, client_id) \
         VALUES {} ON DUPLICATE KEY UPDATE accrual_id = accrual_id",
        placeholders(rows, INSERT_COLUMNS)
    )
}

/// Binds the points to an insert made by [`insert_sql`] for exactly `records.len()` rows; each
/// row's `client_id` is its job's in `clients` (the job rows the write read under a shared lock).
pub fn insert_query<'q>(
    sql: Arc<str>,
    records: &[&'q PointRecord],
    clients: &'q HashMap<Uuid, String>,
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
            .bind(r.reverses)
            .bind(clients.get(&r.job_id).map(String::as_str));
    }
    query
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
        let Some(_claimed) = self.in_flight.claim(records, give_up_at).await else {
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
            let (refusals, clients) = refusals(&mut tx, &fresh).await?;
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
                insert_query(sql, chunk, &clients).execute(&mut *tx).await?;
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
}
