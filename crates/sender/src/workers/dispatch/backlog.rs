//! The bound on how far dispatch may run ahead of the listeners (`DISPATCH_MAX_QUEUE_DEPTH`).
//!
//! Without it a dispatcher sends as fast as SQS accepts, whatever the listeners manage: a 2,000,000
//! point job in one-point messages can sit almost whole in the queue. That costs SQS nothing, but a
//! crash then leaves that much work in flight, and an emulator that keeps its queue in memory
//! slows down with its depth (fauxqs: docs/performance.md, "Both emulators"). So before claiming
//! a chunk a dispatcher looks at how many messages the queue holds (visible and in flight, from
//! `GetQueueAttributes`, read in the background at most once per `DISPATCH_POLL` for all of this
//! replica's dispatchers, plus what they sent since that reading) and waits while that is at the
//! bound, looking again every `DISPATCH_POLL`.
//!
//! The bound is on messages, not points: a packed message carries up to
//! `ACCRUAL_POINTS_PER_MESSAGE` points. A depth that cannot be read does not stop dispatch (SQS
//! being down shows up in the sends themselves).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use accrual_core::sqs;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::SenderMetrics;

/// Longest a depth reading may take before dispatch goes on without it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest bound: below a few chunks' worth of messages dispatch would stop and start
/// all the time.
pub const MIN_MAX_DEPTH: u64 = 1_000;

/// Cheap to clone; a replica's dispatchers share one.
#[derive(Clone, Debug)]
pub struct Backlog {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    max_depth: u64,
    /// How often the depth is read, at most, and how long a waiting dispatcher sleeps between
    /// looks (`DISPATCH_POLL`).
    interval: Duration,
    metrics: Arc<SenderMetrics>,
    /// The last reading of the depth; `UNKNOWN` before the first and after a failed one.
    depth: AtomicU64,
    /// When the last reading was started.
    read_at: std::sync::Mutex<Option<Instant>>,
    /// Messages this replica sent since the last reading.
    sent_since: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Backlog {
    /// `max_depth` 0 means no bound; `interval` is `DISPATCH_POLL`.
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: String,
        max_depth: u64,
        interval: Duration,
        metrics: Arc<SenderMetrics>,
    ) -> Self {
        let inner = (max_depth > 0).then(|| {
            Arc::new(Inner {
                client,
                queue_url,
                max_depth,
                interval,
                metrics,
                depth: AtomicU64::new(UNKNOWN),
                read_at: std::sync::Mutex::new(None),
                sent_since: AtomicU64::new(0),
            })
        });
        Self { inner }
    }

    /// Counts messages sent, until the next reading includes them.
    pub fn sent(&self, messages: u64) {
        if let Some(inner) = &self.inner {
            inner.sent_since.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Returns once the queue holds fewer messages than the bound (at once without a bound, or
    /// when the depth cannot be read), or when `shutdown` is cancelled.
    pub async fn wait_for_room(&self, shutdown: &CancellationToken) {
        let Some(inner) = &self.inner else { return };
        let mut logged = false;
        while inner
            .estimate()
            .is_some_and(|depth| depth >= inner.max_depth)
        {
            if !logged {
                tracing::debug!(
                    max_depth = inner.max_depth,
                    "The queue is at DISPATCH_MAX_QUEUE_DEPTH; dispatch waits for the listeners"
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
                break;
            }
        }
    }
}

impl Inner {
    /// The queue's depth as last read plus the messages sent since; `None` when it is not known.
    /// A reading older than the interval starts a new one in the background, so a slow or
    /// hung `GetQueueAttributes` never holds a dispatcher up.
    fn estimate(self: &Arc<Self>) -> Option<u64> {
        let stale = {
            let mut read_at = self.read_at.lock().expect("never poisoned");
            let stale = read_at.is_none_or(|at| at.elapsed() >= self.interval);
            if stale {
                *read_at = Some(Instant::now());
            }
            stale
        };
        if stale {
            let this = self.clone();
            tokio::spawn(async move { this.read().await });
        }
        match self.depth.load(Ordering::Relaxed) {
            UNKNOWN => None,
            depth => Some(depth + self.sent_since.load(Ordering::Relaxed)),
        }
    }

    async fn read(&self) {
        let read = tokio::time::timeout(
            READ_TIMEOUT,
            sqs::approximate_depth(&self.client, &self.queue_url),
        )
        .await;
        match read {
            Ok(Ok(depth)) => {
                self.sent_since.store(0, Ordering::Relaxed);
                self.depth.store(depth, Ordering::Relaxed);
                self.metrics.dispatch_queue_depth.set(depth as i64);
            }
            Ok(Err(e)) => {
                self.depth.store(UNKNOWN, Ordering::Relaxed);
                tracing::warn!(error = %e, "Cannot read the queue's depth; dispatching without DISPATCH_MAX_QUEUE_DEPTH until it can");
            }
            Err(_) => {
                self.depth.store(UNKNOWN, Ordering::Relaxed);
                tracing::warn!(
                    timeout_secs = READ_TIMEOUT.as_secs(),
                    "Reading the queue's depth timed out; dispatching without DISPATCH_MAX_QUEUE_DEPTH until it can"
                );
            }
        }
    }
}
