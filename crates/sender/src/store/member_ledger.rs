//! A member's ledger and balance, as one client sees them, and the reserved amounts stored at
//! acceptance so that a balance can count points still waiting in a reserved job's chunks.
//!
//! Each query has two forms ([`ByClient`]):
//! - [`ByClient::Index`], once the ledger's `client_id` is backfilled and indexed: the client's
//!   rows of the member are a range of `ix_point_accruals_client_member` `(client_id, member_id,
//!   id)`; the ledger page reads it backward from the cursor's `id` (newest written first, no
//!   sort), the balance reads all of it. Another client's rows of the same member are not read.
//! - [`ByClient::Join`], before that: the member's rows are read through
//!   `ix_point_accruals_member_id`, which InnoDB extends with the primary key to `(member_id,
//!   id)`, and each row's client is its job's, found by `accrual_jobs`' primary key (`eq_ref`):
//!   every client's rows of the member are read, and the others' dropped.
//!
//! The index is named (`FORCE INDEX`, `STRAIGHT_JOIN`) so a plan change cannot turn a member's
//! query into a scan of the ledger (see docs/performance.md).

use std::collections::BTreeMap;

use accrual_core::accrual::Accrual;
use accrual_core::db::{placeholders, statement_sizes};
use accrual_core::ledger_clients::CLIENT_INDEX;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{AssertSqlSafe, MySqlConnection, MySqlPool};
use uuid::Uuid;

pub use crate::store::client_index::ByClient;

/// Rows per insert of reserved amounts (4 placeholders each).
const RESERVED_ROWS: usize = 1_024;

/// The summed amount of one member's points of one type in one reserved job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedAmount {
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
}

/// Sums a reserved job's validated items per (member, point type), in that order (so that two
/// jobs insert in one key order).
pub fn reserved_amounts(accruals: &[Accrual]) -> Vec<ReservedAmount> {
    let mut sums: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for a in accruals {
        *sums
            .entry((a.member_id.as_str(), a.point_type.as_str()))
            .or_default() += a.amount.get();
    }
    sums.into_iter()
        .map(|((member_id, point_type), amount)| ReservedAmount {
            member_id: member_id.to_owned(),
            point_type: point_type.to_owned(),
            amount,
        })
        .collect()
}

/// Stores a reserved job's amounts, inside the transaction that stores the job.
pub async fn insert_reserved(
    conn: &mut MySqlConnection,
    job_id: Uuid,
    amounts: &[ReservedAmount],
) -> Result<(), sqlx::Error> {
    let mut rest = amounts;
    for size in statement_sizes(amounts.len(), RESERVED_ROWS) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO accrual_reserved_amounts (job_id, member_id, point_type, amount) VALUES {}",
            placeholders(size, 4)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            query = query
                .bind(job_id)
                .bind(r.member_id.as_str())
                .bind(r.point_type.as_str())
                .bind(r.amount);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One row of a member's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The ledger's own row id: the order rows were written in, and the cursor's position.
    pub id: u64,
    pub accrual_id: Uuid,
    pub job_id: Uuid,
    pub point_type: String,
    pub amount: i64,
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub external_id: Option<String>,
    pub reverses: Option<Uuid>,
    pub accepted_at: DateTime<Utc>,
    pub written_at: DateTime<Utc>,
}

type LedgerTuple = (
    u64,
    Uuid,
    Uuid,
    String,
    i64,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<Uuid>,
    DateTime<Utc>,
    DateTime<Utc>,
);

impl From<LedgerTuple> for LedgerRow {
    fn from(t: LedgerTuple) -> Self {
        Self {
            id: t.0,
            accrual_id: t.1,
            job_id: t.2,
            point_type: t.3,
            amount: t.4,
            reason: t.5,
            expires_at: t.6,
            external_id: t.7,
            reverses: t.8,
            accepted_at: t.9,
            written_at: t.10,
        }
    }
}

/// The columns of a ledger row, as [`LedgerTuple`] reads them.
const LEDGER_COLUMNS: &str = "p.id, p.accrual_id, p.job_id, p.point_type, p.amount, p.reason, \
     p.expires_at, p.external_id, p.reverses, p.accepted_at, p.created_at";

/// The ledger page's `SELECT`. Binds, in order: member, client, the point type (if filtered), the
/// cursor's id (if any), the limit.
pub fn ledger_sql(by: ByClient, point_type: bool, after: bool) -> String {
    let mut sql = match by {
        ByClient::Index => format!(
            "SELECT {LEDGER_COLUMNS} FROM point_accruals p FORCE INDEX ({CLIENT_INDEX}) \
             WHERE p.member_id = ? AND p.client_id = ?"
        ),
        ByClient::Join => format!(
            "SELECT STRAIGHT_JOIN {LEDGER_COLUMNS} \
             FROM point_accruals p FORCE INDEX (ix_point_accruals_member_id) \
             JOIN accrual_jobs j ON j.job_id = p.job_id \
             WHERE p.member_id = ? AND j.client_id = ?"
        ),
    };
    if point_type {
        sql.push_str(" AND p.point_type = ?");
    }
    if after {
        sql.push_str(" AND p.id < ?");
    }
    sql.push_str(" ORDER BY p.id DESC LIMIT ?");
    sql
}

/// The ledger part of a balance. Binds: `as_of`, member, client.
///
/// Credits are the positive rows, reversals the negative ones (a reversal row keeps its
/// original's `expires_at`, so an expired credit that was reversed nets to nothing expired).
pub fn balance_sql(by: ByClient) -> String {
    let sums = "p.point_type, \
       CAST(SUM(CASE WHEN p.amount > 0 THEN p.amount ELSE 0 END) AS SIGNED), \
       CAST(SUM(CASE WHEN p.amount < 0 THEN -p.amount ELSE 0 END) AS SIGNED), \
       CAST(SUM(CASE WHEN p.expires_at <= ? THEN p.amount ELSE 0 END) AS SIGNED)";
    match by {
        ByClient::Index => format!(
            "SELECT {sums} FROM point_accruals p FORCE INDEX ({CLIENT_INDEX}) \
             WHERE p.member_id = ? AND p.client_id = ? GROUP BY p.point_type"
        ),
        ByClient::Join => format!(
            "SELECT STRAIGHT_JOIN {sums} \
             FROM point_accruals p FORCE INDEX (ix_point_accruals_member_id) \
             JOIN accrual_jobs j ON j.job_id = p.job_id \
             WHERE p.member_id = ? AND j.client_id = ? GROUP BY p.point_type"
        ),
    }
}

/// The reserved part of a balance: the client's jobs still `reserved`. Binds: member, client.
/// It reads `accrual_reserved_amounts`, not the ledger, and only rows of jobs still reserved
/// (the retention task deletes the others), so it needs no client index.
pub const RESERVED_SQL: &str = "SELECT STRAIGHT_JOIN r.point_type, CAST(SUM(r.amount) AS SIGNED) \
     FROM accrual_reserved_amounts r FORCE INDEX (ix_accrual_reserved_amounts_member) \
     JOIN accrual_jobs j ON j.job_id = r.job_id \
     WHERE r.member_id = ? AND j.client_id = ? AND j.status = 'reserved' \
     GROUP BY r.point_type";

/// Up to `limit` of the member's rows in the client's jobs, newest written first, optionally of
/// one point type, after (older than) the row `before_id`.
pub async fn page(
    pool: &MySqlPool,
    by: ByClient,
    client_id: &str,
    member_id: &str,
    point_type: Option<&str>,
    before_id: Option<u64>,
    limit: u32,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    let sql = ledger_sql(by, point_type.is_some(), before_id.is_some());
    let mut query = sqlx::query_as::<_, LedgerTuple>(AssertSqlSafe(sql))
        .bind(member_id)
        .bind(client_id);
    if let Some(point_type) = point_type {
        query = query.bind(point_type);
    }
    if let Some(id) = before_id {
        query = query.bind(id);
    }
    let rows = query.bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(LedgerRow::from).collect())
}

/// One point type of a member's balance.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PointTypeBalance {
    pub point_type: String,
    /// Sum of the credits in the ledger (positive rows).
    pub credited: i64,
    /// Sum taken back by reversals (the negative rows, as a positive number).
    pub reversed: i64,
    /// Net amount (credits less their reversals) whose `expires_at` is at or before `as_of`.
    pub expired: i64,
    /// What the member can use: `credited - reversed - expired`.
    pub active: i64,
    /// Points in the client's reserved jobs not yet released (not in the ledger yet).
    pub reserved: i64,
}

/// The member's balance in the client's jobs at `as_of`, one entry per point type, sorted.
pub async fn balance(
    pool: &MySqlPool,
    by: ByClient,
    client_id: &str,
    member_id: &str,
    as_of: DateTime<Utc>,
) -> Result<Vec<PointTypeBalance>, sqlx::Error> {
    let as_of: NaiveDateTime = as_of.naive_utc();
    let ledger: Vec<(String, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(balance_sql(by)))
        .bind(as_of)
        .bind(member_id)
        .bind(client_id)
        .fetch_all(pool)
        .await?;
    let reserved: Vec<(String, i64)> = sqlx::query_as(RESERVED_SQL)
        .bind(member_id)
        .bind(client_id)
        .fetch_all(pool)
        .await?;
    Ok(combine(ledger, reserved))
}

/// Merges the ledger sums and the reserved sums per point type.
fn combine(
    ledger: Vec<(String, i64, i64, i64)>,
    reserved: Vec<(String, i64)>,
) -> Vec<PointTypeBalance> {
    let mut by_type: BTreeMap<String, PointTypeBalance> = BTreeMap::new();
    for (point_type, credited, reversed, expired) in ledger {
        let entry = by_type.entry(point_type.clone()).or_default();
        entry.point_type = point_type;
        entry.credited = credited;
        entry.reversed = reversed;
        entry.expired = expired;
        entry.active = credited - reversed - expired;
    }
    for (point_type, amount) in reserved {
        let entry = by_type.entry(point_type.clone()).or_default();
        entry.point_type = point_type;
        entry.reserved = amount;
    }
    by_type.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accrual(member: &str, point_type: &str, amount: i64) -> Accrual {
        Accrual {
            member_id: member.try_into().expect("member"),
            point_type: point_type.try_into().expect("point type"),
            amount: amount.try_into().expect("amount"),
            reason: None,
            expires_at: None,
            external_id: None,
        }
    }

    #[test]
    fn reserved_amounts_sum_per_member_and_point_type_in_key_order() {
        let items = [
            accrual("b", "P", 5),
            accrual("a", "Q", 1),
            accrual("b", "P", 7),
            accrual("a", "P", 2),
            accrual("b", "Q", 3),
        ];
        let sums: Vec<(String, String, i64)> = reserved_amounts(&items)
            .into_iter()
            .map(|r| (r.member_id, r.point_type, r.amount))
            .collect();
        let expected = [("a", "P", 2), ("a", "Q", 1), ("b", "P", 12), ("b", "Q", 3)];
        let expected: Vec<(String, String, i64)> = expected
            .iter()
            .map(|(m, t, n)| ((*m).to_owned(), (*t).to_owned(), *n))
            .collect();
        assert_eq!(sums, expected);
    }

    #[test]
    fn a_balance_merges_ledger_and_reserved_sums_per_point_type() {
        let merged = combine(
            vec![("B".into(), 100, 30, 20), ("A".into(), 10, 0, 0)],
            vec![("C".into(), 7), ("B".into(), 5)],
        );
        let shown: Vec<(&str, i64, i64, i64, i64, i64)> = merged
            .iter()
            .map(|b| {
                (
                    b.point_type.as_str(),
                    b.credited,
                    b.reversed,
                    b.expired,
                    b.active,
                    b.reserved,
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("A", 10, 0, 0, 10, 0),
                ("B", 100, 30, 20, 50, 5),
                ("C", 0, 0, 0, 0, 7),
            ]
        );
    }
}
