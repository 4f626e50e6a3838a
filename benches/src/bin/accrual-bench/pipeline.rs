//! The pipeline itself: release builds of one sender and L listeners as processes, the workload
//! posted to the sender, and the ledger followed until every point is in MySQL.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use accrual_benches::proc_stats::{self, ProcStats};
use accrual_benches::progress::ProgressBar;
use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};

/// One of our processes, killed if still running when dropped.
pub struct Service {
    pub name: String,
    child: Child,
    pub port: u16,
    /// Where its `/metrics` is: the listener's `port`, the sender's operations port.
    pub metrics_port: u16,
    log: PathBuf,
    /// CPU and memory when the measured work began.
    baseline: ProcStats,
    /// Largest VmRSS seen by the samples taken during the run, KiB.
    pub max_sampled_rss_kib: u64,
}

/// What one process used during the run.
#[derive(Debug, Clone)]
pub struct ProcessUse {
    pub name: String,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub max_sampled_rss_kib: u64,
}

impl Service {
    /// Starts `exe` with `env` (on top of this process's environment), its output going to `log`,
    /// and waits until it answers `/healthz` on `port`.
    pub async fn start(
        name: &str,
        exe: &Path,
        env: &[(String, String)],
        port: u16,
        log: PathBuf,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(exe)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut service = Self {
            name: name.to_owned(),
            child,
            port,
            metrics_port: port,
            log,
            baseline: ProcStats::default(),
            max_sampled_rss_kib: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            service.check_alive()?;
            let health = http
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not answer /healthz within 60 s; see {}",
                    service.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        service.baseline = service.stats()?;
        Ok(service)
    }

    /// An error naming the log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// Resident memory when the process had started and answered its health check, KiB.
    pub fn idle_rss_kib(&self) -> u64 {
        self.baseline.rss_kib
    }

    pub fn stats(&self) -> anyhow::Result<ProcStats> {
        proc_stats::read(self.child.id())
            .with_context(|| format!("cannot read /proc for {}", self.name))
    }

    /// Takes a memory sample.
    pub fn sample(&mut self) -> anyhow::Result<ProcStats> {
        let s = self.stats()?;
        self.max_sampled_rss_kib = self.max_sampled_rss_kib.max(s.rss_kib);
        Ok(s)
    }

    /// The value of an unlabelled sample on this process's `/metrics`.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<f64> {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{} has no metric {name}", self.name))
    }

    /// CPU since the baseline and memory peaks, read now.
    pub fn usage(&mut self) -> anyhow::Result<ProcessUse> {
        let now = self.sample()?;
        Ok(ProcessUse {
            name: self.name.clone(),
            cpu_seconds: now.cpu_seconds - self.baseline.cpu_seconds,
            peak_rss_kib: now.peak_rss_kib,
            max_sampled_rss_kib: self.max_sampled_rss_kib,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Timings of one pipeline run, all measured from the first request.
#[derive(Debug, Clone)]
pub struct PipelineOutcome {
    /// Each request's latency until its 202.
    pub accept_latencies: Vec<Duration>,
    /// The latencies of the last `Load::measured` requests, in the order they were posted.
    pub measured_latencies: Vec<Duration>,
    /// Points the listeners had written when the run ended (all of them unless `Load::drain` was
    /// off).
    pub written: u64,
    /// Each job made, with its number of items.
    pub jobs: Vec<(String, u64)>,
    pub all_accepted: Duration,
    pub all_enqueued: Duration,
    pub all_in_mysql: Duration,
    /// The sender's VmHWM right after the last 202, KiB.
    pub sender_peak_rss_accepting_kib: u64,
    /// Points the listeners received again after they were written (redeliveries, re-sent chunks).
    pub duplicates: u64,
    /// SQS calls until the last point was in MySQL: the sender's SendMessageBatch and the
    /// listeners' ReceiveMessage (empty long polls included) and DeleteMessageBatch.
    pub sqs_calls: SqsCalls,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SqsCalls {
    pub send: u64,
    pub receive: u64,
    pub delete: u64,
}

impl SqsCalls {
    pub fn total(&self) -> u64 {
        self.send + self.receive + self.delete
    }
}

/// The requests of a run and when to give up on them.
pub struct Load {
    pub api_key: String,
    pub bodies: Vec<Vec<u8>>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Points in all the bodies together.
    pub points: usize,
    pub timeout: Duration,
    /// The last `measured` bodies are posted one after another once every earlier one is
    /// accepted (the accept-latency mode); their latencies are kept apart.
    pub measured: usize,
    /// Follow the points until all are written; without it the run ends with the last 202.
    pub drain: bool,
    /// Another client's points dispatched and written while this run goes on (the noisy-neighbor
    /// mode's client B), counted by whoever follows them and left out of this run's counts.
    pub others: Option<Arc<Others>>,
}

/// Points of other jobs than the run's own, as their follower has seen them so far.
#[derive(Debug, Default)]
pub struct Others {
    enqueued: AtomicU64,
    written: AtomicU64,
}

impl Others {
    pub fn add(&self, enqueued: u64, written: u64) {
        self.enqueued.fetch_add(enqueued, Ordering::Relaxed);
        self.written.fetch_add(written, Ordering::Relaxed);
    }

    fn enqueued(&self) -> f64 {
        self.enqueued.load(Ordering::Relaxed) as f64
    }

    fn written(&self) -> f64 {
        self.written.load(Ordering::Relaxed) as f64
    }
}

/// Posts the bodies (at most `concurrency` requests at once, the last `measured` one by one after
/// the rest) and follows the points until the listeners have written `points` of them (or, without
/// `drain`, until the last 202), sampling the processes twice a second. The sender's and the
/// listeners' counts start from what they held when the run began, less `Load::others`; the SQS
/// calls and duplicates are the processes' totals.
pub async fn run(
    http: &reqwest::Client,
    sender: &mut Service,
    listeners: &mut [Service],
    load: Load,
) -> anyhow::Result<PipelineOutcome> {
    let Load {
        api_key,
        bodies,
        concurrency,
        points,
        timeout,
        measured,
        drain,
        others,
    } = load;
    let others = others.unwrap_or_default();
    let dispatched_before = sender
        .metric(http, "accrual_sender_points_dispatched_total")
        .await?;
    let mut written_before = 0.0;
    for listener in listeners.iter() {
        written_before += listener
            .metric(http, "accrual_listener_points_written_total")
            .await?;
    }
    let url = format!("http://127.0.0.1:{}/v1/accruals", sender.port);
    let requests = bodies.len();
    let started = Instant::now();
    let posting = {
        let (http, url, key) = (http.clone(), url.clone(), api_key);
        let mut background = bodies;
        let measured_bodies = background.split_off(background.len() - measured.min(requests));
        tokio::spawn(async move {
            let mut accepted = stream::iter(background)
                .map(|body| post(&http, &url, &key, body))
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<Accepted>>()
                .await?;
            // One at a time, each timed alone, while the earlier jobs are dispatched and written.
            let mut measured_latencies = Vec::with_capacity(measured_bodies.len());
            for body in measured_bodies {
                let one = post(&http, &url, &key, body).await?;
                measured_latencies.push(one.0);
                accepted.push(one);
            }
            anyhow::Ok((accepted, measured_latencies, started.elapsed()))
        })
    };
    let mut posting = Some(posting);
    let mut accepted: Option<(Vec<Accepted>, Vec<Duration>, Duration, u64)> = None;
    let mut enqueued_at = None;
    let mut bar = ProgressBar::new("pipeline");
    let last_written = loop {
        if let Some(task) = posting.take_if(|t| t.is_finished()) {
            let (latencies, measured, elapsed) =
                task.await.context("the posting task panicked")??;
            let peak = sender.sample()?.peak_rss_kib;
            accepted = Some((latencies, measured, elapsed, peak));
        }
        sender.check_alive()?;
        sender.sample()?;
        let dispatched = sender
            .metric(http, "accrual_sender_points_dispatched_total")
            .await?
            - dispatched_before
            - others.enqueued();
        if enqueued_at.is_none() && dispatched as usize >= points {
            enqueued_at = Some(started.elapsed());
        }
        let mut written = 0.0;
        for listener in listeners.iter_mut() {
            listener.check_alive()?;
            listener.sample()?;
            written += listener
                .metric(http, "accrual_listener_points_written_total")
                .await?;
        }
        let written = (written - written_before - others.written()).max(0.0) as u64;
        let accepted_requests = if accepted.is_some() { requests } else { 0 };
        let extra = format!(
            " | accepted {accepted_requests}/{requests} requests, enqueued {dispatched:.0}"
        );
        if (written as usize >= points || !drain) && accepted.is_some() {
            bar.finish(written, points as u64, &extra);
            break written;
        }
        bar.update(written, points as u64, &extra);
        if started.elapsed() > timeout {
            bail!(
                "only {written} of {points} points reached MySQL within {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_in_mysql = started.elapsed();
    let mut duplicates = 0.0;
    let mut calls = SqsCalls {
        send: sender
            .metric(http, "accrual_sender_sqs_send_calls_total")
            .await? as u64,
        ..SqsCalls::default()
    };
    for listener in listeners.iter() {
        duplicates += listener
            .metric(http, "accrual_listener_points_duplicate_total")
            .await?;
        calls.receive += listener
            .metric(http, "accrual_listener_sqs_receive_calls_total")
            .await? as u64;
        calls.delete += listener
            .metric(http, "accrual_listener_sqs_delete_calls_total")
            .await? as u64;
    }
    let (accepted, measured_latencies, all_accepted, sender_peak_rss_accepting_kib) =
        accepted.context("the requests were not all accepted")?;
    let (mut accept_latencies, jobs): (Vec<Duration>, Vec<(String, u64)>) =
        accepted.into_iter().unzip();
    accept_latencies.sort();
    Ok(PipelineOutcome {
        accept_latencies,
        measured_latencies,
        written: last_written,
        jobs,
        all_accepted,
        all_enqueued: enqueued_at.unwrap_or(all_in_mysql),
        all_in_mysql,
        sender_peak_rss_accepting_kib,
        duplicates: duplicates as u64,
        sqs_calls: calls,
    })
}

/// A request's latency until its 202, and the job it made with its number of items.
pub type Accepted = (Duration, (String, u64));

/// Posts one body with `key`; an answer other than `202` is an error.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Vec<u8>,
) -> anyhow::Result<Accepted> {
    let t = Instant::now();
    let response = http
        .post(url)
        .bearer_auth(key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .context("cannot reach the sender")?;
    let status = response.status();
    let text = response.text().await.context("unreadable answer")?;
    let latency = t.elapsed();
    if status.as_u16() != 202 {
        bail!("the sender answered {status}: {text}");
    }
    let accepted: serde_json::Value =
        serde_json::from_str(&text).context("the 202 answer is not JSON")?;
    let job_id = accepted["job_id"]
        .as_str()
        .context("the 202 answer has no job_id")?
        .to_owned();
    let items = accepted["accepted"].as_u64().unwrap_or_default();
    Ok((latency, (job_id, items)))
}
