//! `accrual-reconcile-bench`: times the reconciler's comparison of one quiet job with the ledger.
//!
//! Builds, in a database of its own, a job of `--points` points (2,000,000 by default) in chunks of
//! `--chunk-items`, exactly as the sender stores them (LZ4 chunks of v1 bodies), writes every point
//! but `--missing` of them to the ledger with the listener's own multi-row insert, then runs
//! `accrual_sender::workers::reconciler::compare` on the job once (the missing points are re-sent to a
//! queue of its own) and reports the time, the points compared per second and what it found, as
//! JSON in `--results-dir`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrual_core::accrual::Accrual;
use accrual_core::domain::{Amount, MemberId, PointType};
use accrual_core::message::PointRecord;
use accrual_core::settings::{DatabaseSettings, SqsSettings};
use accrual_core::sqs::{self, QueueOptions};
use accrual_core::{chunk, db};
use accrual_listener::ledger::{insert_query, insert_sql};
use accrual_sender::metrics::SenderMetrics;
use accrual_sender::workers::dispatch::DeadLetterQueue;
use accrual_sender::workers::dispatch::fanout::Fanout;
use accrual_sender::workers::reconciler::{Reconciler, ReconcilerSettings, compare};
use anyhow::Context;
use clap::Parser;
use serde_json::json;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "accrual-reconcile-bench",
    about = "Time the reconciler's comparison of one large quiet job with the ledger"
)]
struct Args {
    /// The database to build the job in (created if absent; its tables are emptied).
    #[arg(
        long,
        env = "RECONCILE_BENCH_DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/accrual_reconcile_bench"
    )]
    database_url: String,
    /// Points in the job.
    #[arg(long, default_value_t = 2_000_000)]
    points: usize,
    /// Points per stored chunk (the sender's `CHUNK_ITEMS`).
    #[arg(long, default_value_t = 2_000)]
    chunk_items: usize,
    /// Points left out of the ledger (the comparison finds and re-sends them).
    #[arg(long, default_value_t = 10)]
    missing: usize,
    #[command(flatten)]
    sqs: SqsSettings,
    #[arg(long, default_value = "benches/results")]
    results_dir: std::path::PathBuf,
}

/// Ledger rows per multi-row insert, and per transaction.
const ROWS_PER_STATEMENT: usize = 512;
const ROWS_PER_TRANSACTION: usize = 16 * ROWS_PER_STATEMENT;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    anyhow::ensure!(args.points >= 1 && args.chunk_items >= 1 && args.missing <= args.points);
    let name = db::database_name(&args.database_url)?;
    anyhow::ensure!(
        name.contains("bench"),
        "the database `{name}` is emptied; give one whose name contains `bench`"
    );
    db::create_database_if_absent(&args.database_url).await?;
    let mut settings = DatabaseSettings::new(args.database_url.clone(), 4);
    settings.database_statement_timeout = Duration::from_secs(600);
    let pool = db::connect(&settings).await?;
    db::migrate(&pool).await?;
    for table in [
        "point_accruals",
        "accrual_chunks",
        "accrual_jobs",
        "accrual_dead_letters",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE TABLE {table}")))
            .execute(&pool)
            .await?;
    }
    if args.sqs.accrual_queue == "point-accruals" {
        args.sqs.accrual_queue = "reconcile-bench".into();
        args.sqs.accrual_dlq = "reconcile-bench-dlq".into();
    }
    let client = sqs::client(&args.sqs).await;
    let queues = sqs::ensure_queues(
        &client,
        &args.sqs.accrual_queue,
        &args.sqs.accrual_dlq,
        QueueOptions::default(),
    )
    .await?;

    let job_id = Uuid::now_v7();
    let built = Instant::now();
    build(&pool, job_id, &args).await?;
    let build_secs = built.elapsed().as_secs_f64();
    eprintln!(
        "built a job of {} points ({} chunks) with {} missing from the ledger in {build_secs:.1} s",
        args.points,
        args.points.div_ceil(args.chunk_items),
        args.missing
    );

    let metrics = Arc::new(SenderMetrics::new());
    let reconciler = Reconciler {
        pool: pool.clone(),
        fanout: Fanout::new(
            client.clone(),
            queues.main.clone(),
            8,
            metrics.send_calls.clone(),
        ),
        dead_letters: DeadLetterQueue {
            client: client.clone(),
            url: queues.dlq.clone(),
            source_queue: args.sqs.accrual_queue.clone(),
        },
        queue_url: queues.main.clone(),
        points_per_message: 1,
        settings: ReconcilerSettings {
            reconcile_interval: Duration::from_secs(30),
            reconcile_quiet_floor: Duration::from_secs(300),
            reconcile_attempts: 3,
        },
        metrics,
        owner: "reconcile-bench".into(),
    };
    let started = Instant::now();
    let compared = compare(&reconciler, job_id, false).await?;
    let secs = started.elapsed().as_secs_f64();
    let per_sec = compared.points as f64 / secs;
    println!(
        "compared {} points in {secs:.2} s ({per_sec:.0} points/s): {} missing, {} re-sent",
        compared.points, compared.missing, compared.resent
    );
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;
    let report = json!({
        "bench": "reconcile-compare",
        "points": args.points,
        "chunk_items": args.chunk_items,
        "missing": args.missing,
        "build_secs": build_secs,
        "compare_secs": secs,
        "points_per_sec": per_sec,
        "found_missing": compared.missing,
        "resent": compared.resent,
        "server": version,
        "sqs_endpoint": args.sqs.aws_endpoint_url,
    });
    std::fs::create_dir_all(&args.results_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let path = args
        .results_dir
        .join(format!("{stamp}-reconcile-{}.json", args.points));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results: {}", path.display());
    for url in [&queues.main, &queues.dlq] {
        client.delete_queue().queue_url(url).send().await.ok();
    }
    Ok(())
}

/// Stores the job, its chunks and the ledger rows of all of its points but the first `missing`.
async fn build(pool: &sqlx::MySqlPool, job_id: Uuid, args: &Args) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at) \
         VALUES (?, 'bench', ?, ?, ?, 'enqueued', NOW(6))",
    )
    .bind(job_id)
    .bind(vec![0u8; 32])
    .bind(args.points as u32)
    .bind(args.points as u32)
    .execute(pool)
    .await?;
    let point_type = PointType::try_from("WELFARE".to_owned()).map_err(anyhow::Error::msg)?;
    let accepted_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let sql: Arc<str> = insert_sql("point_accruals", ROWS_PER_STATEMENT).into();
    let mut written = 0usize;
    let mut index = 0usize;
    for (seq, start) in (0..args.points).step_by(args.chunk_items).enumerate() {
        let end = (start + args.chunk_items).min(args.points);
        let records: Vec<PointRecord> = (start..end)
            .map(|i| PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id,
                accrual: Accrual {
                    member_id: MemberId::try_from(format!("member-{i}")).expect("a valid id"),
                    point_type: point_type.clone(),
                    amount: Amount::try_from(1 + (i % 10) as i64).expect("a valid amount"),
                    reason: None,
                    expires_at: None,
                    external_id: None,
                },
                accepted_at,
                reverses: None,
            })
            .collect();
        sqlx::query(
            "INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at, dispatched_at) \
             VALUES (?, ?, ?, ?, NOW(6), NOW(6))",
        )
        .bind(job_id)
        .bind(seq as u32)
        .bind(chunk::encode(&records))
        .bind(records.len() as u32)
        .execute(pool)
        .await?;
        let skip = args.missing.saturating_sub(index).min(records.len());
        index += records.len();
        // client_id is left NULL: the reconciler does not read it.
        let no_clients = std::collections::HashMap::new();
        for group in records[skip..].chunks(ROWS_PER_TRANSACTION) {
            let mut tx = pool.begin().await?;
            let refs: Vec<&PointRecord> = group.iter().collect();
            for rows in refs.chunks(ROWS_PER_STATEMENT) {
                let sql = if rows.len() == ROWS_PER_STATEMENT {
                    sql.clone()
                } else {
                    insert_sql("point_accruals", rows.len()).into()
                };
                insert_query(sql, rows, &no_clients)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            written += group.len();
        }
        if seq % 100 == 99 {
            eprintln!("  {written} ledger rows written");
        }
    }
    Ok(())
}
