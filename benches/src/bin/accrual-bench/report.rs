//! The result of a run: a table for people and a JSON file for comparison between runs.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Args;
use crate::pipeline::{PipelineOutcome, ProcessUse};
use crate::raw::RawOutcome;
use crate::results::ResultsOutcome;
use accrual_benches::stats::{ms, percentile};

mod json;

pub struct Report {
    pub args: Args,
    pub id: String,
    pub members: usize,
    pub requests: usize,
    pub largest_body: usize,
    pub pipeline: PipelineOutcome,
    pub sender: ProcessUse,
    pub listeners: Vec<ProcessUse>,
    pub raw_sqs: Option<RawOutcome>,
    pub raw_mysql: Option<RawOutcome>,
    /// Downloading every job's per-item results afterwards.
    pub results: Option<ResultsOutcome>,
    /// The accept-latency mode's measured requests (`--accept-latency`).
    pub accept_latency: Option<crate::accept_latency::AcceptLatency>,
    /// The noisy-neighbor mode's phases (`--noisy-neighbor`): its table and JSON replace these.
    pub noisy: Option<crate::noisy::NoisyNeighbor>,
}

/// One of the targets and whether this run met it.
struct Target {
    name: &'static str,
    goal: String,
    value: String,
    met: Option<bool>,
}

const MIB: f64 = 1024.0;

impl Report {
    fn points(&self) -> usize {
        self.args.points
    }

    pub fn points_per_second(&self) -> f64 {
        self.points() as f64 / self.pipeline.all_in_mysql.as_secs_f64()
    }

    fn cpu_us_per_point(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.points() as f64
    }

    fn listeners_cpu(&self) -> f64 {
        self.listeners.iter().map(|l| l.cpu_seconds).sum()
    }

    fn own_cpu_us_per_point(&self) -> f64 {
        self.cpu_us_per_point(self.sender.cpu_seconds + self.listeners_cpu())
    }

    fn latency(&self, p: f64) -> Duration {
        percentile(&self.pipeline.accept_latencies, p)
    }

    fn calls_per_point(&self) -> f64 {
        self.pipeline.sqs_calls.total() as f64 / self.points() as f64
    }

    /// The slower of the two raw limits, in points per second.
    fn slower_raw_limit(&self) -> Option<f64> {
        match (self.raw_sqs, self.raw_mysql) {
            (Some(s), Some(m)) => Some(s.per_second().min(m.per_second())),
            _ => None,
        }
    }

    fn targets(&self) -> Vec<Target> {
        let rate = self.points_per_second();
        let mut targets = Vec::new();
        if self.args.points_per_message > 1 {
            // Packed messages (#7): SQS calls no longer dominate, so the bar is absolute.
            targets.push(Target {
                name: "end to end (packed)",
                goal: ">= 16,700 points/s (2,000,000 in 2 min)".into(),
                value: format!("{rate:.0} points/s"),
                met: Some(rate >= 16_700.0),
            });
            let cpu = self.own_cpu_us_per_point();
            targets.push(Target {
                name: "own CPU per point (packed)",
                goal: "<= 10 us".into(),
                value: format!("{cpu:.1} us"),
                met: Some(cpu <= 10.0),
            });
            if let Some(limit) = self.slower_raw_limit() {
                let ratio = rate / limit;
                targets.push(Target {
                    name: "end to end vs slower raw limit (packed)",
                    goal: ">= 0.60".into(),
                    value: format!("{ratio:.2}"),
                    met: Some(ratio >= 0.6),
                });
            }
        } else if let Some(sqs) = self.raw_sqs {
            let ratio = rate / sqs.per_second();
            targets.push(Target {
                name: "end to end vs raw SQS round trip",
                goal: ">= 0.80".into(),
                value: format!("{ratio:.2}"),
                met: Some(ratio >= 0.8),
            });
            let ratio = self.own_cpu_us_per_point() / sqs.cpu_us_per_item();
            targets.push(Target {
                name: "own CPU vs raw SDK CPU per point",
                goal: "<= 1.30".into(),
                value: format!("{ratio:.2}"),
                met: Some(ratio <= 1.3),
            });
        }
        // The target is about one request of 500,000 items; with more requests the peak also holds
        // what the earlier jobs' dispatch and the allocator kept, so it is shown but not judged.
        let bulk = self.requests == 1 && self.args.items_per_request.min(self.points()) >= 500_000;
        let ratio =
            self.pipeline.sender_peak_rss_accepting_kib as f64 * 1024.0 / self.largest_body as f64;
        targets.push(Target {
            name: "sender peak RSS vs request body",
            goal: "<= 3.0 (one 500,000-item request)".into(),
            value: format!("{ratio:.2}"),
            met: bulk.then_some(ratio <= 3.0),
        });
        let listener_rss = self
            .listeners
            .iter()
            .map(|l| l.max_sampled_rss_kib)
            .max()
            .unwrap_or(0) as f64
            / MIB;
        targets.push(Target {
            name: "listener RSS (largest sample)",
            goal: "<= 150 MiB".into(),
            value: format!("{listener_rss:.0} MiB"),
            met: Some(listener_rss <= 150.0),
        });
        targets
    }

    pub fn table(&self) -> String {
        if let Some(noisy) = &self.noisy {
            return noisy.table(self);
        }
        let p = &self.pipeline;
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<44} {v}");
        };
        row("SQS emulator", self.args.emulator().to_owned());
        row(
            "workload",
            format!(
                "{} points, {} members, {} request(s) of <= {} items, {} at once, {} listener(s)",
                self.points(),
                self.members,
                self.requests,
                self.args.items_per_request,
                self.args.concurrency,
                self.listeners.len()
            ),
        );
        row(
            "accept latency p50 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                ms(self.latency(0.5)),
                ms(self.latency(0.99)),
                ms(self.latency(1.0))
            ),
        );
        row("all accepted after", secs(p.all_accepted));
        row("all enqueued after", secs(p.all_enqueued));
        row("all in MySQL after", secs(p.all_in_mysql));
        row(
            "end to end",
            format!("{:.0} points/s", self.points_per_second()),
        );
        row(
            "points received again (written once)",
            p.duplicates.to_string(),
        );
        row(
            "SQS calls per point (send + receive + delete)",
            format!(
                "{:.3} ({} + {} + {} calls, {} points a message)",
                self.calls_per_point(),
                p.sqs_calls.send,
                p.sqs_calls.receive,
                p.sqs_calls.delete,
                self.args.points_per_message
            ),
        );
        for u in std::iter::once(&self.sender).chain(&self.listeners) {
            row(
                &format!("{} CPU / peak RSS / largest RSS sample", u.name),
                format!(
                    "{:.1} s ({:.1} us/point) / {:.0} MiB / {:.0} MiB",
                    u.cpu_seconds,
                    self.cpu_us_per_point(u.cpu_seconds),
                    u.peak_rss_kib as f64 / MIB,
                    u.max_sampled_rss_kib as f64 / MIB
                ),
            );
        }
        row(
            "our CPU per point (sender + listeners)",
            format!(
                "{:.1} + {:.1} = {:.1} us",
                self.cpu_us_per_point(self.sender.cpu_seconds),
                self.cpu_us_per_point(self.listeners_cpu()),
                self.own_cpu_us_per_point()
            ),
        );
        row(
            "sender peak RSS after accepting",
            format!(
                "{:.0} MiB for a largest body of {:.1} MiB",
                self.pipeline.sender_peak_rss_accepting_kib as f64 / MIB,
                self.largest_body as f64 / MIB / MIB
            ),
        );
        if let Some(s) = self.raw_sqs {
            row(
                "raw SQS round trip",
                format!(
                    "{:.0} points/s, SDK CPU {:.1} us/point, {:.3} calls/point ({} points)",
                    s.per_second(),
                    s.cpu_us_per_item(),
                    s.calls_per_item(),
                    s.items
                ),
            );
        }
        if let Some(m) = self.raw_mysql {
            row(
                "raw MySQL multi-row insert",
                format!(
                    "{:.0} rows/s, client CPU {:.1} us/row ({} rows)",
                    m.per_second(),
                    m.cpu_us_per_item(),
                    m.items
                ),
            );
            row(
                "end to end vs raw MySQL",
                format!("{:.2}", self.points_per_second() / m.per_second()),
            );
        }
        if let Some(r) = self.results {
            row(
                "per-item results downloaded (NDJSON)",
                format!(
                    "{} records in {:.2} s ({:.0} records/s, slowest job {:.2} s, {:.0} MiB)",
                    r.records,
                    r.elapsed.as_secs_f64(),
                    r.records_per_second(),
                    r.slowest_job.as_secs_f64(),
                    r.bytes as f64 / MIB / MIB
                ),
            );
            row(
                "sender RSS idle / before results / max during",
                format!(
                    "{:.0} / {:.0} / {:.0} MiB ({:+.0} MiB above idle)",
                    r.sender_idle_rss_kib as f64 / MIB,
                    r.sender_rss_before_kib as f64 / MIB,
                    r.sender_max_rss_during_kib as f64 / MIB,
                    (r.sender_max_rss_during_kib as f64 - r.sender_idle_rss_kib as f64) / MIB
                ),
            );
        }
        for (k, v) in self.accept_latency.iter().flat_map(|a| a.rows()) {
            row(&k, v);
        }
        for target in self.targets() {
            let verdict = match target.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not judged: the target is for a run of one 500,000-item request",
            };
            row(
                target.name,
                format!("{} (target {}): {verdict}", target.value, target.goal),
            );
        }
        t
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}
