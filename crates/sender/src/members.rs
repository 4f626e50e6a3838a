//! Members are upserted before any of their points is queued, in multi-row statements.

use std::collections::BTreeSet;

use accrual_core::accrual::Accrual;
use accrual_core::db::{ER_LOCK_DEADLOCK, error_number, placeholders, statement_sizes};
use chrono::Utc;
use sqlx::{AssertSqlSafe, MySqlPool};

/// Rows per upsert statement (2 placeholders each, far below MySQL's 65,535).
const UPSERT_ROWS: usize = 1_024;
const DEADLOCK_RETRIES: u32 = 3;

/// Upserts the distinct members of `accruals`; returns how many distinct members there were.
pub async fn upsert(pool: &MySqlPool, accruals: &[Accrual]) -> Result<usize, sqlx::Error> {
    upsert_distinct(pool, &distinct(accruals)).await
}

/// The distinct members of `accruals`, sorted.
pub fn distinct(accruals: &[Accrual]) -> Vec<String> {
    let distinct: BTreeSet<&str> = accruals.iter().map(|a| a.member_id.as_str()).collect();
    distinct.into_iter().map(str::to_owned).collect()
}

/// Upserts `members` (distinct, sorted); returns how many there were.
///
/// Members are written in sorted order so that concurrent requests with overlapping members take
/// their row locks in the same order, which keeps deadlocks rare; one that happens anyway is retried.
pub async fn upsert_distinct(pool: &MySqlPool, members: &[String]) -> Result<usize, sqlx::Error> {
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match upsert_once(pool, &members).await {
            Err(e) if error_number(&e) == Some(ER_LOCK_DEADLOCK) && attempt < DEADLOCK_RETRIES => {
                tracing::warn!(attempt, "Deadlock while upserting members; retrying");
            }
            other => return other.map(|()| members.len()),
        }
    }
}

async fn upsert_once(pool: &MySqlPool, members: &[&str]) -> Result<(), sqlx::Error> {
    let now = Utc::now().naive_utc();
    let mut tx = pool.begin().await?;
    let mut rest = members;
    for size in statement_sizes(members.len(), UPSERT_ROWS) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO members (member_id, created_at) VALUES {} ON DUPLICATE KEY UPDATE member_id = member_id",
            placeholders(size, 2)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for member in chunk {
            query = query.bind(*member).bind(now);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}
