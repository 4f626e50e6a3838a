//! Client b, the quiet neighbor: a small job every `--neighbor-every` seconds, each followed on its
//! job view (`GET /v1/jobs/{job_id}`, every 50 ms) until all its points are written, and timed
//! from the moment its POST began: until the view counts them all enqueued (dispatched to SQS),
//! and until it counts them all written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrual_benches::workload::Workload;
use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use super::{KEY_B, NoisyArgs};
use crate::pipeline::{self, Others};

const POLL: Duration = Duration::from_millis(50);

/// When client b posts, and what it tells whoever else counts the listeners' work.
pub struct Plan {
    pub http: reqwest::Client,
    /// The sender's API, `http://127.0.0.1:<port>`.
    pub base: String,
    pub args: NoisyArgs,
    /// When the first job is posted; the next ones follow every `--neighbor-every`.
    pub first_after: Duration,
    /// How many jobs; `None`: until `stop`.
    pub jobs: Option<usize>,
    /// No job is posted once it is cancelled; the jobs posted are still followed to the end.
    pub stop: CancellationToken,
    /// Counts b's points enqueued and written as the job views show them.
    pub others: Option<Arc<Others>>,
    pub timeout: Duration,
}

/// Client b's jobs of one phase.
pub struct Jobs {
    /// From each POST to all its points written, in the order the jobs were posted.
    pub latencies: Vec<Duration>,
    /// From each POST to all its points enqueued (seen at the same polls).
    pub enqueued: Vec<Duration>,
    pub points: u64,
    pub amount_sum: i64,
}

/// Posts b's jobs as planned and waits until each one is written.
pub async fn post(plan: Plan) -> anyhow::Result<Jobs> {
    let started = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(plan.args.neighbor_every);
    let size = plan.args.neighbor_points;
    let mut followers = Vec::new();
    let mut amount_sum = 0;
    for k in 0.. {
        if plan.jobs.is_some_and(|jobs| k >= jobs) {
            break;
        }
        let at = started + plan.first_after + every * k as u32;
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = plan.stop.cancelled() => break,
        }
        let workload = Workload::generate(size, size, size);
        amount_sum += workload.amount_sum;
        let body = workload.bodies.into_iter().next().unwrap_or_default();
        followers.push(tokio::spawn(follow(
            plan.http.clone(),
            plan.base.clone(),
            body,
            plan.others.clone(),
            plan.timeout,
        )));
    }
    let (mut latencies, mut enqueued) = (Vec::new(), Vec::new());
    for follower in followers {
        let (until_enqueued, until_written) = follower
            .await
            .context("a follower of b's jobs panicked")??;
        enqueued.push(until_enqueued);
        latencies.push(until_written);
    }
    Ok(Jobs {
        points: (latencies.len() * size) as u64,
        latencies,
        enqueued,
        amount_sum,
    })
}

/// Posts one of b's jobs and follows its view until every point is written: the times until all
/// were enqueued and until all were written.
async fn follow(
    http: reqwest::Client,
    base: String,
    body: Vec<u8>,
    others: Option<Arc<Others>>,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let url = format!("{base}/v1/accruals");
    let (_, (job_id, _)) = pipeline::post(&http, &url, KEY_B, body).await?;
    let url = format!("{base}/v1/jobs/{job_id}");
    let (mut enqueued, mut written) = (0, 0);
    let mut all_enqueued = None;
    loop {
        let response = http
            .get(&url)
            .bearer_auth(KEY_B)
            .send()
            .await
            .context("cannot reach the sender for b's job")?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("b's job {job_id}: {status} {text}");
        }
        let view: serde_json::Value =
            serde_json::from_str(&text).context("the job view is not JSON")?;
        let count = |field: &str| view[field].as_u64().unwrap_or(0);
        let (now_enqueued, now_written) = (count("enqueued"), count("written"));
        if let Some(others) = &others {
            others.add(
                now_enqueued.saturating_sub(enqueued),
                now_written.saturating_sub(written),
            );
        }
        enqueued = enqueued.max(now_enqueued);
        written = written.max(now_written);
        let dead = count("dead_lettered");
        if dead > 0 {
            bail!("b's job {job_id}: {dead} points dead-lettered");
        }
        let total = count("total");
        let settled = matches!(view["status"].as_str(), Some("completed"));
        if all_enqueued.is_none() && (settled || (total > 0 && enqueued >= total)) {
            all_enqueued = Some(started.elapsed());
        }
        if let Some(until_enqueued) = all_enqueued
            && (settled || written >= total)
        {
            return Ok((until_enqueued, started.elapsed()));
        }
        if started.elapsed() > timeout {
            bail!(
                "b's job {job_id}: {written} of {total} points written after {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
