//! The accept-latency mode (`--accept-latency`, issue #17): how long a large request waits for its
//! `202` while earlier jobs are being dispatched and written.
//!
//! The run is the pipeline mode's (same processes, same ledger check), with a workload in two
//! parts: `--background-points` posted first (requests of `--items-per-request` items, up to
//! `--concurrency` at once), then, once they are all accepted and while they drain,
//! `--measured-requests` requests of `--items-per-request` items posted one after another, each
//! timed from the first byte sent to the `202` read. Those latencies, each one and their
//! p50/p99/max, are what this mode reports. With `--no-drain` the run ends at the last `202` and
//! the ledger is not checked (for runs that would drain for too long, e.g. one point per message
//! on LocalStack); the report then says how many points had been written by then.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Args;
use crate::pipeline::PipelineOutcome;
use accrual_benches::stats::{ms, percentile};

/// The accept latency of a 500,000-item request under load that #17 asks for.
const P99_GOAL: Duration = Duration::from_secs(2);

/// Settles the run's arguments for this mode: the points to generate (background plus measured),
/// no raw measurements and no results phase (neither is about acceptance), and a label that names
/// the mode, the emulator and the points per message, so the result file says what it measured.
pub fn prepare(mut args: Args) -> anyhow::Result<Args> {
    if args.measured_requests == 0 {
        anyhow::bail!("--measured-requests must be at least 1");
    }
    let per_request = args
        .items_per_request
        .clamp(1, accrual_core::wire::MAX_ITEMS_PER_REQUEST);
    args.items_per_request = per_request;
    // Whole requests, so the measured ones are all of full size.
    let background_requests = args.background_points.div_ceil(per_request);
    args.background_points = background_requests * per_request;
    args.points = args.background_points + args.measured_requests * per_request;
    args.raw_sqs_points = 0;
    args.no_results = true;
    // The file name adds the emulator.
    let mut label = format!("accept-latency-ppm{}", args.points_per_message);
    if args.no_drain {
        label.push_str("-nodrain");
    }
    if args.label != "run" {
        label = format!("{label}-{}", args.label);
    }
    args.label = label;
    Ok(args)
}

/// The measured requests' latencies and what they ran against.
pub struct AcceptLatency {
    /// In the order the requests were posted.
    pub samples: Vec<Duration>,
    /// Sorted, for percentiles.
    sorted: Vec<Duration>,
    pub background_points: usize,
    pub items_per_request: usize,
    pub endpoint: String,
    pub emulator: String,
    pub points_per_message: usize,
    pub drained: bool,
    /// Points written when the run ended.
    pub written: u64,
    pub points: usize,
}

impl AcceptLatency {
    pub fn new(args: &Args, outcome: &PipelineOutcome) -> Self {
        let mut sorted = outcome.measured_latencies.clone();
        sorted.sort();
        Self {
            samples: outcome.measured_latencies.clone(),
            sorted,
            background_points: args.background_points,
            items_per_request: args.items_per_request,
            endpoint: args.aws_endpoint_url.clone(),
            emulator: args.emulator().to_owned(),
            points_per_message: args.points_per_message,
            drained: !args.no_drain,
            written: outcome.written,
            points: args.points,
        }
    }

    fn p(&self, p: f64) -> Duration {
        percentile(&self.sorted, p)
    }

    fn met(&self) -> bool {
        self.p(0.99) <= P99_GOAL
    }

    /// Rows for the report's table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let samples = self
            .samples
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            (
                "mode".into(),
                format!(
                    "accept latency under load: {} background points, then {} requests of {} items one by one; {} ({}), {} points a message",
                    self.background_points,
                    self.samples.len(),
                    self.items_per_request,
                    self.emulator,
                    self.endpoint,
                    self.points_per_message
                ),
            ),
            (
                "measured accept latency p50 / p99 / max".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} ms",
                    ms(self.p(0.5)),
                    ms(self.p(0.99)),
                    ms(self.p(1.0))
                ),
            ),
            ("measured accept latencies (ms)".into(), samples),
            (
                "drained".into(),
                if self.drained {
                    format!("yes: all {} points written and checked", self.points)
                } else {
                    format!(
                        "no (--no-drain): {} of {} points written when the last 202 came; ledger not checked",
                        self.written, self.points
                    )
                },
            ),
            (
                "measured accept latency p99".into(),
                format!(
                    "{:.0} ms (target <= {} ms): {}",
                    ms(self.p(0.99)),
                    P99_GOAL.as_millis(),
                    if self.met() { "met" } else { "MISSED" }
                ),
            ),
        ]
    }

    /// The `accept_latency` section of the JSON.
    pub fn json(&self) -> Value {
        json!({
            "mode": "accept-latency",
            "sqs_endpoint": self.endpoint,
            "emulator": self.emulator,
            "points_per_message": self.points_per_message,
            "background_points": self.background_points,
            "measured_requests": self.samples.len(),
            "items_per_request": self.items_per_request,
            "latency_ms": {
                "p50": ms(self.p(0.5)).round(),
                "p99": ms(self.p(0.99)).round(),
                "max": ms(self.p(1.0)).round(),
                "samples": self.samples.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
            },
            "p99_goal_ms": P99_GOAL.as_millis() as u64,
            "p99_goal_met": self.met(),
            "drained": self.drained,
            "points_written_at_end": self.written,
            "ledger_checked": self.drained,
        })
    }
}
