//! The noisy-neighbor mode (`--noisy-neighbor`): does a client's small job still go through
//! quickly while another client's campaign drains, and does each client get its weighted share of
//! dispatch? One sender knows three clients, `a`, `b` and `c`, each with a key of its own and
//! weighed by `--client-weights` (`DISPATCH_CLIENT_WEIGHTS`); the usual listeners write. Four
//! phases, one after the other:
//!
//! 1. **b alone**: client b posts `--neighbor-jobs` jobs of `--neighbor-points` points, one every
//!    `--neighbor-every` seconds; each is timed from its POST until its job view counts all its
//!    points enqueued, and all written.
//! 2. **a alone**: client a's campaign (`--points`), posted and followed as the pipeline mode does.
//! 3. **a with b**: a's campaign again and, while it drains, b's jobs as in phase 1 (the first one
//!    `--neighbor-every` after a's first POST, the last one before a's last point is written).
//! 4. **shares**: a's and c's campaigns (`--share-points` each) posted at once; the sender's
//!    per-client series are sampled and each client's share of the points dispatched in each
//!    `--share-window` is set against its weight's share (`shares.rs`).
//!
//! Before phase 2, client a posts one point for each member as a reserved job and cancels it, so
//! both of a's campaigns find every member known (the first would otherwise pay for inserting them
//! and look slower than the second). The ledger is checked at the end: every point of every phase
//! written once, none dead-lettered.

mod campaign;
mod json;
mod neighbor;
mod report;
mod settings;
mod shares;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use accrual_benches::workload::Workload;
use accrual_core::sqs;
use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Others, Service};
use crate::{Args, report::Report};
pub use report::NoisyNeighbor;
use settings::{KEY_A, KEY_B, KEY_C};
pub use settings::{NoisyArgs, prepare, sender_env};

/// The run's processes are started; what else the phases need.
pub struct Run<'a> {
    pub args: &'a Args,
    pub http: &'a reqwest::Client,
    pub pool: &'a sqlx::MySqlPool,
    pub client: &'a aws_sdk_sqs::Client,
    pub queues: &'a sqs::QueueUrls,
    pub logs: &'a Path,
    pub id: &'a str,
    /// The sender's environment (on top of the bench's own), for the record.
    pub sender_env: &'a [(String, String)],
}

/// Runs the four phases; `a` is client a's campaign for phase 2.
pub async fn run(
    run: Run<'_>,
    mut sender: Service,
    mut listeners: Vec<Service>,
    a: Workload,
) -> anyhow::Result<Report> {
    let (args, http, n) = (run.args, run.http, &run.args.noisy);
    let logs = || format!("process logs are in {}", run.logs.display());
    let base = format!("http://127.0.0.1:{}", sender.port);
    let timeout = Duration::from_secs(args.timeout_secs);
    let (requests, largest_body) = (a.bodies.len(), a.largest_body());
    let mut rows = 0u64;
    let mut amount_sum = 0i64;

    let warm_up = campaign::warm_members(http, &base, args)
        .await
        .with_context(logs)?;
    eprintln!(
        "phase 1/4, b alone: {} jobs of {} points, one every {} s",
        n.neighbor_jobs, n.neighbor_points, n.neighbor_every
    );
    let b_alone = neighbor::post(neighbor::Plan {
        http: http.clone(),
        base: base.clone(),
        args: n.clone(),
        first_after: Duration::ZERO,
        jobs: Some(n.neighbor_jobs),
        stop: CancellationToken::new(),
        others: None,
        timeout,
    })
    .await
    .with_context(logs)?;
    (rows, amount_sum) = (rows + b_alone.points, amount_sum + b_alone.amount_sum);

    eprintln!("phase 2/4, a alone: {} points", args.points);
    amount_sum += a.amount_sum;
    let a_alone = campaign::post(http, &mut sender, &mut listeners, args, a.bodies, None)
        .await
        .with_context(logs)?;
    rows += args.points as u64;

    eprintln!(
        "phase 3/4, a with b: {} points, and b's jobs every {} s while they drain",
        args.points, n.neighbor_every
    );
    let a = campaign::workload(args, args.points, "a3");
    amount_sum += a.amount_sum;
    let others = Arc::new(Others::default());
    let stop = CancellationToken::new();
    let b_task = tokio::spawn(neighbor::post(neighbor::Plan {
        http: http.clone(),
        base: base.clone(),
        args: n.clone(),
        first_after: n.every(),
        jobs: None,
        stop: stop.clone(),
        others: Some(others.clone()),
        timeout,
    }));
    let a_with_b = campaign::post(
        http,
        &mut sender,
        &mut listeners,
        args,
        a.bodies,
        Some(others),
    )
    .await;
    stop.cancel();
    let b_with_a = b_task.await.context("client b's task panicked")?;
    let (a_with_b, b_with_a) = (a_with_b.with_context(logs)?, b_with_a.with_context(logs)?);
    rows += args.points as u64 + b_with_a.points;
    amount_sum += b_with_a.amount_sum;

    eprintln!(
        "phase 4/4, shares: a's and c's campaigns of {} points each at once, weights {}",
        n.share_points, n.client_weights
    );
    let (wa, wc) = (
        campaign::workload(args, n.share_points, "a4"),
        campaign::workload(args, n.share_points, "c4"),
    );
    amount_sum += wa.amount_sum + wc.amount_sum;
    rows += 2 * n.share_points as u64;
    let shares = shares::run(
        shares::Phase {
            http,
            keys: [KEY_A, KEY_C],
            clients: ["a", "c"],
            bodies: [wa.bodies, wc.bodies],
            points: 2 * n.share_points,
            weights: [n.weight("a"), n.weight("c")],
            window: Duration::from_secs_f64(n.share_window),
            concurrency: args.concurrency,
            timeout,
        },
        &mut sender,
        &mut listeners,
    )
    .await
    .with_context(logs)?;

    let sender_use = sender.usage()?;
    let listener_use = listeners
        .iter_mut()
        .map(Service::usage)
        .collect::<anyhow::Result<Vec<_>>>()?;
    sender.stop(Duration::from_secs(10));
    for listener in &mut listeners {
        listener.stop(Duration::from_secs(10));
    }
    let (found, sum): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM point_accruals",
    )
    .fetch_one(run.pool)
    .await?;
    let dead_letters = sqs::approximate_depth(run.client, &run.queues.dlq).await?;
    if found != rows as i64 || sum != amount_sum || dead_letters != 0 {
        bail!(
            "the ledger does not match what was sent: {found} rows summing to {sum} and {dead_letters} dead letters, \
             expected {rows} rows summing to {amount_sum} and none; {}",
            logs()
        );
    }
    eprintln!(
        "ledger checked: {found} rows, amounts sum to {sum}, no dead letters; {}",
        logs()
    );
    Ok(Report {
        args: args.clone(),
        id: run.id.to_owned(),
        members: args.members.min(args.points),
        requests,
        largest_body,
        pipeline: a_alone.clone(),
        sender: sender_use,
        listeners: listener_use,
        raw_sqs: None,
        raw_mysql: None,
        results: None,
        accept_latency: None,
        noisy: Some(NoisyNeighbor {
            b_alone: b_alone.latencies,
            b_with_a: b_with_a.latencies,
            b_alone_enqueued: b_alone.enqueued,
            b_with_a_enqueued: b_with_a.enqueued,
            a_alone,
            a_with_b,
            shares,
            sender_settings: settings::sender_settings(run.sender_env),
            warm_up,
            ledger_rows: rows,
        }),
    })
}
