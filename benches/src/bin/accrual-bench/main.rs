//! `accrual-bench`: the end-to-end benchmark. In one run it measures the limits the pipeline sits
//! on (a raw SQS round trip and raw MySQL multi-row inserts of the same points, no application
//! logic) and then the pipeline itself (release builds of one sender and L listeners as
//! processes), and reports the pipeline against those limits: throughput, latency, and the CPU and
//! memory of each of our processes. Results go to stdout as a table and to `--results-dir` as JSON.

mod accept_latency;
mod measure;
mod noisy;
mod pipeline;
mod raw;
mod report;
mod results;

use std::path::PathBuf;
use std::time::Duration;

use accrual_core::settings::{DatabaseSettings, SqsSettings};
use accrual_core::sqs::QueueOptions;
use accrual_core::{db, sqs};
use anyhow::{Context, bail};
use clap::Parser;
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "accrual-bench",
    about = "End-to-end benchmark of the accrual pipeline against the raw limits of SQS and MySQL"
)]
pub struct Args {
    /// Points to send through the pipeline.
    #[arg(long, default_value_t = 1_000_000)]
    points: usize,
    /// Distinct members the points are spread over.
    #[arg(long, default_value_t = 300_000)]
    members: usize,
    /// Items per request: 500,000 for bulk jobs, 1,000 for many small calls.
    #[arg(long, default_value_t = 500_000)]
    items_per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Listener processes.
    #[arg(long, default_value_t = 1)]
    listeners: usize,
    /// Points sent through the raw SQS round trip (a sample: its rate is what is compared).
    /// 0 skips both raw measurements.
    #[arg(long, default_value_t = 100_000)]
    raw_sqs_points: usize,
    /// Connections of the raw MySQL insert.
    #[arg(long, default_value_t = 4)]
    raw_mysql_connections: usize,
    /// Dispatch tasks of the sender (passed to it as DISPATCH_TASKS).
    #[arg(long, env = "DISPATCH_TASKS", default_value_t = 2)]
    dispatch_tasks: usize,
    /// SendMessageBatch calls in flight per dispatch task (SEND_CONCURRENCY).
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = 8)]
    send_concurrency: usize,
    /// Receive tasks per listener (RECEIVE_TASKS).
    #[arg(long, env = "RECEIVE_TASKS", default_value_t = 8)]
    receive_tasks: usize,
    /// Points packed into one SQS message (ACCRUAL_POINTS_PER_MESSAGE): 1 sends v1 messages; the
    /// raw SQS round trip packs its bodies the same way.
    #[arg(long, env = "ACCRUAL_POINTS_PER_MESSAGE", default_value_t = 1)]
    points_per_message: usize,
    /// Rows per listener batch and per raw insert statement (BATCH_MAX_ROWS).
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 512)]
    batch_max_rows: usize,
    /// Where `accrual-sender` and `accrual-listener` are; by default next to this binary.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// MySQL server; the benchmark creates a database of its own there and drops it afterwards.
    #[arg(
        long,
        env = "BENCH_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    mysql_url: String,
    /// SQS endpoint (LocalStack by default; scripts/bench --emulator fauxqs points it at fauxqs).
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL",
        default_value = "http://127.0.0.1:4566"
    )]
    aws_endpoint_url: String,
    /// Which SQS emulator answers at --aws-endpoint-url, recorded in the result (`localstack` or
    /// `fauxqs`; scripts/bench sets it). Left out, the endpoint is asked (LocalStack answers its
    /// health URL, fauxqs names itself in a response header); anything else is `other`.
    #[arg(long, env = "SQS_EMULATOR", value_parser = ["localstack", "fauxqs"])]
    emulator: Option<String>,
    /// How much of the listeners' work the queue may hold, in time, before the sender's
    /// dispatchers wait (DISPATCH_QUEUE_HORIZON, e.g. 3s; 0: no bound); left out, the sender's
    /// default (2s).
    #[arg(long, env = "DISPATCH_QUEUE_HORIZON")]
    dispatch_queue_horizon: Option<String>,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Where the JSON result is written.
    #[arg(long, default_value = "benches/results")]
    results_dir: PathBuf,
    /// A word for the result's file name and JSON (e.g. `bulk`, `calls`).
    #[arg(long, default_value = "run")]
    label: String,
    /// Give up when the ledger is not complete after this many seconds.
    #[arg(long, default_value_t = 3_600)]
    timeout_secs: u64,
    /// Keep the benchmark's database and queues (for a look afterwards).
    #[arg(long)]
    keep: bool,
    /// Skip the results phase (downloading every job's per-item results once all is written).
    #[arg(long)]
    no_results: bool,
    /// Give every item an `external_id` (unique per run), so acceptance looks up and claims them.
    #[arg(long)]
    external_ids: bool,
    /// Accept-latency mode (#17): post `--background-points`, then, while they are dispatched and
    /// written, `--measured-requests` requests of `--items-per-request` items one after another,
    /// and report each one's accept latency and their p50/p99/max. Replaces `--points`; skips the
    /// raw measurements and the results phase.
    #[arg(long)]
    accept_latency: bool,
    /// With `--accept-latency`: points posted before the measured requests.
    #[arg(long, default_value_t = 1_500_000)]
    background_points: usize,
    /// With `--accept-latency`: requests timed one by one while the background drains.
    #[arg(long, default_value_t = 10)]
    measured_requests: usize,
    /// With `--accept-latency`: end at the last 202 instead of waiting for every point to be
    /// written (the ledger is then not checked).
    #[arg(long)]
    no_drain: bool,
    #[command(flatten)]
    noisy: noisy::NoisyArgs,
}

const API_KEY: &str = "bench-key";
/// The sender's default `DISPATCH_QUEUE_HORIZON`, recorded when the run leaves it unset.
const DEFAULT_QUEUE_HORIZON: &str = "2s";

impl Args {
    /// The emulator the run measured (resolved in `main`).
    pub fn emulator(&self) -> &str {
        self.emulator.as_deref().unwrap_or("other")
    }

    /// The sender's `DISPATCH_QUEUE_HORIZON` in this run.
    pub fn queue_horizon(&self) -> &str {
        self.dispatch_queue_horizon
            .as_deref()
            .unwrap_or(DEFAULT_QUEUE_HORIZON)
    }
}

/// `localstack` when the endpoint answers LocalStack's health URL, `fauxqs` when its answers carry
/// fauxqs's `x-amz-id-2: fauxqs` header, else `other`.
async fn detect_emulator(endpoint: &str) -> String {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let endpoint = endpoint.trim_end_matches('/');
    let health = http
        .get(format!("{endpoint}/_localstack/health"))
        .send()
        .await;
    if health.is_ok_and(|r| r.status().is_success()) {
        return "localstack".into();
    }
    let list = http
        .post(endpoint)
        .header("Content-Type", "application/x-amz-json-1.0")
        .header("X-Amz-Target", "AmazonSQS.ListQueues")
        .body("{}")
        .send()
        .await;
    match list {
        Ok(r) if r.headers().get("x-amz-id-2").is_some_and(|v| v == "fauxqs") => "fauxqs".into(),
        _ => "other".into(),
    }
}

/// The database and queues of one run.
struct Scratch {
    id: String,
    database: DatabaseSettings,
    sqs: SqsSettings,
    raw_queue: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.emulator.is_none() {
        args.emulator = Some(detect_emulator(&args.aws_endpoint_url).await);
    }
    if args.accept_latency {
        args = accept_latency::prepare(args)?;
    }
    if args.noisy.noisy_neighbor {
        args = noisy::prepare(args)?;
    }
    if args.points == 0 {
        bail!("--points must be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .to_owned(),
    };
    for exe in ["accrual-sender", "accrual-listener"] {
        if !bin_dir.join(exe).is_file() {
            bail!(
                "{} is missing; build it first: cargo build --release -p accrual-sender -p accrual-listener",
                bin_dir.join(exe).display()
            );
        }
    }

    let uuid = Uuid::now_v7().simple().to_string();
    let id = uuid[20..].to_owned();
    let scratch = Scratch {
        database: DatabaseSettings::new(
            format!(
                "{}/accrual_bench_{id}",
                args.mysql_url.trim_end_matches('/')
            ),
            args.raw_mysql_connections.max(2) as u32,
        ),
        sqs: SqsSettings::new(
            args.aws_endpoint_url.clone(),
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            format!("accrual-bench-{id}"),
            format!("accrual-bench-{id}-dlq"),
        ),
        raw_queue: format!("accrual-bench-{id}-raw"),
        id,
    };
    eprintln!(
        "accrual-bench {}: {} points over {} members as requests of {} items, {} at once, {} listener(s), on {}",
        scratch.id,
        args.points,
        args.members.min(args.points),
        args.items_per_request.min(args.points),
        args.concurrency,
        args.listeners,
        args.emulator(),
    );
    db::create_database_if_absent(&scratch.database.database_url).await?;
    let pool = db::connect(&scratch.database).await?;
    db::migrate(&pool).await?;
    let client = sqs::client(&scratch.sqs).await;
    let queues = sqs::ensure_queues(
        &client,
        &scratch.sqs.accrual_queue,
        &scratch.sqs.accrual_dlq,
        QueueOptions::default(),
    )
    .await?;

    // Ctrl-C or SIGTERM drops the run (its processes are killed) and still cleans up below.
    let interrupted = tokio_util::sync::CancellationToken::new();
    tokio::spawn(accrual_core::telemetry::cancel_on_signal(
        interrupted.clone(),
    ));
    let result = tokio::select! {
        result = measure::measure(&args, &bin_dir, &scratch, &pool, &client, &queues) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };

    if !args.keep {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS accrual_bench_{}",
            scratch.id
        )))
        .execute(&pool)
        .await;
        let raw = sqs::queue_url(&client, &scratch.raw_queue).await.ok();
        for url in [Some(&queues.main), Some(&queues.dlq), raw.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = client.delete_queue().queue_url(url).send().await;
        }
    }
    let report = result?;
    println!("{}", report.table());
    let path = report.save(&args.results_dir)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
