//! A client's jobs, a page at a time, newest first (`GET /v1/jobs`), and the plan MariaDB makes
//! for such a page (a test checks each filter reads its index).

use accrual_core::job_status::JobStatus;
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::{JOB_COLUMNS, JobRow};

/// Which of a client's jobs `GET /v1/jobs` lists (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Exact match (`utf8mb4_bin`).
    pub label: Option<String>,
    /// Created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_to: Option<DateTime<Utc>>,
}

/// A place in a job list: a page starts with the job just after (older than) this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPosition {
    pub created_at: DateTime<Utc>,
    pub job_id: Uuid,
}

/// The `SELECT` of [`list`] and [`list_plan`], with the order its placeholders are bound in.
///
/// Each filter is an equality or range on the index that serves it, so a page reads about
/// `limit` index entries however many jobs the client has: `ix_accrual_jobs_client_label`
/// (client_id, label, created_at, job_id) with a label, `ix_accrual_jobs_client_status` with a
/// status, `ix_accrual_jobs_client_created` otherwise, each read backwards, with no sort. The index
/// is named (`FORCE INDEX`): left to itself, MariaDB 10.11 was seen to read a status and label
/// filter from a cursor as `ref` on (client_id, status), from the client's newest job of that
/// status on, so each page cost more than the one before. With both filters the label's index
/// is read: a campaign is a few jobs, a status most of them. The position is written as
/// `created_at < ? OR (created_at = ? AND job_id < ?)` rather than the row comparison
/// `(created_at, job_id) < (?, ?)`, which MariaDB does not turn into an index range at all.
fn list_sql(filter: &JobFilter, after: Option<&ListPosition>) -> String {
    let index = if filter.label.is_some() {
        "ix_accrual_jobs_client_label"
    } else if filter.status.is_some() {
        "ix_accrual_jobs_client_status"
    } else {
        "ix_accrual_jobs_client_created"
    };
    let mut sql = format!(
        "SELECT {} FROM accrual_jobs FORCE INDEX ({index}) WHERE client_id = ?",
        *JOB_COLUMNS
    );
    if filter.status.is_some() {
        sql.push_str(" AND status = ?");
    }
    if filter.label.is_some() {
        sql.push_str(" AND label = ?");
    }
    if filter.created_from.is_some() {
        sql.push_str(" AND created_at >= ?");
    }
    if filter.created_to.is_some() {
        sql.push_str(" AND created_at < ?");
    }
    if after.is_some() {
        sql.push_str(" AND (created_at < ? OR (created_at = ? AND job_id < ?))");
    }
    sql.push_str(" ORDER BY created_at DESC, job_id DESC LIMIT ?");
    sql
}

/// Binds what [`list_sql`] asks for, in its order. Instants are bound as `NaiveDateTime` (UTC):
/// sqlx binds a `DateTime<Utc>` as `TIMESTAMP`, which MariaDB compares wrongly after 2038.
fn bind_list<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments>,
    client_id: &'q str,
    filter: &'q JobFilter,
    after: Option<&ListPosition>,
    limit: u32,
) -> sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments> {
    query = query.bind(client_id);
    if let Some(status) = filter.status {
        query = query.bind(status);
    }
    if let Some(label) = &filter.label {
        query = query.bind(label.as_str());
    }
    if let Some(from) = filter.created_from {
        query = query.bind(from.naive_utc());
    }
    if let Some(to) = filter.created_to {
        query = query.bind(to.naive_utc());
    }
    if let Some(after) = after {
        let at = after.created_at.naive_utc();
        query = query.bind(at).bind(at).bind(after.job_id);
    }
    query.bind(limit)
}

/// Up to `limit` of the client's jobs that match `filter`, newest first (`created_at`, then
/// `job_id`, both descending), starting after `after`.
pub async fn list(
    pool: &MySqlPool,
    client_id: &str,
    filter: &JobFilter,
    after: Option<&ListPosition>,
    limit: u32,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let sql = list_sql(filter, after);
    let query = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql));
    bind_list(query, client_id, filter, after, limit)
        .fetch_all(pool)
        .await
}

/// How MySQL would read that page (`EXPLAIN`): the index it uses, how, and its `Extra` notes, for
/// a test to check that each filter is served by a list index, from the cursor on, with no sort.
pub async fn list_plan(
    pool: &MySqlPool,
    client_id: &str,
    filter: &JobFilter,
    after: Option<&ListPosition>,
    limit: u32,
) -> Result<Vec<PlanRow>, sqlx::Error> {
    let sql = format!("EXPLAIN {}", list_sql(filter, after));
    let query = sqlx::query_as::<_, PlanRow>(sqlx::AssertSqlSafe(sql));
    bind_list(query, client_id, filter, after, limit)
        .fetch_all(pool)
        .await
}

/// One row of an `EXPLAIN`.
#[derive(Debug, Clone)]
pub struct PlanRow {
    /// The index read, if any.
    pub key: Option<String>,
    /// How it is read (`type`): `range` when the read starts at a cursor or an instant, `ref`
    /// when only equalities bound it.
    pub access: String,
    /// Notes such as `Using where` or `Using filesort`.
    pub extra: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow> for PlanRow {
    fn from_row(row: &'r sqlx::mysql::MySqlRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        // Read as bytes: servers differ on whether EXPLAIN's text columns are binary strings.
        let text = |column: &str| -> Result<Option<String>, sqlx::Error> {
            let bytes: Option<Vec<u8>> = row.try_get_unchecked(column)?;
            Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        Ok(Self {
            key: text("key")?,
            access: text("type")?.unwrap_or_default(),
            extra: text("Extra")?.unwrap_or_default(),
        })
    }
}
