//! How far dispatch may run ahead of the listeners: `DISPATCH_QUEUE_HORIZON` of their work.
//!
//! Fairness is decided when a chunk is claimed (`store::chunks::fair`); what is already in SQS goes
//! out roughly in the order it was sent. So the queue holds only a few seconds of the listeners'
//! work: a chunk of another client claimed now is received seconds later, not after a campaign
//! that sits whole in the queue. Before claiming, a dispatcher compares the queue's depth (visible
//! and in flight, from `GetQueueAttributes`, read in the background at most once per
//! `DISPATCH_POLL` for all of this replica's dispatchers, plus what they sent since) with a bound:
//! the messages the listeners drain in the horizon at the measured rate, never fewer than
//! [`MIN_QUEUE_MESSAGES`] (so that the queue does not run dry between looks while the rate is
//! still being learnt), and waits while the queue is at it.
//!
//! The rate is measured, not configured: each reading pairs the depth with the points every
//! replica has claimed in all (`dispatch_clock.claimed_points`, moved on by each claim), and what
//! went in less what the queue grew by is what the listeners took ([`DrainRate`]). Readings while
//! nothing moves keep the last rate, so a campaign after a quiet night starts at yesterday's. The
//! same rate gives a waiting job its estimated start and finish (`store::chunks::place`).
//!
//! A depth that cannot be read does not stop dispatch (SQS being down shows up in the sends).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use accrual_core::sqs;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::SenderMetrics;

/// Longest a reading may take before dispatch goes on without it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest bound: below a few chunks' worth of messages dispatch would stop and start
/// all the time, and an unknown rate (no reading yet) must not stop dispatch.
pub const MIN_QUEUE_MESSAGES: u64 = 100;
/// How quickly the measured rate follows a change: a reading counts for `1 - e^(-dt/τ)`.
const RATE_TIME_CONSTANT: Duration = Duration::from_secs(5);

/// Cheap to clone; a replica's dispatchers share one. What it reads is in their gauges
/// (`dispatch_queue_depth`, `drain_rate`), which the job views read too.
#[derive(Clone, Debug)]
pub struct Backlog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    pool: MySqlPool,
    /// `DISPATCH_QUEUE_HORIZON`; zero: no bound.
    horizon: Duration,
    points_per_message: u64,
    /// How often the depth is read, at most, and how long a waiting dispatcher sleeps between
    /// looks (`DISPATCH_POLL`).
    interval: Duration,
    metrics: Arc<SenderMetrics>,
    state: std::sync::Mutex<State>,
    /// Messages this replica sent since the last reading.
    sent_since: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// When the last reading was started.
    read_at: Option<Instant>,
    /// Whether a reading has ended (well or not).
    has_read: bool,
    /// The last reading's depth; `None` before the first and after a failed one.
    depth: Option<u64>,
    rate: DrainRate,
}

impl Backlog {
    /// `horizon` zero means no bound (the depth and rate are still read, for the metrics and the
    /// job views); `interval` is `DISPATCH_POLL`.
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: String,
        pool: MySqlPool,
        horizon: Duration,
        points_per_message: u32,
        interval: Duration,
        metrics: Arc<SenderMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                queue_url,
                pool,
                horizon,
                points_per_message: u64::from(points_per_message.max(1)),
                interval,
                metrics,
                state: std::sync::Mutex::new(State::default()),
                sent_since: AtomicU64::new(0),
            }),
        }
    }

    /// Counts messages sent, until the next reading includes them (the depth gauge too).
    pub fn sent(&self, messages: u64) {
        self.inner.sent_since.fetch_add(messages, Ordering::Relaxed);
        self.inner
            .metrics
            .dispatch_queue_depth
            .inc_by(messages as i64);
    }

    /// Returns once the queue holds less than the horizon's work (at once without a horizon, or
    /// when the depth cannot be read), or when `shutdown` is cancelled. Starts a reading when the
    /// last is older than the interval, horizon or not.
    pub async fn wait_for_room(&self, shutdown: &CancellationToken) {
        let inner = &self.inner;
        let mut logged = false;
        if !inner.lock().has_read {
            // The first look waits for its reading: a dispatcher that started without one would
            // send unbounded until it came.
            inner.lock().read_at = Some(Instant::now());
            inner.read().await;
        }
        loop {
            let depth = inner.estimate();
            if inner.horizon.is_zero() {
                return;
            }
            let bound = inner.bound();
            if depth.is_none_or(|depth| depth < bound) {
                return;
            }
            if !logged {
                tracing::debug!(
                    bound,
                    "The queue holds DISPATCH_QUEUE_HORIZON of work; dispatch waits for the listeners"
                );
                logged = true;
            }
            // Counted as it goes, so the metric shows a wait that has not ended yet.
            let waited = Instant::now();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(inner.interval) => {}
            }
            inner
                .metrics
                .dispatch_paused_seconds
                .inc_by(waited.elapsed().as_secs_f64());
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The messages the queue may hold now.
    fn bound(&self) -> u64 {
        bound(
            self.horizon,
            self.lock().rate.points_per_second(),
            self.points_per_message,
        )
    }

    /// The queue's depth as last read plus the messages sent since; `None` when it is not known.
    /// A reading older than the interval starts a new one in the background, so a slow or
    /// hung `GetQueueAttributes` never holds a dispatcher up.
    fn estimate(self: &Arc<Self>) -> Option<u64> {
        let (stale, depth) = {
            let mut state = self.lock();
            let stale = state.read_at.is_none_or(|at| at.elapsed() >= self.interval);
            if stale {
                state.read_at = Some(Instant::now());
            }
            (stale, state.depth)
        };
        if stale {
            let this = self.clone();
            tokio::spawn(async move { this.read().await });
        }
        depth.map(|depth| depth + self.sent_since.load(Ordering::Relaxed))
    }

    async fn read(&self) {
        self.read_depth_and_claimed().await;
        self.lock().has_read = true;
    }

    async fn read_depth_and_claimed(&self) {
        let claimed =
            sqlx::query_scalar::<_, u64>("SELECT claimed_points FROM dispatch_clock WHERE id = 1")
                .fetch_optional(&self.pool);
        let depth = sqs::approximate_depth(&self.client, &self.queue_url);
        let read = tokio::time::timeout(READ_TIMEOUT, async { tokio::join!(depth, claimed) }).await;
        let at = Instant::now();
        let (depth, claimed) = match read {
            Ok((Ok(depth), Ok(claimed))) => (depth, claimed.unwrap_or(0)),
            Ok((Err(e), _)) => {
                self.lock().depth = None;
                tracing::warn!(error = %e, "Cannot read the queue's depth; dispatching without DISPATCH_QUEUE_HORIZON until it can");
                return;
            }
            Ok((Ok(depth), Err(e))) => {
                // The bound still holds with the rate as it was.
                self.sent_since.store(0, Ordering::Relaxed);
                self.lock().depth = Some(depth);
                self.metrics.dispatch_queue_depth.set(depth as i64);
                tracing::warn!(error = %e, "Cannot read the points claimed; the drain rate is not updated");
                return;
            }
            Err(_) => {
                self.lock().depth = None;
                tracing::warn!(
                    timeout_secs = READ_TIMEOUT.as_secs(),
                    "Reading the queue's depth timed out; dispatching without DISPATCH_QUEUE_HORIZON until it can"
                );
                return;
            }
        };
        self.sent_since.store(0, Ordering::Relaxed);
        let rate = {
            let mut state = self.lock();
            state.depth = Some(depth);
            state
                .rate
                .observe(Reading { at, depth, claimed }, self.points_per_message);
            state.rate.points_per_second()
        };
        self.metrics.dispatch_queue_depth.set(depth as i64);
        self.metrics.drain_rate.set(rate.unwrap_or(0.0));
        let bound = if self.horizon.is_zero() {
            0
        } else {
            bound(self.horizon, rate, self.points_per_message)
        };
        self.metrics.dispatch_queue_bound.set(bound as i64);
    }
}

/// The messages the listeners drain in `horizon` at `points_per_second`, at least
/// [`MIN_QUEUE_MESSAGES`].
pub fn bound(horizon: Duration, points_per_second: Option<f64>, points_per_message: u64) -> u64 {
    let messages =
        points_per_second.unwrap_or(0.0) * horizon.as_secs_f64() / points_per_message.max(1) as f64;
    (messages.ceil() as u64).max(MIN_QUEUE_MESSAGES)
}

/// One reading: the queue's depth in messages and the points claimed in all, at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub at: Instant,
    pub depth: u64,
    pub claimed: u64,
}

/// The listeners' drain rate from successive readings: the points claimed between two readings,
/// less what the queue grew by, over the time between them; smoothed, and kept while nothing
/// moves.
#[derive(Debug, Clone, Default)]
pub struct DrainRate {
    last: Option<Reading>,
    points_per_second: Option<f64>,
}

impl DrainRate {
    pub fn observe(&mut self, reading: Reading, points_per_message: u64) {
        let Some(last) = self.last.replace(reading) else {
            return;
        };
        let dt = reading.at.saturating_duration_since(last.at).as_secs_f64();
        if dt <= 0.0 || reading.claimed < last.claimed {
            return;
        }
        let went_in = (reading.claimed - last.claimed) as f64;
        if went_in == 0.0 && last.depth == 0 {
            // Nothing queued and nothing sent: the listeners were idle, not slow.
            return;
        }
        let grew = (reading.depth as f64 - last.depth as f64) * points_per_message as f64;
        // Not clamped: points claimed before a reading but sent after it make one sample too high
        // and the next too low, which the smoothing evens out.
        let sample = (went_in - grew) / dt;
        let weight = 1.0 - (-dt / RATE_TIME_CONSTANT.as_secs_f64()).exp();
        // Smoothed unclamped, so that a negative sample cancels the positive one before it; only
        // what is shown is clamped.
        self.points_per_second = Some(match self.points_per_second {
            None => sample,
            Some(rate) => rate + weight * (sample - rate),
        });
    }

    pub fn points_per_second(&self) -> Option<f64> {
        self.points_per_second.map(|rate| rate.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(start: Instant, secs: f64, depth: u64, claimed: u64) -> Reading {
        Reading {
            at: start + Duration::from_secs_f64(secs),
            depth,
            claimed,
        }
    }

    #[test]
    fn the_rate_is_what_went_in_less_what_the_queue_grew_by() {
        let start = Instant::now();
        let mut rate = DrainRate::default();
        rate.observe(reading(start, 0.0, 1_000, 0), 1);
        assert_eq!(rate.points_per_second(), None, "one reading is no rate");
        // 3,000 points went in, the queue grew by 1,000: 2,000 drained in one second.
        rate.observe(reading(start, 1.0, 2_000, 3_000), 1);
        assert_eq!(rate.points_per_second(), Some(2_000.0));
        // Packed: 10 messages of 100 points left the queue, none went in.
        let mut packed = DrainRate::default();
        packed.observe(reading(start, 0.0, 50, 0), 100);
        packed.observe(reading(start, 2.0, 40, 0), 100);
        assert_eq!(packed.points_per_second(), Some(500.0));
    }

    #[test]
    fn a_quiet_pipeline_keeps_its_last_rate_and_a_change_is_followed_smoothly() {
        let start = Instant::now();
        let mut rate = DrainRate::default();
        rate.observe(reading(start, 0.0, 0, 0), 1);
        rate.observe(reading(start, 1.0, 0, 4_000), 1);
        assert_eq!(rate.points_per_second(), Some(4_000.0));
        // An empty queue with nothing sent: idle, the rate stays.
        rate.observe(reading(start, 600.0, 0, 4_000), 1);
        assert_eq!(rate.points_per_second(), Some(4_000.0));
        // Slower listeners: the rate moves towards 1,000 without jumping there.
        rate.observe(reading(start, 601.0, 1_000, 6_000), 1);
        let now = rate.points_per_second().expect("a rate");
        assert!(now < 4_000.0 && now > 1_000.0, "{now}");
    }

    #[test]
    fn the_bound_is_the_horizon_of_the_rate_in_messages_and_never_below_the_floor() {
        let horizon = Duration::from_secs(3);
        assert_eq!(bound(horizon, None, 1), MIN_QUEUE_MESSAGES);
        assert_eq!(bound(horizon, Some(2_000.0), 1), 6_000);
        assert_eq!(bound(horizon, Some(200_000.0), 100), 6_000);
        assert_eq!(bound(horizon, Some(10.0), 1), MIN_QUEUE_MESSAGES);
    }
}
