//! `accrual-load`: posts a generated accrual job to a running sender, follows it into MySQL and
//! prints the throughput. The README's demo runs it; it checks the ledger against what it sent.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use accrual_benches::workload::Workload;
use accrual_core::settings::DatabaseSettings;
use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{StreamExt, TryStreamExt, stream};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "accrual-load",
    about = "Post generated point accruals and follow them into MySQL"
)]
struct Args {
    /// Base URL of the sender.
    #[arg(long, env = "SENDER_URL", default_value = "http://127.0.0.1:8080")]
    sender_url: String,
    /// API key to post with.
    #[arg(long, env = "ACCRUAL_API_KEY", default_value = "key_a")]
    api_key: String,
    /// Points to generate.
    #[arg(long, default_value_t = 100_000)]
    points: usize,
    /// Distinct members the points are spread over (each gets points of several types).
    #[arg(long, default_value_t = 30_000)]
    members: usize,
    /// Items per request (at most 500,000).
    #[arg(long, default_value_t = 50_000)]
    items_per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Give up when the ledger is not complete after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    timeout_secs: u64,
    #[command(flatten)]
    database: DatabaseSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let workload = Workload::generate(args.points, args.members, args.items_per_request);
    let expected_sum = workload.amount_sum;
    let bodies = workload.bodies;
    eprintln!(
        "posting {} points for {} members as {} request(s) to {}",
        args.points,
        args.members.min(args.points),
        bodies.len(),
        args.sender_url
    );

    let http = reqwest::Client::new();
    let post_started = Instant::now();
    let accepted: Vec<(Uuid, Duration)> = stream::iter(bodies)
        .map(|body| post(&http, &args, body))
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    let accept_elapsed = post_started.elapsed();
    let mut latencies: Vec<Duration> = accepted.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let job_ids: Vec<Uuid> = accepted.iter().map(|(id, _)| *id).collect();
    eprintln!(
        "accepted in {:.2}s (request latency p50 {:.0} ms, max {:.0} ms)",
        accept_elapsed.as_secs_f64(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );

    let pool = accrual_core::db::connect(&args.database)
        .await
        .context("Failed to connect to MySQL")?;
    let written = follow(
        &pool,
        &job_ids,
        args.points,
        post_started,
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    let total_elapsed = post_started.elapsed();

    let (rows, sum, distinct): (i64, i64, i64) = ledger_totals(&pool, &job_ids).await?;
    let throughput = written as f64 / total_elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "points": args.points,
            "requests": job_ids.len(),
            "accept_seconds": round2(accept_elapsed.as_secs_f64()),
            "request_latency_p50_ms": ms(latencies[latencies.len() / 2]).round(),
            "seconds_until_all_in_mysql": round2(total_elapsed.as_secs_f64()),
            "points_per_second": throughput.round(),
            "ledger_rows": rows,
            "distinct_members_in_ledger": distinct,
        })
    );
    if rows != args.points as i64 || sum != expected_sum {
        bail!(
            "the ledger does not match what was sent: {rows} rows summing to {sum}, expected {} summing to {expected_sum}",
            args.points
        );
    }
    eprintln!(
        "all {} points in MySQL after {:.1}s: {:.0} points/s end to end (total run {:.1}s); sums match",
        args.points,
        total_elapsed.as_secs_f64(),
        throughput,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn post(
    http: &reqwest::Client,
    args: &Args,
    body: Vec<u8>,
) -> anyhow::Result<(Uuid, Duration)> {
    let t = Instant::now();
    let response = http
        .post(format!("{}/v1/accruals", args.sender_url))
        .bearer_auth(&args.api_key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .context("Failed to reach the sender")?;
    let status = response.status();
    let json: serde_json::Value = response.json().await.context("Unreadable answer")?;
    if status.as_u16() != 202 {
        bail!("the sender answered {status}: {json}");
    }
    let job_id = json["job_id"].as_str().unwrap_or_default().parse()?;
    Ok((job_id, t.elapsed()))
}

/// Polls the ledger once a second, printing progress, until `total` rows are there.
async fn follow(
    pool: &sqlx::MySqlPool,
    jobs: &[Uuid],
    total: usize,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let terminal = std::io::stderr().is_terminal();
    let mut prev = (since, 0usize);
    loop {
        let (written, _, _) = ledger_totals(pool, jobs).await?;
        let written = written as usize;
        let now = Instant::now();
        let (t0, w0) = prev;
        let rate =
            written.saturating_sub(w0) as f64 / now.duration_since(t0).as_secs_f64().max(0.001);
        prev = (now, written);
        let line = format!(
            "[{:>6.1}s] {:>9} / {} points in MySQL ({:>3.0}%), {:>6.0} points/s",
            since.elapsed().as_secs_f64(),
            written,
            total,
            100.0 * written as f64 / total.max(1) as f64,
            rate
        );
        if terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
        if written >= total {
            if terminal {
                eprintln!();
            }
            return Ok(written);
        }
        if since.elapsed() > timeout {
            bail!("only {written} of {total} points reached MySQL within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn ledger_totals(pool: &sqlx::MySqlPool, jobs: &[Uuid]) -> anyhow::Result<(i64, i64, i64)> {
    let mut totals = (0, 0, 0);
    for job in jobs {
        let (rows, sum, members): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS SIGNED), COUNT(DISTINCT member_id) \
             FROM point_accruals WHERE job_id = ?",
        )
        .bind(job)
        .fetch_one(pool)
        .await?;
        totals = (totals.0 + rows, totals.1 + sum, totals.2.max(members));
    }
    Ok(totals)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
