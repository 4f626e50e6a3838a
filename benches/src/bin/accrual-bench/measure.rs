//! One run's measurements, with its database and queues in place: the raw limits, then the
//! pipeline (a sender and the listeners as processes), then the results downloads.

use std::time::Duration;

use accrual_benches::workload::Workload;
use accrual_core::{message, sqs};
use anyhow::{Context, bail};

use crate::pipeline::Service;
use crate::raw::SqsShape;
use crate::{API_KEY, Args, Scratch, accept_latency, noisy, pipeline, raw, report, results};

pub(crate) async fn measure(
    args: &Args,
    bin_dir: &std::path::Path,
    scratch: &Scratch,
    pool: &sqlx::MySqlPool,
    client: &aws_sdk_sqs::Client,
    queues: &sqs::QueueUrls,
) -> anyhow::Result<report::Report> {
    let id_prefix = args
        .external_ids
        .then(|| format!("bench-{}", chrono::Utc::now().timestamp_micros()));
    let workload = Workload::generate_with_ids(
        args.points,
        args.members,
        args.items_per_request,
        id_prefix.as_deref(),
    );
    let mut raw_mysql = None;
    let mut raw_sqs = None;
    if args.raw_sqs_points > 0 {
        // SQS first, on a quiet machine: after a million-row insert MariaDB flushes pages for a
        // while and would take CPU from LocalStack.
        let records = workload.records()?;
        let bodies: Vec<String> = records
            .iter()
            .take(args.raw_sqs_points)
            .map(|r| r.encode())
            .collect();
        let sample_points = bodies.len();
        // Packed as the dispatcher packs: within a chunk, so at most CHUNK_ITEMS (2,000) a run.
        let bodies = bodies
            .chunks(2_000)
            .map(|chunk| {
                message::pack(
                    chunk.to_vec(),
                    args.points_per_message,
                    sqs::MAX_BATCH_BYTES,
                )
            })
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let url = client
            .create_queue()
            .queue_name(&scratch.raw_queue)
            .send()
            .await
            .context("cannot create the raw queue")?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let shape = SqsShape {
            send_calls: args.dispatch_tasks * args.send_concurrency,
            receivers: args.listeners * args.receive_tasks,
            wait_secs: 2,
        };
        let outcome = raw::sqs_round_trip(client, &url, bodies, sample_points, shape).await;
        let _ = client.delete_queue().queue_url(&url).send().await;
        raw_sqs = Some(outcome?);
        let table = "raw_point_accruals";
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} LIKE point_accruals"
        )))
        .execute(pool)
        .await?;
        raw_mysql = Some(
            raw::mysql_insert(
                pool,
                table,
                &records,
                args.batch_max_rows,
                args.raw_mysql_connections,
            )
            .await?,
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(pool)
            .await?;
    }

    let logs = std::env::temp_dir().join(format!("accrual-bench-{}", scratch.id));
    std::fs::create_dir_all(&logs)?;
    let http = reqwest::Client::new();
    let common = service_env(args, scratch);
    let sender_port = free_port()?;
    // Another port than the API's, or the sender refuses to start.
    let mut sender_ops_port = free_port()?;
    while sender_ops_port == sender_port {
        sender_ops_port = free_port()?;
    }
    let mut sender_env = common.clone();
    sender_env.extend([
        ("SENDER_ADDR".into(), format!("127.0.0.1:{sender_port}")),
        (
            "SENDER_OPS_ADDR".into(),
            format!("127.0.0.1:{sender_ops_port}"),
        ),
        ("ACCRUAL_API_KEYS".into(), format!("bench:{API_KEY}")),
        ("RATE_LIMIT_REQUESTS_PER_MINUTE".into(), "1000000".into()),
        ("RATE_LIMIT_POINTS_PER_MINUTE".into(), "1000000000".into()),
        ("DISPATCH_TASKS".into(), args.dispatch_tasks.to_string()),
        ("SEND_CONCURRENCY".into(), args.send_concurrency.to_string()),
        (
            "ACCRUAL_POINTS_PER_MESSAGE".into(),
            args.points_per_message.to_string(),
        ),
    ]);
    if let Some(horizon) = &args.dispatch_queue_horizon {
        sender_env.push(("DISPATCH_QUEUE_HORIZON".into(), horizon.clone()));
    }
    let mut listeners = Vec::with_capacity(args.listeners);
    for i in 0..args.listeners.max(1) {
        let port = free_port()?;
        let mut env = common.clone();
        env.extend([
            ("LISTENER_ADDR".into(), format!("127.0.0.1:{port}")),
            ("RECEIVE_TASKS".into(), args.receive_tasks.to_string()),
            ("BATCH_MAX_ROWS".into(), args.batch_max_rows.to_string()),
        ]);
        let name = format!("listener-{}", i + 1);
        let log = logs.join(format!("{name}.log"));
        listeners.push(
            Service::start(
                &name,
                &bin_dir.join("accrual-listener"),
                &env,
                port,
                log,
                &http,
            )
            .await?,
        );
    }
    if args.noisy.noisy_neighbor {
        sender_env.extend(noisy::sender_env(args));
    }
    let mut sender = Service::start(
        "sender",
        &bin_dir.join("accrual-sender"),
        &sender_env,
        sender_port,
        logs.join("sender.log"),
        &http,
    )
    .await?;
    sender.metrics_port = sender_ops_port;
    if args.noisy.noisy_neighbor {
        let run = noisy::Run {
            args,
            http: &http,
            pool,
            client,
            queues,
            logs: &logs,
            id: &scratch.id,
            sender_env: &sender_env,
        };
        return noisy::run(run, sender, listeners, workload).await;
    }

    let largest_body = workload.largest_body();
    let requests = workload.bodies.len();
    let Workload {
        bodies,
        amount_sum,
        points,
        members,
    } = workload;
    let outcome = pipeline::run(
        &http,
        &mut sender,
        &mut listeners,
        pipeline::Load {
            api_key: API_KEY.into(),
            bodies,
            concurrency: args.concurrency,
            points,
            timeout: Duration::from_secs(args.timeout_secs),
            measured: if args.accept_latency {
                args.measured_requests
            } else {
                0
            },
            drain: !(args.accept_latency && args.no_drain),
            others: None,
        },
    )
    .await
    .with_context(|| {
        format!(
            "the pipeline run failed; process logs are in {}",
            logs.display()
        )
    })?;
    // Usage up to the last write: the results phase below is measured on its own.
    let sender_use = sender.usage()?;
    let results = if args.no_results {
        None
    } else {
        let jobs = outcome.jobs.clone();
        Some(
            results::download(&http, &mut sender, API_KEY, &jobs)
                .await
                .with_context(|| {
                    format!(
                        "the results phase failed; process logs are in {}",
                        logs.display()
                    )
                })?,
        )
    };
    let listener_use = listeners
        .iter_mut()
        .map(Service::usage)
        .collect::<anyhow::Result<Vec<_>>>()?;
    sender.stop(Duration::from_secs(10));
    for listener in &mut listeners {
        listener.stop(Duration::from_secs(10));
    }

    let (rows, sum): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM point_accruals",
    )
    .fetch_one(pool)
    .await?;
    let dead_letters = sqs::approximate_depth(client, &queues.dlq).await?;
    let accept_latency = args
        .accept_latency
        .then(|| accept_latency::AcceptLatency::new(args, &outcome));
    if accept_latency.as_ref().is_some_and(|a| !a.drained) {
        eprintln!(
            "not drained (--no-drain): {rows} of {points} points in the ledger; not checked; process logs in {}",
            logs.display()
        );
    } else if rows != points as i64 || sum != amount_sum || dead_letters != 0 {
        bail!(
            "the ledger does not match what was sent: {rows} rows summing to {sum} and {dead_letters} dead letters, \
             expected {points} rows summing to {amount_sum} and none; process logs are in {}",
            logs.display()
        );
    } else {
        eprintln!(
            "ledger checked: {rows} rows, amounts sum to {sum}, no dead letters; process logs in {}",
            logs.display()
        );
    }
    Ok(report::Report {
        args: args.clone(),
        id: scratch.id.clone(),
        members: members.min(points),
        requests,
        largest_body,
        pipeline: outcome,
        sender: sender_use,
        listeners: listener_use,
        raw_sqs,
        raw_mysql,
        results,
        accept_latency,
        noisy: None,
    })
}

/// The environment every service gets: this run's database, queues and Redis prefix, static test
/// credentials, and quiet logs.
fn service_env(args: &Args, scratch: &Scratch) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", scratch.database.database_url.clone()),
        ("AWS_ENDPOINT_URL", args.aws_endpoint_url.clone()),
        ("AWS_REGION", scratch.sqs.aws_region.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("ACCRUAL_QUEUE", scratch.sqs.accrual_queue.clone()),
        ("ACCRUAL_DLQ", scratch.sqs.accrual_dlq.clone()),
        ("REDIS_URL", args.redis_url.clone()),
        ("REDIS_KEY_PREFIX", format!("accrual-bench:{}:", scratch.id)),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
