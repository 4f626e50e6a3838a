//! The generated ledger: its tables emptied and filled by SQL from MariaDB's SEQUENCE engine, the
//! secondary indexes dropped for the load and added back after, and the client-id backfill.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{AssertSqlSafe, MySqlPool};

use crate::Args;

pub(crate) const ROWS_PER_STATEMENT: u64 = 1_000_000;
const ROWS_PER_JOB: u64 = 1_000;
const RESERVED_JOBS: u64 = 200;
pub(crate) const POINT_TYPES: [&str; 4] = ["WELFARE", "BONUS", "CASHBACK", "MILES"];

/// The ledger's secondary indexes, exactly as migrations 0001 and 0005 define them.
const INDEXES: &str = "ADD UNIQUE KEY uq_point_accruals_accrual_id (accrual_id), \
     ADD KEY ix_point_accruals_job_id (job_id), \
     ADD KEY ix_point_accruals_member_id (member_id), \
     ADD UNIQUE KEY uq_point_accruals_reverses (reverses)";

/// Empties the bench database's tables and builds the ledger, its jobs and reserved amounts.
pub(crate) async fn build(pool: &MySqlPool, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for table in ["point_accruals", "accrual_jobs", "accrual_reserved_amounts"] {
        exec(pool, &format!("TRUNCATE TABLE {table}")).await?;
    }
    // Drop the secondary indexes for the load (any of them may be missing after a build cut
    // short).
    for key in [
        "uq_point_accruals_accrual_id",
        "ix_point_accruals_job_id",
        "ix_point_accruals_member_id",
        "uq_point_accruals_reverses",
    ] {
        let _ = exec(pool, &format!("ALTER TABLE point_accruals DROP KEY {key}")).await;
    }
    let reversed = args.rows / 100;
    let credits = args.rows - reversed;
    let jobs = credits.div_ceil(ROWS_PER_JOB);
    let reversal_jobs = reversed.div_ceil(ROWS_PER_JOB);
    // Jobs: `job{k}` (credits), `rjob{k}` reverses `job{k}`, `res{k}` reserved. The hash that
    // spreads a member's rows over jobs is a bijection mod `members` (an odd multiplier not
    // divisible by 5, for a power-of-ten member count).
    exec(
        pool,
        &format!(
            "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, completed_at, written, dead_lettered) \
             SELECT UNHEX(MD5(CONCAT('job', seq))), CONCAT('client_', seq % {c}), UNHEX(SHA2('', 256)), {ROWS_PER_JOB}, {ROWS_PER_JOB}, \
               'completed', TIMESTAMP'2026-01-01 00:00:00' + INTERVAL seq MINUTE, TIMESTAMP'2026-01-01 00:00:00' + INTERVAL seq MINUTE, {ROWS_PER_JOB}, 0 \
             FROM seq_0_to_{last}",
            c = args.clients,
            last = jobs - 1
        ),
    )
    .await?;
    exec(
        pool,
        &format!(
            "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, completed_at, written, dead_lettered, reverses) \
             SELECT UNHEX(MD5(CONCAT('rjob', seq))), CONCAT('client_', seq % {c}), UNHEX(SHA2('', 256)), {ROWS_PER_JOB}, {ROWS_PER_JOB}, \
               'completed', NOW(6), NOW(6), {ROWS_PER_JOB}, 0, UNHEX(MD5(CONCAT('job', seq))) \
             FROM seq_0_to_{last}",
            c = args.clients,
            last = reversal_jobs - 1
        ),
    )
    .await?;
    // Row `o` (1-based): job (o-1) div 1000, member (o * 435761) mod members; reversal rows
    // repeat their original's member, type and expiry with the negative amount.
    let columns = |o: &str| {
        format!(
            "CONCAT('m', ({o} * 435761) % {members}) AS m, \
             ELT(1 + ({o} * 3) % 4, 'WELFARE', 'BONUS', 'CASHBACK', 'MILES') AS t, \
             1 + ({o} * 13) % 1000 AS a, 'bench' AS r, \
             CASE WHEN {o} % 10 = 0 THEN NOW(6) - INTERVAL 1 + {o} % 300 DAY \
                  WHEN {o} % 10 < 5 THEN NOW(6) + INTERVAL 1 + {o} % 300 DAY ELSE NULL END AS e, \
             IF({o} % 2 = 0, CONCAT('ext-', {o}), NULL) AS x, \
             TIMESTAMP'2026-01-01 00:00:00' + INTERVAL ({o} - 1) DIV {ROWS_PER_JOB} MINUTE AS acc",
            members = args.members
        )
    };
    let mut from = 1;
    while from <= args.rows {
        let to = from + ROWS_PER_STATEMENT - 1;
        let step = Instant::now();
        // Rows up to `credits` are credits; the rest reverse rows 1..=reversed.
        let o = format!("IF(seq <= {credits}, seq, seq - {credits})");
        let cols = columns(&o);
        exec(
            pool,
            &format!(
                "INSERT INTO point_accruals (id, accrual_id, job_id, member_id, point_type, amount, reason, expires_at, external_id, accepted_at, created_at, reverses) \
                 SELECT seq, UNHEX(MD5(CONCAT('a', seq))), \
                   IF(seq <= {credits}, UNHEX(MD5(CONCAT('job', (seq - 1) DIV {ROWS_PER_JOB}))), UNHEX(MD5(CONCAT('rjob', ({o} - 1) DIV {ROWS_PER_JOB})))), \
                   m, t, IF(seq <= {credits}, a, -a), r, e, IF(seq <= {credits}, x, NULL), acc, acc + INTERVAL 1 SECOND, \
                   IF(seq <= {credits}, NULL, UNHEX(MD5(CONCAT('a', {o})))) \
                 FROM (SELECT seq, {cols} FROM seq_{from}_to_{to}) AS g"
            ),
        )
        .await?;
        eprintln!("rows {from}..={to} in {:.1}s", step.elapsed().as_secs_f64());
        from = to + 1;
    }
    let step = Instant::now();
    exec(pool, &format!("ALTER TABLE point_accruals {INDEXES}")).await?;
    eprintln!("indexes in {:.1}s", step.elapsed().as_secs_f64());
    // Reserved jobs: `res{k}` for client k mod clients, 1,000 members each, two point types.
    exec(
        pool,
        &format!(
            "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, reserve_at, created_at) \
             SELECT UNHEX(MD5(CONCAT('res', seq))), CONCAT('client_', seq % {c}), UNHEX(SHA2('', 256)), 2000, 1000, \
               'reserved', NOW(6) + INTERVAL 1 DAY, NOW(6) FROM seq_0_to_{last}",
            c = args.clients,
            last = RESERVED_JOBS - 1
        ),
    )
    .await?;
    exec(
        pool,
        &format!(
            "INSERT INTO accrual_reserved_amounts (job_id, member_id, point_type, amount) \
             SELECT UNHEX(MD5(CONCAT('res', j.seq))), CONCAT('m', (j.seq * 7919 + m.seq * 435761) % {members}), t.t, 100 + m.seq \
             FROM seq_0_to_{last_job} j JOIN seq_0_to_999 m JOIN (SELECT 'WELFARE' AS t UNION ALL SELECT 'BONUS') t",
            members = args.members,
            last_job = RESERVED_JOBS - 1
        ),
    )
    .await?;
    exec(
        pool,
        "ANALYZE TABLE point_accruals, accrual_jobs, accrual_reserved_amounts",
    )
    .await?;
    let took = started.elapsed();
    eprintln!("built in {:.0}s", took.as_secs_f64());
    Ok(took)
}

/// Fills `client_id` and builds the client index unless it exists, as `accrualctl backfill
/// ledger-client-ids` does: what it did, timed.
pub(crate) async fn backfill(pool: &MySqlPool) -> anyhow::Result<serde_json::Value> {
    use accrual_core::ledger_clients;
    if ledger_clients::client_index_exists(pool).await? {
        eprintln!("the client index exists; not backfilling");
        return Ok(serde_json::Value::Null);
    }
    let done =
        ledger_clients::backfill(pool, 0, ledger_clients::DEFAULT_BATCH_ROWS, |_| {}).await?;
    let at = Instant::now();
    ledger_clients::create_index(pool).await?;
    let index_secs = at.elapsed().as_secs_f64();
    println!(
        "backfill: {} rows in {} batches, {:.1} s ({:.0} rows/s), slowest batch {} ms; index {index_secs:.1} s",
        done.updated,
        done.batches,
        done.elapsed_ms as f64 / 1_000.0,
        done.updated as f64 * 1_000.0 / done.elapsed_ms.max(1) as f64,
        done.longest_batch_ms
    );
    let mut out = serde_json::to_value(done)?;
    out["index_secs"] = index_secs.into();
    Ok(out)
}

async fn exec(pool: &MySqlPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .with_context(|| sql.chars().take(200).collect::<String>())?;
    Ok(())
}

/// A small reproducible generator (xorshift64).
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
