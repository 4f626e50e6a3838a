//! Client a's campaigns: posted and followed as the pipeline mode does, generated like the run's,
//! and the warm-up that makes their members known before the first one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrual_benches::workload::Workload;
use anyhow::bail;

use super::KEY_A;
use crate::Args;
use crate::pipeline::{self, Others, PipelineOutcome, Service};

/// Client a's campaign, posted and followed as the pipeline mode does.
pub async fn post(
    http: &reqwest::Client,
    sender: &mut Service,
    listeners: &mut [Service],
    args: &Args,
    bodies: Vec<Vec<u8>>,
    others: Option<Arc<Others>>,
) -> anyhow::Result<PipelineOutcome> {
    let load = pipeline::Load {
        api_key: KEY_A.into(),
        bodies,
        concurrency: args.concurrency,
        points: args.points,
        timeout: Duration::from_secs(args.timeout_secs),
        measured: 0,
        drain: true,
        others,
    };
    pipeline::run(http, sender, listeners, load).await
}

/// A campaign of `points` like the run's (`--members`, `--items-per-request`), with external ids
/// of its own when the run gives items ids.
pub fn workload(args: &Args, points: usize, phase: &str) -> Workload {
    let prefix = args
        .external_ids
        .then(|| format!("noisy-{phase}-{}", chrono::Utc::now().timestamp_micros()));
    Workload::generate_with_ids(
        points,
        args.members,
        args.items_per_request,
        prefix.as_deref(),
    )
}

/// Client a posts one point for each member as a job reserved for tomorrow, then cancels it: the
/// members are then in MySQL and in the sender's set of known members for both of a's campaigns.
pub async fn warm_members(
    http: &reqwest::Client,
    base: &str,
    args: &Args,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let members = args.members.clamp(1, args.points);
    eprintln!("warming up: {members} members in a reserved job of client a, then cancelled");
    let reserve_at = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let url = format!("{base}/v1/accruals?reserve_at={reserve_at}");
    let workload = Workload::generate(members, members, args.items_per_request);
    for body in workload.bodies {
        let (_, (job_id, _)) = pipeline::post(http, &url, KEY_A, body).await?;
        let response = http
            .delete(format!("{base}/v1/jobs/{job_id}"))
            .bearer_auth(KEY_A)
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            bail!(
                "cancelling the warm-up job {job_id}: {status} {}",
                response.text().await?
            );
        }
    }
    Ok(started.elapsed())
}
