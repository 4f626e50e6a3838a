//! The noisy-neighbor mode's figures and table (its JSON is `json.rs`), with its three goals: b's
//! jobs beside a's campaign (p95 at most max(5 s, 3 × b's p95 alone)), a's campaign beside b's
//! jobs (at least 0.90 of its rate alone), and each share window within ±10 % of the weight's
//! share.

use std::fmt::Write as _;
use std::time::Duration;

use accrual_benches::stats::{ms, percentile};

use super::shares::{Shares, TOLERANCE};
use crate::pipeline::PipelineOutcome;
use crate::report::Report;

/// b's p95 beside a may be this many times its p95 alone...
const B_P95_FACTOR: u32 = 3;
/// ...or this long, whichever is more.
const B_P95_FLOOR: Duration = Duration::from_secs(5);
/// a's rate beside b, as a share of its rate alone.
const A_RATIO_GOAL: f64 = 0.90;

pub struct NoisyNeighbor {
    /// Each of b's jobs, POST to all written, in posting order.
    pub b_alone: Vec<Duration>,
    pub b_with_a: Vec<Duration>,
    /// The same jobs' times from POST to all enqueued (dispatched to SQS).
    pub b_alone_enqueued: Vec<Duration>,
    pub b_with_a_enqueued: Vec<Duration>,
    pub a_alone: PipelineOutcome,
    pub a_with_b: PipelineOutcome,
    pub shares: Shares,
    /// What the sender was given for dispatch (`DISPATCH_*` and the like).
    pub sender_settings: Vec<(String, String)>,
    /// Posting and cancelling the reserved job that makes the members known.
    pub warm_up: Duration,
    /// Points in the ledger at the end, all checked.
    pub ledger_rows: u64,
}

pub(super) struct Goal {
    pub name: &'static str,
    pub goal: String,
    pub value: String,
    pub met: Option<bool>,
    /// Why it is not judged when `met` is `None`.
    pub unjudged: &'static str,
}

/// p50, p95 and max of some latencies.
pub(super) fn spread(samples: &[Duration]) -> [Duration; 3] {
    let mut sorted = samples.to_vec();
    sorted.sort();
    [0.5, 0.95, 1.0].map(|p| percentile(&sorted, p))
}

impl NoisyNeighbor {
    pub(super) fn rate(report: &Report, outcome: &PipelineOutcome) -> f64 {
        report.args.points as f64 / outcome.all_in_mysql.as_secs_f64()
    }

    pub(super) fn ratio(&self, report: &Report) -> f64 {
        Self::rate(report, &self.a_with_b) / Self::rate(report, &self.a_alone)
    }

    fn b_limit(&self) -> Duration {
        B_P95_FLOOR.max(spread(&self.b_alone)[1] * B_P95_FACTOR)
    }

    pub(super) fn goals(&self, report: &Report) -> Vec<Goal> {
        let b95 = spread(&self.b_with_a)[1];
        let ratio = self.ratio(report);
        let expected = self.shares.expected();
        let counted = self.shares.counted().count();
        vec![
            Goal {
                name: "b's p95 beside a",
                goal: format!(
                    "<= max({} s, {B_P95_FACTOR} x b's p95 alone) = {:.2} s",
                    B_P95_FLOOR.as_secs(),
                    self.b_limit().as_secs_f64()
                ),
                value: format!("{:.2} s ({} jobs)", b95.as_secs_f64(), self.b_with_a.len()),
                met: (!self.b_with_a.is_empty()).then_some(b95 <= self.b_limit()),
                unjudged: "b posted no job while a's campaign drained",
            },
            Goal {
                name: "a's rate beside b vs alone",
                goal: format!(">= {A_RATIO_GOAL:.2}"),
                value: format!("{ratio:.3}"),
                met: Some(ratio >= A_RATIO_GOAL),
                unjudged: "",
            },
            Goal {
                name: "share windows within 10 % of the weights",
                goal: format!(
                    "{} {:.1} %, {} {:.1} %, each within +-{:.0} % of that",
                    self.shares.clients[0],
                    expected[0] * 100.0,
                    self.shares.clients[1],
                    expected[1] * 100.0,
                    TOLERANCE * 100.0
                ),
                value: format!(
                    "{} of {counted} counted windows within",
                    self.shares.counted().filter(|w| w.met(expected)).count()
                ),
                met: self.shares.met(),
                unjudged: "no window in which both clients had a backlog throughout",
            },
        ]
    }

    pub fn table(&self, report: &Report) -> String {
        let args = &report.args;
        let n = &args.noisy;
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<44} {v}");
        };
        row("SQS emulator", args.emulator().to_owned());
        row(
            "mode",
            format!(
                "noisy neighbor: b's {}-point jobs every {} s; a's campaign of {} points ({} request(s) of <= {} items, {} at once); {} points a message; {} listener(s)",
                n.neighbor_points,
                n.neighbor_every,
                args.points,
                report.requests,
                args.items_per_request,
                args.concurrency,
                args.points_per_message,
                report.listeners.len()
            ),
        );
        let settings = self.sender_settings.iter().map(|(k, v)| format!("{k}={v}"));
        row(
            "sender dispatch settings",
            settings.collect::<Vec<_>>().join(" "),
        );
        row(
            "members warmed up (reserved job, cancelled)",
            format!("{} in {:.1} s", report.members, self.warm_up.as_secs_f64()),
        );
        let b = [
            ("b alone", &self.b_alone, &self.b_alone_enqueued),
            ("b beside a", &self.b_with_a, &self.b_with_a_enqueued),
        ];
        for (name, samples, enqueued) in b {
            let [p50, p95, max] = spread(samples);
            row(
                &format!("{name}: POST to written p50 / p95 / max"),
                format!(
                    "{:.0} / {:.0} / {:.0} ms ({} jobs)",
                    ms(p50),
                    ms(p95),
                    ms(max),
                    samples.len()
                ),
            );
            let [p50, p95, max] = spread(enqueued);
            row(
                &format!("{name}: POST to enqueued p50 / p95 / max"),
                format!("{:.0} / {:.0} / {:.0} ms", ms(p50), ms(p95), ms(max)),
            );
            let each = samples.iter().map(|d| format!("{:.0}", ms(*d)));
            row(
                &format!("{name}: each job (ms)"),
                each.collect::<Vec<_>>().join(", "),
            );
        }
        for (name, outcome) in [("a alone", &self.a_alone), ("a beside b", &self.a_with_b)] {
            row(
                &format!("{name}: end to end"),
                format!(
                    "{:.0} points/s (accepted {:.1} s, enqueued {:.1} s, in MySQL {:.1} s)",
                    Self::rate(report, outcome),
                    outcome.all_accepted.as_secs_f64(),
                    outcome.all_enqueued.as_secs_f64(),
                    outcome.all_in_mysql.as_secs_f64()
                ),
            );
        }
        row(
            "a beside b vs a alone",
            format!("{:.3}", self.ratio(report)),
        );
        let s = &self.shares;
        let expected = s.expected();
        row(
            "shares: campaigns at once",
            format!(
                "{} and {}, {} points each, weights {} and {}, all in MySQL after {:.1} s; windows of {:.1} s sampled every {:.2} s: {} counted, {} not (a client without a backlog)",
                s.clients[0],
                s.clients[1],
                s.points / 2,
                s.weights[0],
                s.weights[1],
                s.all_in_mysql.as_secs_f64(),
                s.window.as_secs_f64(),
                s.sample_every.as_secs_f64(),
                s.counted().count(),
                s.windows.len() - s.counted().count()
            ),
        );
        for w in s.counted() {
            let shares = w.shares();
            row(
                &format!(
                    "  window {:.1}-{:.1} s",
                    w.from.as_secs_f64(),
                    w.to.as_secs_f64()
                ),
                format!(
                    "{} {:.1} % ({:.2} x its weight's), {} {:.1} % ({:.2} x); {:.0} points: {}",
                    s.clients[0],
                    shares[0] * 100.0,
                    shares[0] / expected[0],
                    s.clients[1],
                    shares[1] * 100.0,
                    shares[1] / expected[1],
                    w.dispatched[0] + w.dispatched[1],
                    if w.met(expected) { "within" } else { "OUTSIDE" }
                ),
            );
        }
        row(
            "ledger",
            format!(
                "{} points written once, none dead-lettered",
                self.ledger_rows
            ),
        );
        for goal in self.goals(report) {
            let verdict = match goal.met {
                Some(true) => "met".to_owned(),
                Some(false) => "MISSED".to_owned(),
                None => format!("not judged: {}", goal.unjudged),
            };
            row(
                goal.name,
                format!("{} (target {}): {verdict}", goal.value, goal.goal),
            );
        }
        t
    }
}

pub(super) fn secs(d: Duration) -> f64 {
    rounded(d.as_secs_f64(), 2)
}

pub(super) fn rounded(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}
