//! `accrual-ledger-bench`: builds a large ledger (10,000,000 rows by default) in a database of its
//! own, then times the sender's member queries (`GET /v1/members/{id}/accruals` and `/balance`,
//! the very functions of `accrual_sender::store::member_ledger`) for many random members, prints each
//! query's `EXPLAIN` and p50/p99/max, and writes the numbers as JSON to `--results-dir`.
//!
//! The ledger is built by SQL from MariaDB's SEQUENCE engine (`seq_1_to_N`), a million rows per
//! statement, with the ledger's secondary indexes dropped during the load and added back after
//! (the same definitions as the migrations: an index built by sorting is far faster than ten
//! million random inserts into it). A database that already holds a ledger of the asked size is
//! reused unless `--rebuild`.
//!
//! The shape: `--members` members (each with `rows / members` rows, spread over random jobs by a
//! multiplicative hash), jobs of 1,000 rows each, `--clients` clients (job k belongs to client
//! k mod clients), 4 point types, 10% of rows expired, 40% with a future expiry, half with an
//! external id, the first 1% of rows reversed by reversal jobs (negative rows at the end), and 200
//! reserved jobs of 1,000 members each in `accrual_reserved_amounts`.

use std::time::{Duration, Instant};

use accrual_benches::stats::{ms, percentile};
use accrual_core::db;
use accrual_core::settings::DatabaseSettings;
use accrual_sender::store::member_ledger;
use clap::Parser;
use serde_json::json;
use sqlx::{AssertSqlSafe, MySqlPool, Row};

mod ledger;

use ledger::{POINT_TYPES, ROWS_PER_STATEMENT, XorShift, backfill, build};

#[derive(Parser)]
#[command(
    name = "accrual-ledger-bench",
    about = "Time the member ledger and balance queries on a large generated ledger"
)]
struct Args {
    /// The database to build the ledger in (created if absent; its tables are emptied on a build).
    #[arg(
        long,
        env = "LEDGER_BENCH_DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/accrual_ledger_bench"
    )]
    database_url: String,
    /// Ledger rows (a multiple of 1,000,000).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Distinct members.
    #[arg(long, default_value_t = 1_000_000)]
    members: u64,
    /// Clients the jobs belong to.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Random members timed (each: one ledger page, one filtered page, one balance).
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
    /// Seed of the member picks.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Build the ledger again even when one of this size is there.
    #[arg(long)]
    rebuild: bool,
    /// Fill the ledger's `client_id` and build its client index (as `accrualctl backfill
    /// ledger-client-ids` does, timed) if missing, and time the queries the sender makes once
    /// they exist. Without it, the queries before the backfill (a join on `accrual_jobs`).
    #[arg(long)]
    client_index: bool,
    #[arg(long, default_value = "benches/results")]
    results_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rows >= ROWS_PER_STATEMENT && args.rows.is_multiple_of(ROWS_PER_STATEMENT),
        "--rows must be a multiple of {ROWS_PER_STATEMENT}"
    );
    anyhow::ensure!(args.members >= 1 && args.members <= args.rows / 2);
    anyhow::ensure!(args.clients >= 1 && args.samples >= 1);
    db::create_database_if_absent(&args.database_url).await?;
    // Its tables are emptied: refuse a database not named for the bench.
    let name = db::database_name(&args.database_url)?;
    anyhow::ensure!(
        name.contains("bench"),
        "the database `{name}` is emptied by a build; give one whose name contains `bench`"
    );
    let mut settings = DatabaseSettings::new(args.database_url.clone(), 2);
    // A million-row insert or an index build over ten million rows takes minutes.
    settings.database_statement_timeout = Duration::from_secs(3_600);
    let pool = db::connect(&settings).await?;
    db::migrate(&pool).await?;

    let have: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals")
        .fetch_one(&pool)
        .await?;
    let build = if args.rebuild || have as u64 != args.rows {
        Some(build(&pool, &args).await?)
    } else {
        eprintln!("reusing the ledger of {have} rows in {}", args.database_url);
        None
    };
    let (by, backfill) = if args.client_index {
        (member_ledger::ByClient::Index, Some(backfill(&pool).await?))
    } else {
        (member_ledger::ByClient::Join, None)
    };
    let (table_mb, index_mb): (f64, f64) = sqlx::query_as(
        "SELECT CAST(data_length / 1048576 AS DOUBLE), CAST(index_length / 1048576 AS DOUBLE) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'point_accruals'",
    )
    .fetch_one(&pool)
    .await?;
    let buffer_pool: u64 = sqlx::query_scalar("SELECT @@innodb_buffer_pool_size")
        .fetch_one(&pool)
        .await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;

    let plans = explain(&pool, by).await?;
    for (query, rows) in &plans {
        println!("EXPLAIN {query}:");
        for row in rows {
            println!("  {row}");
        }
    }

    // Random (member, client) pairs, picked without reading the ledger (so nothing is warmed for
    // them). A query reads all of the member's rows whichever client asks (the client is checked
    // on each row's job), so the client changes what is shown, not what is read.
    let mut rng = XorShift(args.seed.max(1));
    // Each query gets members of its own, so none finds pages another query of the run just read
    // (a member's pages may still be cached from an earlier run, or by the OS).
    let mut pick = || {
        let member = format!("m{}", rng.next() % args.members);
        let client = format!("client_{}", rng.next() % args.clients);
        (member, client)
    };
    let picks: Vec<[(String, String); 3]> = (0..args.samples)
        .map(|_| [pick(), pick(), pick()])
        .collect();
    let mut ledger = Vec::new();
    let mut filtered = Vec::new();
    let mut balance = Vec::new();
    let mut rows_seen = 0usize;
    for (i, [(m1, c1), (m2, c2), (m3, c3)]) in picks.iter().enumerate() {
        let started = Instant::now();
        let page = member_ledger::page(&pool, by, c1, m1, None, None, 51).await?;
        ledger.push(started.elapsed());
        rows_seen += page.len();
        let point_type = POINT_TYPES[i % POINT_TYPES.len()];
        let started = Instant::now();
        member_ledger::page(&pool, by, c2, m2, Some(point_type), None, 51).await?;
        filtered.push(started.elapsed());
        let started = Instant::now();
        member_ledger::balance(&pool, by, c3, m3, chrono::Utc::now()).await?;
        balance.push(started.elapsed());
    }
    let summary = |name: &str, times: &mut Vec<Duration>| {
        times.sort();
        let (p50, p99, max) = (
            ms(percentile(times, 0.50)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
        );
        println!("{name:<28} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   max {max:>7.2} ms");
        json!({ "query": name, "samples": times.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max })
    };
    println!(
        "{} rows, {} members, {} clients; point_accruals {table_mb:.0} MiB data + {index_mb:.0} MiB indexes; \
         InnoDB buffer pool {} MiB; {version}",
        args.rows,
        args.members,
        args.clients,
        buffer_pool / 1_048_576
    );
    println!(
        "{} random members, {:.1} ledger rows per first page on average",
        args.samples,
        rows_seen as f64 / args.samples as f64
    );
    let timings = vec![
        summary("ledger page (limit 50)", &mut ledger),
        summary("ledger page, point_type", &mut filtered),
        summary("balance (2 queries)", &mut balance),
    ];
    let report = json!({
        "bench": "member-ledger",
        "rows": args.rows,
        "members": args.members,
        "clients": args.clients,
        "samples": args.samples,
        "seed": args.seed,
        "build_secs": build.map(|d| d.as_secs_f64()),
        "queries_by_client": format!("{by:?}"),
        "backfill": backfill,
        "point_accruals_data_mib": table_mb,
        "point_accruals_index_mib": index_mb,
        "innodb_buffer_pool_mib": buffer_pool / 1_048_576,
        "server": version,
        "mean_rows_per_first_page": rows_seen as f64 / args.samples as f64,
        "timings": timings,
        "explain": plans.iter().map(|(q, rows)| json!({ "query": q, "plan": rows })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.results_dir)?;
    let path = args.results_dir.join(format!(
        "{}-member-ledger-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        args.rows
    ));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `EXPLAIN` of each member query (the sender's own SQL) for one member: table, type, key,
/// rows and Extra of each line.
async fn explain(
    pool: &MySqlPool,
    by: member_ledger::ByClient,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let queries: Vec<(String, String, Vec<&str>)> = vec![
        (
            "ledger page".into(),
            member_ledger::ledger_sql(by, false, true),
            vec!["m1", "client_1", "18446744073709551615", "51"],
        ),
        (
            "ledger page, point_type".into(),
            member_ledger::ledger_sql(by, true, false),
            vec!["m1", "client_1", "WELFARE", "51"],
        ),
        (
            "balance: ledger sums".into(),
            member_ledger::balance_sql(by),
            vec!["2026-11-24 00:00:00", "m1", "client_1"],
        ),
        (
            "balance: reserved sums".into(),
            member_ledger::RESERVED_SQL.into(),
            vec!["m1", "client_1"],
        ),
    ];
    let mut out = Vec::new();
    for (name, sql, binds) in queries {
        let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN {sql}")));
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(pool).await?;
        let text = |row: &sqlx::mysql::MySqlRow, column: &str| -> String {
            row.try_get_unchecked::<Option<Vec<u8>>, _>(column)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|| "NULL".into())
        };
        let lines = rows
            .iter()
            .map(|row| {
                format!(
                    "table={} type={} key={} rows={} extra={}",
                    text(row, "table"),
                    text(row, "type"),
                    text(row, "key"),
                    text(row, "rows"),
                    text(row, "Extra")
                )
            })
            .collect();
        out.push((name, lines));
    }
    Ok(out)
}
