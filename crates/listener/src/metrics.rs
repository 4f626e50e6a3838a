//! What this listener has done, as Prometheus metrics (`/metrics`) that tests and logs read too.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Counters, gauges and histograms of one listener process. Cloning a metric shares its value.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Messages received from the main queue (a redelivery counts again).
    pub received: Counter,
    /// Points in the messages received (a packed message counts each of its points).
    pub points_received: Counter,
    /// ReceiveMessage calls made, empty long polls included.
    pub receive_calls: Counter,
    /// DeleteMessageBatch calls made, retries included.
    pub delete_calls: Counter,
    /// Points newly written to the ledger.
    pub written: Counter,
    /// Points already in the ledger (redeliveries, re-sends) that wrote nothing.
    pub duplicates: Counter,
    /// Points moved to the dead-letter queue by this listener (a body that cannot be read counts
    /// as one).
    pub dead_lettered: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Points per batch.
    pub batch_points: Histogram,
    /// Time to write one batch (all its statements and the commit), in seconds.
    pub insert_seconds: Histogram,
    /// Time to delete one batch's messages, in seconds.
    pub delete_seconds: Histogram,
    /// Messages received and not yet deleted or handed back.
    pub in_flight: Gauge,
    /// 1 while writes succeed, 0 while the listener waits for MySQL to come back.
    pub database_up: Gauge,
    /// Times MySQL became unreachable (receiving stops until it is back).
    pub database_outages: Counter,
    /// Writes that failed for a reason other than the rows themselves and were tried again.
    pub write_retries: Counter,
    /// ReceiveMessage calls that failed.
    pub receive_errors: Counter,
    /// Held messages whose visibility timeout was extended because their batch took long.
    pub visibility_extensions: Counter,
    /// Messages let go at the hold cap: no longer extended, their write abandoned.
    pub hold_cap_reached: Counter,
    /// The main queue's `maxReceiveCount` the listener acts on (0: no redrive policy).
    pub max_receive_count: Gauge,
    /// The main queue's visibility timeout the listener acts on, in seconds.
    pub visibility_timeout_seconds: Gauge,
    registry: Registry,
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("accrual_listener");
        let received = Counter::default();
        let points_received = Counter::default();
        let receive_calls = Counter::default();
        let delete_calls = Counter::default();
        let written = Counter::default();
        let duplicates = Counter::default();
        let dead_lettered = Counter::default();
        let batches = Counter::default();
        // 1, 2, 4, ... 4096 points.
        let batch_points = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        // 1 ms to about 65 s.
        let insert_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let delete_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let in_flight = Gauge::default();
        let database_up = Gauge::default();
        database_up.set(1);
        let database_outages = Counter::default();
        let write_retries = Counter::default();
        let receive_errors = Counter::default();
        let visibility_extensions = Counter::default();
        let hold_cap_reached = Counter::default();
        let max_receive_count = Gauge::default();
        let visibility_timeout_seconds = Gauge::default();

        registry.register(
            "messages_received",
            "Messages received from the main queue, redeliveries included",
            received.clone(),
        );
        registry.register(
            "points_received",
            "Points in the messages received (a packed message counts each point), redeliveries included",
            points_received.clone(),
        );
        registry.register(
            "sqs_receive_calls",
            "ReceiveMessage calls made, empty long polls included",
            receive_calls.clone(),
        );
        registry.register(
            "sqs_delete_calls",
            "DeleteMessageBatch calls made, retries included",
            delete_calls.clone(),
        );
        registry.register(
            "points_written",
            "Points newly written to the ledger",
            written.clone(),
        );
        registry.register(
            "points_duplicate",
            "Points that were already in the ledger and wrote nothing",
            duplicates.clone(),
        );
        registry.register(
            "points_dead_lettered",
            "Points this listener moved to the dead-letter queue (an unreadable body counts as one)",
            dead_lettered.clone(),
        );
        registry.register("batches", "Batches committed", batches.clone());
        registry.register(
            "batch_points",
            "Points per written batch",
            batch_points.clone(),
        );
        registry.register_with_unit(
            "insert_duration",
            "Time to write one batch to MySQL, retries included",
            Unit::Seconds,
            insert_seconds.clone(),
        );
        registry.register_with_unit(
            "delete_duration",
            "Time to delete one batch's messages from SQS",
            Unit::Seconds,
            delete_seconds.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages received and not yet deleted or handed back",
            in_flight.clone(),
        );
        registry.register(
            "database_up",
            "1 while writes to MySQL succeed, 0 while the listener waits for MySQL",
            database_up.clone(),
        );
        registry.register(
            "database_outages",
            "Times MySQL became unreachable and receiving stopped",
            database_outages.clone(),
        );
        registry.register(
            "write_retries",
            "Batch writes that failed for a reason other than the rows and were tried again",
            write_retries.clone(),
        );
        registry.register(
            "receive_errors",
            "ReceiveMessage calls that failed",
            receive_errors.clone(),
        );
        registry.register(
            "visibility_extensions",
            "Messages whose visibility timeout was extended while their batch was written",
            visibility_extensions.clone(),
        );
        registry.register(
            "hold_cap_reached",
            "Messages held for the hold cap (10 visibility timeouts), then let go for SQS to deliver again",
            hold_cap_reached.clone(),
        );
        registry.register(
            "queue_max_receive_count",
            "The main queue's maxReceiveCount the listener acts on (0: no redrive policy)",
            max_receive_count.clone(),
        );
        registry.register(
            "queue_visibility_timeout_seconds",
            "The main queue's visibility timeout the listener acts on",
            visibility_timeout_seconds.clone(),
        );
        Self {
            received,
            points_received,
            receive_calls,
            delete_calls,
            written,
            duplicates,
            dead_lettered,
            batches,
            batch_points,
            insert_seconds,
            delete_seconds,
            in_flight,
            database_up,
            database_outages,
            write_retries,
            receive_errors,
            visibility_extensions,
            hold_cap_reached,
            max_receive_count,
            visibility_timeout_seconds,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_prefix_and_total_suffix() {
        let m = ListenerMetrics::new();
        m.written.inc_by(42);
        m.insert_seconds.observe(0.003);
        let text = m.render();
        assert!(
            text.contains("accrual_listener_points_written_total 42"),
            "{text}"
        );
        assert!(
            text.contains("accrual_listener_insert_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("accrual_listener_database_up 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
