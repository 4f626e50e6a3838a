//! MySQL connections, database creation and the embedded migrations.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::settings::DatabaseSettings;

/// MySQL allows at most 65,535 placeholders in one prepared statement.
pub const MAX_PLACEHOLDERS: usize = 65_535;

/// The schema, in order. Each runs once; its number is recorded in `schema_migrations`.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "job_outcome",
        include_str!("../migrations/0002_job_outcome.sql"),
    ),
    (
        3,
        "job_results",
        include_str!("../migrations/0003_job_results.sql"),
    ),
    (
        4,
        "external_ids",
        include_str!("../migrations/0004_external_ids.sql"),
    ),
    (
        5,
        "reversals",
        include_str!("../migrations/0005_reversals.sql"),
    ),
    (
        6,
        "webhooks",
        include_str!("../migrations/0006_webhooks.sql"),
    ),
    (
        7,
        "member_ledger",
        include_str!("../migrations/0007_member_ledger.sql"),
    ),
    (
        8,
        "reconciler",
        include_str!("../migrations/0008_reconciler.sql"),
    ),
    (
        9,
        "webhook_fairness",
        include_str!("../migrations/0009_webhook_fairness.sql"),
    ),
    (
        10,
        "ledger_client_id",
        include_str!("../migrations/0010_ledger_client_id.sql"),
    ),
    (
        11,
        "fair_dispatch",
        include_str!("../migrations/0011_fair_dispatch.sql"),
    ),
    (
        12,
        "dispatch_horizon",
        include_str!("../migrations/0012_dispatch_horizon.sql"),
    ),
];

/// MySQL error: the column exists already (an `ADD COLUMN` run a second time).
const ER_DUP_FIELDNAME: u16 = 1060;
/// MySQL error: the index exists already (an `ADD KEY` run a second time).
const ER_DUP_KEYNAME: u16 = 1061;

/// Named lock that keeps two `init` runs from migrating at once.
const MIGRATION_LOCK: &str = "accrual_schema_migrations";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid MySQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("DATABASE_URL names no database (expected mysql://user@host:port/database)")]
    NoDatabase,
    #[error("database name `{0}` may only contain letters, digits and '_'")]
    BadDatabaseName(String),
    #[error("could not connect to MySQL")]
    Connect(#[source] sqlx::Error),
    #[error("migration {version} ({name}) failed")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
}

fn options(url: &str) -> Result<MySqlConnectOptions, DbError> {
    MySqlConnectOptions::from_str(url).map_err(DbError::BadUrl)
}

/// MySQL/MariaDB error: unknown system variable (`max_statement_time` on MySQL).
pub(crate) const ER_UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// Opens a pool on the database `settings` names. Waiting for a connection is bounded by
/// `DATABASE_ACQUIRE_TIMEOUT`, and every connection gets `DATABASE_STATEMENT_TIMEOUT` as its
/// statement and lock-wait limits, so no caller waits on MySQL forever.
pub async fn connect(settings: &DatabaseSettings) -> Result<MySqlPool, DbError> {
    let secs = settings.database_statement_timeout.as_secs().max(1);
    let idle_secs = settings.database_idle_transaction_timeout.as_secs().max(1);
    MySqlPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.database_acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                set_statement_timeout(conn, secs).await?;
                set_idle_transaction_timeout(conn, idle_secs).await?;
                Ok(())
            })
        })
        .connect_with(options(&settings.database_url)?)
        .await
        .map_err(DbError::Connect)
}

/// Limits how long a statement may run and wait for locks on this connection. MariaDB's
/// `max_statement_time` covers every statement; MySQL's `max_execution_time` only reads. The lock
/// waits (row locks, and metadata locks such as `LOCK TABLES`, whose default is a year) are set
/// on both.
async fn set_statement_timeout(
    conn: &mut sqlx::MySqlConnection,
    secs: u64,
) -> Result<(), sqlx::Error> {
    let locks =
        format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}");
    conn.execute(AssertSqlSafe(locks)).await?;
    let mariadb = format!("SET SESSION max_statement_time = {secs}");
    match conn.execute(AssertSqlSafe(mariadb)).await {
        Err(e) if error_number(&e) == Some(ER_UNKNOWN_SYSTEM_VARIABLE) => {
            let mysql = format!("SET SESSION max_execution_time = {}", secs * 1_000);
            conn.execute(AssertSqlSafe(mysql)).await?;
        }
        other => {
            other?;
        }
    }
    Ok(())
}

/// Ends this connection's session when a transaction sits idle for `secs`, rolling it back: a
/// transaction left open by a client that died (its connection still open) would otherwise keep
/// its row locks for `wait_timeout`, 8 hours by default, and a job row locked that long stops its
/// settlement. MariaDB has `idle_transaction_timeout`; MySQL 8 has none, so there the session's
/// `wait_timeout` (idle with or without a transaction) gets the limit, and the pool replaces a
/// connection the server closed (it checks each one before handing it out).
async fn set_idle_transaction_timeout(
    conn: &mut sqlx::MySqlConnection,
    secs: u64,
) -> Result<(), sqlx::Error> {
    let mariadb = format!("SET SESSION idle_transaction_timeout = {secs}");
    match conn.execute(AssertSqlSafe(mariadb)).await {
        Err(e) if error_number(&e) == Some(ER_UNKNOWN_SYSTEM_VARIABLE) => {
            let mysql = format!("SET SESSION wait_timeout = {secs}");
            conn.execute(AssertSqlSafe(mysql)).await?;
        }
        other => {
            other?;
        }
    }
    Ok(())
}

/// Creates the database named in `url` if it does not exist (utf8mb4, for `reason`).
pub async fn create_database_if_absent(url: &str) -> Result<(), DbError> {
    let name = database_name(url)?;
    let mut server_url =
        url::Url::parse(url).map_err(|e| DbError::BadUrl(sqlx::Error::Configuration(e.into())))?;
    server_url.set_path("/");
    let mut conn = sqlx::MySqlConnection::connect_with(&options(server_url.as_str())?)
        .await
        .map_err(DbError::Connect)?;
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    );
    conn.execute(AssertSqlSafe(sql)).await?;
    conn.close().await?;
    Ok(())
}

/// The database name in a MySQL URL, checked so it can be quoted into DDL safely.
pub fn database_name(url: &str) -> Result<String, DbError> {
    let name = options(url)?
        .get_database()
        .ok_or(DbError::NoDatabase)?
        .to_owned();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(DbError::BadDatabaseName(name));
    }
    Ok(name)
}

/// Applies the migrations not yet applied. Safe to run concurrently and repeatedly.
pub async fn migrate(pool: &MySqlPool) -> Result<Vec<u32>, DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT GET_LOCK(?, 60)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = apply_pending(&mut conn).await;
    sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    result
}

async fn apply_pending(conn: &mut sqlx::MySqlConnection) -> Result<Vec<u32>, DbError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            name VARCHAR(64) NOT NULL,
            applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    )
    .await?;
    let applied: Vec<u32> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let mut newly = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        // DDL is not transactional in MySQL, so a migration cut short must be able to run again:
        // tables are created IF NOT EXISTS, and an `ALTER TABLE` that finds its column or index
        // already there (MySQL 8 has no `ADD COLUMN IF NOT EXISTS`) counts as done. Each
        // `ALTER TABLE` is one statement, so it is applied whole or not at all.
        for statement in statements(sql) {
            match sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => {}
                Err(e) if matches!(error_number(&e), Some(ER_DUP_FIELDNAME | ER_DUP_KEYNAME)) => {
                    tracing::info!(version, name, "Migration statement was applied before");
                }
                Err(source) => {
                    return Err(DbError::Migration {
                        version,
                        name,
                        source,
                    });
                }
            }
        }
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(version)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        tracing::info!(version, name, "Applied migration");
        newly.push(version);
    }
    Ok(newly)
}

/// The statements of a migration file: split at `;` that end a line, with `--` comment lines
/// dropped. Migrations are plain DDL, with no `;` inside strings.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// MySQL error: duplicate entry for a unique key.
pub const ER_DUP_ENTRY: u16 = 1062;
/// MySQL error: deadlock; the transaction was rolled back and may be run again.
pub const ER_LOCK_DEADLOCK: u16 = 1213;

/// MySQL error: a row lock was not granted in time; the statement may be run again.
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// MariaDB error: a CHECK constraint failed.
pub const ER_CONSTRAINT_FAILED: u16 = 4025;
/// MySQL error: a CHECK constraint was violated.
pub const ER_CHECK_CONSTRAINT_VIOLATED: u16 = 3819;

/// Whether the database refused the rows themselves (a value out of range, too long, a failed
/// constraint), as opposed to failing to run the statement at all (connection lost, server down,
/// locks). Running the same rows again cannot succeed after a data error; it can after the other
/// kind.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // SQLSTATE class 22 is "data exception", 23 "integrity constraint violation".
            let class_data = db
                .code()
                .is_some_and(|state| state.starts_with("22") || state.starts_with("23"));
            class_data
                || matches!(
                    error_number(e),
                    Some(ER_CONSTRAINT_FAILED | ER_CHECK_CONSTRAINT_VIOLATED)
                )
        }
        sqlx::Error::Encode(_) | sqlx::Error::InvalidArgument(_) => true,
        _ => false,
    }
}

/// Whether a failed statement lost a lock race (deadlock, lock wait timeout): the database works,
/// and running the statement again is expected to succeed.
pub fn is_lock_conflict(e: &sqlx::Error) -> bool {
    matches!(
        error_number(e),
        Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)
    )
}

/// The MySQL error number (not the SQLSTATE) of a database error.
pub fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Splits `n` rows into statement sizes that are powers of two no larger than `max`
/// (itself rounded down to one), largest first.
///
/// A multi-row statement is prepared once per distinct size; with these sizes a process
/// prepares at most `log2(max) + 1` shapes instead of one per odd batch length.
pub fn statement_sizes(mut n: usize, max: usize) -> Vec<usize> {
    let max = if max == 0 { 1 } else { 1 << max.ilog2() };
    let mut sizes = Vec::new();
    while n > 0 {
        let size = if n >= max { max } else { 1 << n.ilog2() };
        sizes.push(size);
        n -= size;
    }
    sizes
}

/// `(?,?,?),(?,?,?)…`: `rows` groups of `columns` placeholders.
pub fn placeholders(rows: usize, columns: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(","));
    vec![group.as_str(); rows].join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_sizes_are_powers_of_two_that_add_up() {
        assert_eq!(statement_sizes(0, 512), Vec::<usize>::new());
        assert_eq!(statement_sizes(1, 512), vec![1]);
        assert_eq!(statement_sizes(1_300, 512), vec![512, 512, 256, 16, 4]);
        assert_eq!(statement_sizes(7, 500), vec![4, 2, 1]);
        assert_eq!(statement_sizes(600, 500), vec![256, 256, 64, 16, 8]);
        for n in 0..2_000 {
            assert_eq!(statement_sizes(n, 512).iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn every_migration_splits_into_whole_statements() {
        for (_, name, sql) in MIGRATIONS {
            let statements = statements(sql);
            assert!(!statements.is_empty(), "{name}");
            for s in &statements {
                assert!(s.trim_end().ends_with(';'), "{name}: {s}");
                assert_eq!(s.matches(';').count(), 1, "{name}: {s}");
            }
        }
        assert_eq!(statements(MIGRATIONS[1].2).len(), 2);
    }

    #[test]
    fn placeholders_repeat_groups() {
        assert_eq!(placeholders(2, 3), "(?,?,?),(?,?,?)");
    }

    #[test]
    fn database_names_are_checked_before_being_quoted() {
        assert_eq!(
            database_name("mysql://root@127.0.0.1:3306/accrual").ok(),
            Some("accrual".into())
        );
        assert!(matches!(
            database_name("mysql://root@127.0.0.1:3306/a`b"),
            Err(DbError::BadDatabaseName(_))
        ));
        assert!(matches!(
            database_name("mysql://root@127.0.0.1:3306"),
            Err(DbError::NoDatabase)
        ));
    }
}
