//! The main queue's attributes the listener acts on: `maxReceiveCount` (which receive is a
//! message's last, so its points are recorded ahead) and the visibility timeout (how long a
//! message stays hidden, when the keeper extends it, and the hold cap).
//!
//! `accrualctl init` may change both on the live queue, so they are read again every
//! `QUEUE_ATTRIBUTES_REFRESH` (a minute by default). While a new value differs from the one read
//! before, the cautious of the two is used for one more period: the smaller receive count (a
//! message counts as on its last receive sooner, so its points are recorded ahead rather than
//! lost) and the larger visibility timeout (messages received under the longer one are still
//! hidden that long); from the next read on, the new value alone. A failed read keeps the values.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::sqs::{self, HOLD_CAP_VISIBILITY_TIMEOUTS, SqsError};
use aws_sdk_sqs::Client;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The attributes of the main queue that change what the listener does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAttributes {
    /// Receives after which SQS moves a message to the dead-letter queue if it is not deleted;
    /// `None` when the queue has no redrive policy.
    pub max_receive_count: Option<u32>,
    /// How long a received message stays hidden from other receivers.
    pub visibility_timeout: Duration,
}

/// Reads both attributes of the main queue at `main_url`. (A free function, not an associated
/// one: `scripts/infra/check-terraform` follows calls by module path to grant the IAM actions.)
pub async fn read(client: &Client, main_url: &str) -> Result<QueueAttributes, SqsError> {
    Ok(QueueAttributes {
        max_receive_count: sqs::max_receive_count(client, main_url).await?,
        visibility_timeout: sqs::visibility_timeout(client, main_url).await?,
    })
}

impl QueueAttributes {
    /// The longest this listener holds one message (see `held`).
    pub fn hold_cap(&self) -> Duration {
        self.visibility_timeout * HOLD_CAP_VISIBILITY_TIMEOUTS
    }

    /// Whether a message received `receive_count` times is on its last receive.
    pub fn is_last_receive(&self, receive_count: u32) -> bool {
        self.max_receive_count
            .is_some_and(|max| receive_count >= max)
    }

    /// The cautious of two readings: the smaller receive count (none counts as unlimited) and the
    /// larger visibility timeout.
    pub fn cautious(self, other: Self) -> Self {
        let max_receive_count = match (self.max_receive_count, other.max_receive_count) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            max_receive_count,
            visibility_timeout: self.visibility_timeout.max(other.visibility_timeout),
        }
    }
}

/// The values in use, shared by the receivers and the visibility keeper; shown as gauges.
#[derive(Clone, Debug)]
pub struct CurrentAttributes {
    value: Arc<watch::Sender<QueueAttributes>>,
    /// The shorter visibility timeout of the last two readings: how long a message received now
    /// is surely hidden, so the keeper extends it in time even while the longer one is in use.
    surely_hidden: Arc<watch::Sender<Duration>>,
    max_receive_count: Gauge,
    visibility_timeout_seconds: Gauge,
}

impl CurrentAttributes {
    /// Starts with `first`, shown in the two gauges.
    pub fn new(first: QueueAttributes, max_receive_count: Gauge, visibility_secs: Gauge) -> Self {
        let current = Self {
            value: Arc::new(watch::Sender::new(first)),
            surely_hidden: Arc::new(watch::Sender::new(first.visibility_timeout)),
            max_receive_count,
            visibility_timeout_seconds: visibility_secs,
        };
        current.set(first, first.visibility_timeout);
        current
    }

    pub fn get(&self) -> QueueAttributes {
        *self.value.borrow()
    }

    /// How long a message received now is surely hidden: the shorter visibility timeout of the
    /// last two readings.
    pub fn surely_hidden_for(&self) -> Duration {
        *self.surely_hidden.borrow()
    }

    fn set(&self, value: QueueAttributes, surely_hidden: Duration) {
        self.surely_hidden.send_replace(surely_hidden);
        self.max_receive_count
            .set(value.max_receive_count.map_or(0, i64::from));
        self.visibility_timeout_seconds
            .set(i64::try_from(value.visibility_timeout.as_secs()).unwrap_or(i64::MAX));
        self.value.send_replace(value);
    }
}

/// The last reading and the values to use after a new one.
#[derive(Clone, Copy, Debug)]
struct Readings {
    last: QueueAttributes,
}

impl Readings {
    /// Takes a new reading; returns the values to use until the next one.
    fn next(&mut self, read: QueueAttributes) -> QueueAttributes {
        let used = if read == self.last {
            read
        } else {
            self.last.cautious(read)
        };
        self.last = read;
        used
    }
}

/// Reads the queue's attributes every `every` until `stop` is cancelled; `first` is the reading
/// made at start-up.
pub async fn keep_current(
    current: CurrentAttributes,
    client: Client,
    url: String,
    first: QueueAttributes,
    every: Duration,
    stop: CancellationToken,
) {
    let mut readings = Readings { last: first };
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let read = match read(&client, &url).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = ?anyhow::Error::new(e), "Reading the queue's attributes failed; keeping the values in use");
                continue;
            }
        };
        let before = current.get();
        let surely_hidden = read
            .visibility_timeout
            .min(readings.last.visibility_timeout);
        let used = readings.next(read);
        if used != before || read != used {
            tracing::warn!(
                max_receive_count = ?read.max_receive_count,
                visibility_timeout_secs = read.visibility_timeout.as_secs(),
                using_max_receive_count = ?used.max_receive_count,
                using_visibility_timeout_secs = used.visibility_timeout.as_secs(),
                "The queue's attributes changed; using the cautious values for one more period"
            );
        }
        current.set(used, surely_hidden);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(count: Option<u32>, secs: u64) -> QueueAttributes {
        QueueAttributes {
            max_receive_count: count,
            visibility_timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_change_uses_the_smaller_count_and_the_longer_timeout_for_one_period_then_the_new_values() {
        let mut readings = Readings {
            last: attrs(Some(5), 30),
        };
        assert_eq!(readings.next(attrs(Some(5), 30)), attrs(Some(5), 30));
        // Lowered count, shorter timeout: the new count at once, the old timeout for a period.
        assert_eq!(readings.next(attrs(Some(2), 10)), attrs(Some(2), 30));
        assert_eq!(readings.next(attrs(Some(2), 10)), attrs(Some(2), 10));
        // Raised count, longer timeout: the old count for a period, the new timeout at once.
        assert_eq!(readings.next(attrs(Some(8), 60)), attrs(Some(2), 60));
        assert_eq!(readings.next(attrs(Some(8), 60)), attrs(Some(8), 60));
        // A redrive policy added or removed: the count that exists wins for a period.
        assert_eq!(readings.next(attrs(None, 60)), attrs(Some(8), 60));
        assert_eq!(readings.next(attrs(None, 60)), attrs(None, 60));
        assert_eq!(readings.next(attrs(Some(3), 60)), attrs(Some(3), 60));
    }

    #[test]
    fn the_last_receive_and_the_hold_cap_follow_the_attributes() {
        let a = attrs(Some(3), 30);
        assert!(!a.is_last_receive(2));
        assert!(a.is_last_receive(3));
        assert!(!attrs(None, 30).is_last_receive(1_000));
        assert_eq!(a.hold_cap(), Duration::from_secs(300));
    }
}
