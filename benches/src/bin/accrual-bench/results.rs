//! The results phase: once every point is written, download each job's per-item results
//! (`GET /v1/jobs/{job_id}/results`, NDJSON) as a CRM would, checking that every item comes back
//! written, once, in request order, while sampling the sender's memory every 50 ms.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::pipeline::Service;

/// What downloading the results cost.
#[derive(Debug, Clone, Copy)]
pub struct ResultsOutcome {
    pub records: u64,
    pub bytes: u64,
    /// All jobs' results, one after the other.
    pub elapsed: Duration,
    /// The slowest single job's results.
    pub slowest_job: Duration,
    /// The sender's resident memory when it had just started (its idle figure), right before the
    /// downloads, and the largest sample during them, KiB.
    pub sender_idle_rss_kib: u64,
    pub sender_rss_before_kib: u64,
    pub sender_max_rss_during_kib: u64,
}

impl ResultsOutcome {
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// Downloads the results of `job_ids` (each of `items_per_job[i]` items) one job at a time.
pub async fn download(
    http: &reqwest::Client,
    sender: &mut Service,
    api_key: &str,
    jobs: &[(String, u64)],
) -> anyhow::Result<ResultsOutcome> {
    let sender_idle_rss_kib = sender.idle_rss_kib();
    let sender_rss_before_kib = sender.sample()?.rss_kib;
    let mut max_rss = sender_rss_before_kib;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut slowest_job = Duration::ZERO;
    let started = Instant::now();
    for (job_id, items) in jobs {
        let job_started = Instant::now();
        let url = format!("http://127.0.0.1:{}/v1/jobs/{job_id}/results", sender.port);
        let response = http
            .get(&url)
            .bearer_auth(api_key)
            .header("Accept", "application/x-ndjson")
            .send()
            .await
            .context("cannot reach the sender for results")?;
        if !response.status().is_success() {
            let status = response.status();
            bail!("results of {job_id}: {status} {}", response.text().await?);
        }
        let mut body = response.bytes_stream();
        let mut next_index = 0u64;
        let mut partial = Vec::new();
        let mut sampled = Instant::now();
        while let Some(piece) = body.next().await {
            let piece = piece.context("the results stream broke")?;
            bytes += piece.len() as u64;
            partial.extend_from_slice(&piece);
            let complete = partial
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            for line in partial[..complete]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                check_record(line, next_index)?;
                next_index += 1;
            }
            partial.drain(..complete);
            if sampled.elapsed() >= Duration::from_millis(50) {
                max_rss = max_rss.max(sender.sample()?.rss_kib);
                sampled = Instant::now();
            }
        }
        max_rss = max_rss.max(sender.sample()?.rss_kib);
        if next_index != *items || !partial.is_empty() {
            bail!("results of {job_id}: {next_index} records, expected {items}");
        }
        records += next_index;
        slowest_job = slowest_job.max(job_started.elapsed());
    }
    Ok(ResultsOutcome {
        records,
        bytes,
        elapsed: started.elapsed(),
        slowest_job,
        sender_idle_rss_kib,
        sender_rss_before_kib,
        sender_max_rss_during_kib: max_rss,
    })
}

/// Each record is the next item, written.
fn check_record(line: &[u8], index: u64) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Record<'a> {
        index: u64,
        outcome: &'a str,
    }
    let record: Record = serde_json::from_slice(line).context("a results line is not JSON")?;
    if record.index != index || record.outcome != "written" {
        bail!(
            "results record {} is {}, expected item {index} written",
            record.index,
            record.outcome
        );
    }
    Ok(())
}
