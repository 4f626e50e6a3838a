//! Messages this listener has received and not yet deleted or handed back, and the task that keeps
//! them hidden: when a batch takes long (a slow MySQL, an outage) the messages of that batch and of
//! those queued behind it would otherwise reach their visibility timeout and be delivered again,
//! adding to their receive count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
use crate::queue::Queue;

/// Visibility is never extended more often than this, however short the queue's timeout.
const MIN_EXTEND_EVERY: Duration = Duration::from_millis(500);

/// Receipt handles of held messages, each with the time its visibility timeout last started; their
/// number is the `messages_in_flight` gauge.
#[derive(Clone, Debug, Default)]
pub struct HeldMessages {
    inner: Arc<Mutex<HashMap<String, Instant>>>,
    count: Gauge,
}

impl HeldMessages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held messages counted in `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            inner: Arc::default(),
            count: gauge,
        }
    }

    /// Records a message received at `at`.
    pub fn hold(&self, receipt_handle: &str, at: Instant) {
        if self.lock().insert(receipt_handle.to_owned(), at).is_none() {
            self.count.inc();
        }
    }

    /// Forgets messages that were deleted or handed back.
    pub fn release(&self, receipt_handles: &[String]) {
        let mut held = self.lock();
        for h in receipt_handles {
            if held.remove(h).is_some() {
                self.count.dec();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Held messages whose visibility timeout started at or before `cutoff`.
    fn started_before(&self, cutoff: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, since)| **since <= cutoff)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Restarts the timeout of `handles` that are still held.
    fn restarted(&self, handles: &[String], at: Instant) {
        let mut held = self.lock();
        for h in handles {
            if let Some(since) = held.get_mut(h) {
                *since = at;
            }
        }
    }
}

/// Extends the visibility of every held message once half of its visibility timeout has passed,
/// until `stop` is cancelled.
pub async fn keep_visible(
    held: HeldMessages,
    queue: Queue,
    visibility_timeout: Duration,
    metrics: Arc<ListenerMetrics>,
    stop: CancellationToken,
) {
    let every = (visibility_timeout / 2).max(MIN_EXTEND_EVERY);
    let tick = (every / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let secs = i32::try_from(visibility_timeout.as_secs().max(1)).unwrap_or(i32::MAX);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let due = held.started_before(now - every);
        if due.is_empty() {
            continue;
        }
        let failed = queue.change_visibility(&due, secs).await;
        held.restarted(&due, now);
        metrics
            .visibility_extensions
            .inc_by((due.len() - failed) as u64);
        tracing::info!(
            messages = due.len(),
            failed,
            visibility_secs = secs,
            "Messages held longer than half their visibility timeout; extended it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_whose_timeout_started_before_the_cutoff_are_due() {
        let held = HeldMessages::default();
        let t0 = Instant::now();
        held.hold("old", t0);
        held.hold("new", t0 + Duration::from_secs(10));
        assert_eq!(
            held.started_before(t0 + Duration::from_secs(5)),
            ["old".to_owned()]
        );
        held.restarted(&["old".to_owned()], t0 + Duration::from_secs(20));
        assert!(held.started_before(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(held.count.get(), 2);
        held.release(&["old".to_owned(), "new".to_owned()]);
        assert!(held.is_empty());
        assert_eq!(held.count.get(), 0);
    }
}
