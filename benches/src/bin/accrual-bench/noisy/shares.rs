//! Phase 4: two clients' campaigns at once, and each one's share of dispatch. The sender's
//! `accrual_sender_client_points_dispatched_total` and `accrual_sender_client_backlog_points` are
//! sampled every second (four times a window for windows under 4 s); from the first sample in which
//! both clients have a backlog, the samples are cut into windows of `--share-window`, and a window
//! counts only if both clients had a backlog at every sample in it (the points it dispatched were
//! then competed for).

use std::time::{Duration, Instant};

use accrual_benches::progress::ProgressBar;
use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::pipeline::{self, Service};

const DISPATCHED: &str = "accrual_sender_client_points_dispatched_total";
const BACKLOG: &str = "accrual_sender_client_backlog_points";
const WRITTEN: &str = "accrual_listener_points_written_total";
/// How far a client's share of a window may be from its weight's share, relative to the latter.
pub const TOLERANCE: f64 = 0.10;

/// The two campaigns of the phase.
pub struct Phase<'a> {
    pub http: &'a reqwest::Client,
    pub keys: [&'a str; 2],
    pub clients: [&'static str; 2],
    pub bodies: [Vec<Vec<u8>>; 2],
    /// Points in both campaigns together.
    pub points: usize,
    pub weights: [f64; 2],
    pub window: Duration,
    /// Requests in flight at once, for each client.
    pub concurrency: usize,
    pub timeout: Duration,
}

/// One reading of the sender's per-client series.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    dispatched: [f64; 2],
    backlog: [f64; 2],
}

#[derive(Debug, Clone)]
pub struct Window {
    /// Since both campaigns were first posted.
    pub from: Duration,
    pub to: Duration,
    /// Points dispatched in the window, by client.
    pub dispatched: [f64; 2],
    /// Both clients had a backlog at every sample of the window.
    pub both_backlogged: bool,
}

impl Window {
    /// Each client's share of the points the window dispatched.
    pub fn shares(&self) -> [f64; 2] {
        let total = self.dispatched[0] + self.dispatched[1];
        self.dispatched
            .map(|d| if total > 0.0 { d / total } else { 0.0 })
    }

    /// Whether the window is judged: both backlogged, and something was dispatched.
    pub fn counted(&self) -> bool {
        self.both_backlogged && self.dispatched[0] + self.dispatched[1] > 0.0
    }

    /// Each client's share within `TOLERANCE` of its expected share.
    pub fn met(&self, expected: [f64; 2]) -> bool {
        let shares = self.shares();
        (0..2).all(|i| (shares[i] / expected[i] - 1.0).abs() <= TOLERANCE)
    }
}

/// What the phase measured.
#[derive(Debug, Clone)]
pub struct Shares {
    pub clients: [&'static str; 2],
    pub weights: [f64; 2],
    pub window: Duration,
    pub sample_every: Duration,
    pub samples: usize,
    /// Points in both campaigns together.
    pub points: usize,
    /// From the first POST until every point of both was written.
    pub all_in_mysql: Duration,
    pub windows: Vec<Window>,
}

impl Shares {
    /// Each client's weight's share.
    pub fn expected(&self) -> [f64; 2] {
        let total = self.weights[0] + self.weights[1];
        self.weights.map(|w| w / total)
    }

    pub fn counted(&self) -> impl Iterator<Item = &Window> {
        self.windows.iter().filter(|w| w.counted())
    }

    /// Every counted window within the tolerance; `None` without a counted window.
    pub fn met(&self) -> Option<bool> {
        let expected = self.expected();
        let mut counted = self.counted().peekable();
        counted.peek()?;
        Some(counted.all(|w| w.met(expected)))
    }
}

/// Posts both campaigns at once and samples the sender until every point is written.
pub async fn run(
    phase: Phase<'_>,
    sender: &mut Service,
    listeners: &mut [Service],
) -> anyhow::Result<Shares> {
    let sample_every = Duration::from_secs(1).min(phase.window / 4);
    let per_window = (phase.window.as_secs_f64() / sample_every.as_secs_f64())
        .round()
        .max(1.0) as usize;
    let written_before = written(phase.http, listeners).await?;
    let url = format!("http://127.0.0.1:{}/v1/accruals", sender.port);
    let started = Instant::now();
    let mut posting = Vec::new();
    for (key, bodies) in phase.keys.into_iter().zip(phase.bodies) {
        let (http, url, key, concurrency) = (
            phase.http.clone(),
            url.clone(),
            key.to_owned(),
            phase.concurrency.max(1),
        );
        posting.push(Some(tokio::spawn(async move {
            stream::iter(bodies)
                .map(|body| pipeline::post(&http, &url, &key, body))
                .buffer_unordered(concurrency)
                .try_collect::<Vec<_>>()
                .await
        })));
    }
    let mut ticks = tokio::time::interval(sample_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    let mut bar = ProgressBar::new("shares");
    loop {
        ticks.tick().await;
        sender.check_alive()?;
        let text = scrape(phase.http, sender.metrics_port).await?;
        let series = |name: &str| phase.clients.map(|client| labelled(&text, name, client));
        samples.push(Sample {
            at: started.elapsed(),
            dispatched: series(DISPATCHED),
            backlog: series(BACKLOG),
        });
        for listener in listeners.iter_mut() {
            listener.check_alive()?;
        }
        let done = (written(phase.http, listeners).await? - written_before) as u64;
        for task in &mut posting {
            if let Some(finished) = task.take_if(|t| t.is_finished()) {
                finished.await.context("a posting task panicked")??;
            }
        }
        let posted = posting.iter().all(Option::is_none);
        if posted && done >= phase.points as u64 {
            bar.finish(done, phase.points as u64, "");
            break;
        }
        bar.update(done, phase.points as u64, "");
        if started.elapsed() > phase.timeout {
            bail!(
                "only {done} of {} points written in the shares phase",
                phase.points
            );
        }
    }
    let all_in_mysql = started.elapsed();
    Ok(Shares {
        clients: phase.clients,
        weights: phase.weights,
        window: phase.window,
        sample_every,
        samples: samples.len(),
        points: phase.points,
        all_in_mysql,
        windows: windows(&samples, per_window),
    })
}

/// Windows of `per_window` sample intervals from the first sample with both clients backlogged.
fn windows(samples: &[Sample], per_window: usize) -> Vec<Window> {
    let both = |s: &Sample| s.backlog[0] > 0.0 && s.backlog[1] > 0.0;
    let Some(mut start) = samples.iter().position(both) else {
        return Vec::new();
    };
    let mut windows = Vec::new();
    while start + per_window < samples.len() {
        let end = start + per_window;
        let (first, last) = (samples[start], samples[end]);
        windows.push(Window {
            from: first.at,
            to: last.at,
            dispatched: [0, 1].map(|i| last.dispatched[i] - first.dispatched[i]),
            both_backlogged: samples[start..=end].iter().all(both),
        });
        start = end;
    }
    windows
}

async fn scrape(http: &reqwest::Client, port: u16) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of `name{client_id="<client>"}`, 0 when the series is not there yet.
fn labelled(text: &str, name: &str, client: &str) -> f64 {
    let prefix = format!("{name}{{client_id=\"{client}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Points the listeners have written, all together.
async fn written(http: &reqwest::Client, listeners: &[Service]) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for listener in listeners {
        sum += listener.metric(http, WRITTEN).await?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, dispatched: [f64; 2], backlog: [f64; 2]) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            dispatched,
            backlog,
        }
    }

    #[test]
    fn windows_start_when_both_wait_and_count_only_while_both_do() {
        let samples = [
            sample(0, [0.0, 0.0], [100.0, 0.0]),
            sample(1, [2.0, 0.0], [100.0, 50.0]),
            sample(2, [6.0, 2.0], [90.0, 40.0]),
            sample(3, [10.0, 4.0], [80.0, 30.0]),
            sample(4, [14.0, 6.0], [70.0, 0.0]),
            sample(5, [16.0, 8.0], [60.0, 0.0]),
        ];
        let w = windows(&samples, 2);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].dispatched, [8.0, 4.0]);
        assert!(w[0].counted() && w[0].met([2.0 / 3.0, 1.0 / 3.0]));
        assert!(!w[1].counted(), "c's backlog ran out in the second window");
        assert!(!w[0].met([0.5, 0.5]));
    }

    #[test]
    fn a_series_is_read_by_its_client_label() {
        let text = "x_total{client_id=\"a\"} 12\nx_total{client_id=\"c\"} 3\n";
        assert_eq!(labelled(text, "x_total", "c"), 3.0);
        assert_eq!(labelled(text, "x_total", "b"), 0.0);
    }
}
