//! Whether MySQL takes writes. While it does not, the receivers stop asking SQS for messages: every
//! receive would add one to each message's receive count and could push good points into the
//! dead-letter queue through the redrive policy. Here too: how long a failed write (or
//! record-ahead) waits before its next attempt, and how many lock conflicts it retries before
//! MySQL counts as down.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// Shared open/closed state: the batcher closes it when a write fails for want of a database and
/// opens it when a write succeeds again; the receivers wait while it is closed.
#[derive(Clone, Debug)]
pub struct DatabaseGate {
    up: Arc<watch::Sender<bool>>,
    up_gauge: Gauge,
    outages: Counter,
}

impl DatabaseGate {
    pub fn new(up_gauge: Gauge, outages: Counter) -> Self {
        up_gauge.set(1);
        Self {
            up: Arc::new(watch::Sender::new(true)),
            up_gauge,
            outages,
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Closes the gate; returns whether it was open (the start of an outage).
    pub fn mark_down(&self) -> bool {
        let was_up = self.up.send_replace(false);
        if was_up {
            self.up_gauge.set(0);
            self.outages.inc();
        }
        was_up
    }

    /// Opens the gate; returns whether it was closed (the end of an outage).
    pub fn mark_up(&self) -> bool {
        let was_up = self.up.send_replace(true);
        if !was_up {
            self.up_gauge.set(1);
        }
        !was_up
    }

    /// Returns once the gate is open.
    pub async fn wait_up(&self) {
        let mut rx = self.up.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|up| *up).await;
    }
}

/// First pause after a failed write; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between two attempts: how late the listener may notice that MySQL is back.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Lock conflicts (deadlock, lock wait timeout) retried before the database counts as down.
pub(crate) const LOCK_RETRIES: u32 = 5;

/// Pause after the `failures`-th failed attempt: 200 ms, 400 ms, ... at most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_are_released_when_the_gate_opens_and_outages_are_counted_once() {
        let gate = DatabaseGate::new(Gauge::default(), Counter::default());
        assert!(gate.is_up());
        assert!(gate.mark_down());
        assert!(!gate.mark_down(), "a second failure is the same outage");
        assert_eq!(gate.outages.get(), 1);
        assert_eq!(gate.up_gauge.get(), 0);

        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_up().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "must wait while the database is down"
        );
        assert!(gate.mark_up());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released when the gate opens")
            .expect("the waiter does not panic");
        assert_eq!(gate.up_gauge.get(), 1);
    }

    #[test]
    fn backoff_doubles_from_200ms_and_stops_at_5s() {
        let pauses: Vec<u128> = (1..=8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
