//! The sender's Prometheus metrics (`/metrics`, prefix `accrual_sender_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of an HTTP request: the route pattern (not the raw path), the method and the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of a finished job: its final status (`completed` or `completed_with_errors`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub status: &'static str,
}

/// Labels of a webhook delivery attempt: `delivered` (a 2xx answer), `rejected` (any other
/// status), `timeout` (no answer within `WEBHOOK_TIMEOUT`) or `error` (no connection, a refused
/// URL, a removed endpoint).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub result: &'static str,
}

/// Labels of a client's series: its id when `ACCRUAL_API_KEYS` names it, else `other` (a job of
/// a client whose keys were removed), so the set of series stays that of the configured clients.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client_id: String,
}

/// The `client_id` label of a client not among the configured ones.
pub const OTHER_CLIENT: &str = "other";

/// Buckets of a job's completion time: 1 s to about 4.5 hours, doubling.
fn completion_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 15)
}

#[derive(Debug)]
pub struct SenderMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Jobs stored (a replayed `Idempotency-Key` is not counted again).
    pub jobs_accepted: Counter,
    /// Points in the jobs stored.
    pub points_accepted: Counter,
    /// Requests refused because of their items (422).
    pub validation_failures: Counter,
    /// Requests refused with 429.
    pub rate_limited: Counter,
    /// Rate-limit checks that could not reach Redis and let the request through.
    pub rate_limit_unavailable: Counter,
    /// Points sent to SQS by this replica's dispatchers.
    pub points_dispatched: Counter,
    /// Points SQS refused for good, dead-lettered by this replica's dispatchers.
    pub points_refused: Counter,
    /// Chunks given up because SQS made no progress for a whole lease (another replica takes them).
    pub chunks_abandoned: Counter,
    /// Chunks sent by this replica's dispatchers.
    pub chunks_dispatched: Counter,
    /// SQS messages sent by this replica's dispatchers (fewer than points when packed).
    pub messages_dispatched: Counter,
    /// SendMessageBatch calls made by this replica's dispatchers, retries included.
    pub send_calls: Counter,
    /// Age of the oldest due chunk not yet dispatched, set when `/metrics` is read.
    pub dispatch_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Jobs polled for event streams (one poller per job, however many streams follow it).
    pub sse_pollers: Gauge,
    /// Due chunks not yet dispatched, set when `/metrics` is read.
    pub chunks_pending: Gauge,
    /// Time this replica's dispatchers waited because the queue held `DISPATCH_QUEUE_HORIZON`
    /// of work (summed over the dispatchers).
    pub dispatch_paused_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Messages in the queue (visible and in flight) at the dispatchers' last reading, plus what
    /// they sent since.
    pub dispatch_queue_depth: Gauge,
    /// The messages the queue may hold before the dispatchers wait: `DISPATCH_QUEUE_HORIZON` of
    /// the drain rate, at least 100 (0 without a horizon).
    pub dispatch_queue_bound: Gauge,
    /// The rate at which the listeners drain the queue, in points per second, as the dispatchers
    /// last measured it.
    pub drain_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The pipeline's backlog in messages: the due points not yet dispatched, as the messages they
    /// will make, plus the queue's messages; set when `/metrics` is read. KEDA scales the
    /// listeners on it.
    pub pipeline_backlog_messages: Gauge,
    /// Final jobs whose stored results this replica's retention task purged.
    pub retention_jobs_purged: Counter,
    /// Stored chunks this replica's retention task deleted.
    pub retention_chunks_purged: Counter,
    /// Idempotency keys this replica's retention task cleared.
    pub retention_idempotency_keys_purged: Counter,
    /// Jobs this replica's completion task settled for the first time, by final status.
    pub jobs_completed: Family<JobLabels, Counter>,
    /// Their time from release (`reserve_at`, else `created_at`) to their last point written or
    /// dead-lettered (`completed_at`).
    pub job_completion_seconds: Histogram,
    /// Webhook delivery attempts this replica made, by result.
    pub webhook_attempts: Family<WebhookLabels, Counter>,
    /// Webhook events this replica gave up on (no 2xx within `WEBHOOK_RETRY_FOR`).
    pub webhook_gave_up: Counter,
    /// Webhook events due for delivery, as the replica holding the delivery lease last saw them
    /// (0 on the others).
    pub webhook_due: Gauge,
    /// How long the oldest due webhook event has been due (0 when none, and on the replicas not
    /// holding the lease).
    pub webhook_oldest_due_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Webhook deliveries in flight on this replica (at most `WEBHOOK_CONCURRENCY`).
    pub webhook_in_flight: Gauge,
    /// Times an endpoint's circuit opened (again, after a failed trial, too).
    pub webhook_circuit_opens: Counter,
    /// Endpoints whose circuit is open or half-open now (on the lease holder).
    pub webhook_circuits_open: Gauge,
    /// Webhook events moved past their endpoint's cool-off without an attempt.
    pub webhook_held_back: Counter,
    /// Quiet jobs the reconciler compared with the ledger (a healthy job is never compared).
    pub reconciler_jobs_compared: Counter,
    /// Points the reconciler found neither written nor dead-lettered and sent again.
    pub reconciler_points_resent: Counter,
    /// Points the reconciler gave up on after its re-sends (dead-lettered as lost in transit).
    pub reconciler_points_given_up: Counter,
    /// The quiet period the reconciler last used (0 on replicas not holding its lease).
    pub reconciler_quiet_period_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Age of the oldest released job that is not final, from its release (`reserve_at`, else
    /// `created_at`); reported by the replica holding the reconciler's lease, 0 elsewhere.
    pub oldest_unfinished_job_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Readiness checks this replica made (each one MySQL query, one Redis PING and one SQS
    /// `GetQueueAttributes`); `/readyz` answers between them from the last one.
    pub readiness_checks: Counter,
    /// Each client's due points not yet dispatched, set when `/metrics` is read (every replica
    /// reports the same, from MySQL).
    pub client_backlog_points: Family<ClientLabels, Gauge>,
    /// Age of each client's oldest due chunk not yet dispatched (0 when none), set likewise.
    pub client_dispatch_lag_seconds: Family<ClientLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Points sent to SQS by this replica's dispatchers, by client: each client's dispatch share.
    pub client_points_dispatched: Family<ClientLabels, Counter>,
    /// The configured clients: the only `client_id` labels besides [`OTHER_CLIENT`].
    clients: Vec<String>,
    registry: Registry,
}

impl Default for SenderMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SenderMetrics {
    pub fn new() -> Self {
        Self::for_clients(Vec::new())
    }

    /// The metrics of a sender whose configured clients are `clients` (the per-client series).
    pub fn for_clients(mut clients: Vec<String>) -> Self {
        clients.sort();
        clients.dedup();
        let mut registry = Registry::with_prefix("accrual_sender");
        let m = Self {
            requests: Family::default(),
            jobs_accepted: Counter::default(),
            points_accepted: Counter::default(),
            validation_failures: Counter::default(),
            rate_limited: Counter::default(),
            rate_limit_unavailable: Counter::default(),
            points_dispatched: Counter::default(),
            points_refused: Counter::default(),
            chunks_dispatched: Counter::default(),
            chunks_abandoned: Counter::default(),
            messages_dispatched: Counter::default(),
            send_calls: Counter::default(),
            dispatch_lag_seconds: Gauge::default(),
            chunks_pending: Gauge::default(),
            dispatch_paused_seconds: Counter::default(),
            dispatch_queue_depth: Gauge::default(),
            dispatch_queue_bound: Gauge::default(),
            drain_rate: Gauge::default(),
            pipeline_backlog_messages: Gauge::default(),
            sse_pollers: Gauge::default(),
            retention_jobs_purged: Counter::default(),
            retention_chunks_purged: Counter::default(),
            retention_idempotency_keys_purged: Counter::default(),
            jobs_completed: Family::default(),
            job_completion_seconds: Histogram::new(completion_buckets()),
            webhook_attempts: Family::default(),
            webhook_gave_up: Counter::default(),
            webhook_due: Gauge::default(),
            webhook_oldest_due_seconds: Gauge::default(),
            webhook_in_flight: Gauge::default(),
            webhook_circuit_opens: Counter::default(),
            webhook_circuits_open: Gauge::default(),
            webhook_held_back: Counter::default(),
            reconciler_jobs_compared: Counter::default(),
            reconciler_points_resent: Counter::default(),
            reconciler_points_given_up: Counter::default(),
            reconciler_quiet_period_seconds: Gauge::default(),
            oldest_unfinished_job_seconds: Gauge::default(),
            readiness_checks: Counter::default(),
            client_backlog_points: Family::default(),
            client_dispatch_lag_seconds: Family::default(),
            client_points_dispatched: Family::default(),
            clients,
            registry: Registry::default(),
        };
        registry.register(
            "client_backlog_points",
            "Due points not yet dispatched, by client (the same on every replica)",
            m.client_backlog_points.clone(),
        );
        registry.register_with_unit(
            "client_dispatch_lag",
            "Age of the client's oldest due chunk not yet dispatched (0 when none)",
            Unit::Seconds,
            m.client_dispatch_lag_seconds.clone(),
        );
        registry.register(
            "client_points_dispatched",
            "Points sent to SQS by this replica, by client",
            m.client_points_dispatched.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route pattern, method and status",
            m.requests.clone(),
        );
        registry.register("jobs_accepted", "Jobs stored", m.jobs_accepted.clone());
        registry.register(
            "points_accepted",
            "Points in the jobs stored",
            m.points_accepted.clone(),
        );
        registry.register(
            "validation_failures",
            "Requests refused because of invalid items (422)",
            m.validation_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429",
            m.rate_limited.clone(),
        );
        registry.register(
            "rate_limit_unavailable",
            "Rate-limit checks that could not reach Redis and let the request through",
            m.rate_limit_unavailable.clone(),
        );
        registry.register(
            "points_dispatched",
            "Points sent to SQS by this replica",
            m.points_dispatched.clone(),
        );
        registry.register(
            "points_refused",
            "Points SQS refused for good, dead-lettered by this replica's dispatchers",
            m.points_refused.clone(),
        );
        registry.register(
            "chunks_abandoned",
            "Chunks given up because SQS made no progress for a whole lease",
            m.chunks_abandoned.clone(),
        );
        registry.register(
            "chunks_dispatched",
            "Chunks sent to SQS by this replica",
            m.chunks_dispatched.clone(),
        );
        registry.register(
            "messages_dispatched",
            "SQS messages sent by this replica (fewer than points when points are packed)",
            m.messages_dispatched.clone(),
        );
        registry.register(
            "sqs_send_calls",
            "SendMessageBatch calls made by this replica, retries included",
            m.send_calls.clone(),
        );
        registry.register_with_unit(
            "dispatch_lag",
            "Age of the oldest due chunk not yet dispatched (0 when none)",
            Unit::Seconds,
            m.dispatch_lag_seconds.clone(),
        );
        registry.register(
            "chunks_pending",
            "Due chunks not yet dispatched",
            m.chunks_pending.clone(),
        );
        registry.register_with_unit(
            "dispatch_paused",
            "Time dispatchers waited because the queue held DISPATCH_QUEUE_HORIZON of work, summed over the dispatchers",
            Unit::Seconds,
            m.dispatch_paused_seconds.clone(),
        );
        registry.register(
            "dispatch_queue_depth",
            "Messages in the queue, visible and in flight, at the dispatchers' last reading plus what they sent since",
            m.dispatch_queue_depth.clone(),
        );
        registry.register(
            "dispatch_queue_bound_messages",
            "Messages the queue may hold before dispatchers wait: DISPATCH_QUEUE_HORIZON of the drain rate, at least 100 (0 without a horizon)",
            m.dispatch_queue_bound.clone(),
        );
        registry.register(
            "drain_rate_points_per_second",
            "Points per second the listeners take from the queue, as the dispatchers last measured it",
            m.drain_rate.clone(),
        );
        registry.register(
            "pipeline_backlog_messages",
            "Due points not yet dispatched, as the messages they will make, plus the queue's messages (what KEDA scales the listeners on); the same on every replica, so take max()",
            m.pipeline_backlog_messages.clone(),
        );
        registry.register(
            "sse_pollers",
            "Jobs polled for event streams (one poller per job, however many streams follow it)",
            m.sse_pollers.clone(),
        );
        registry.register(
            "retention_jobs_purged",
            "Final jobs whose stored results this replica purged after RESULTS_RETENTION_DAYS",
            m.retention_jobs_purged.clone(),
        );
        registry.register(
            "retention_chunks_purged",
            "Stored chunks this replica deleted after RESULTS_RETENTION_DAYS",
            m.retention_chunks_purged.clone(),
        );
        registry.register(
            "retention_idempotency_keys_purged",
            "Idempotency keys this replica cleared after IDEMPOTENCY_RETENTION_HOURS",
            m.retention_idempotency_keys_purged.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs settled for the first time by this replica, by final status",
            m.jobs_completed.clone(),
        );
        registry.register_with_unit(
            "job_completion",
            "Time from a job's release (reserve_at, else created_at) to its last point written or dead-lettered",
            Unit::Seconds,
            m.job_completion_seconds.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by this replica, by result (delivered, rejected, timeout, error)",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "webhook_gave_up",
            "Webhook events given up after WEBHOOK_RETRY_FOR without a 2xx answer",
            m.webhook_gave_up.clone(),
        );
        registry.register(
            "webhook_due",
            "Webhook events due for delivery (reported by the replica holding the delivery lease, 0 elsewhere)",
            m.webhook_due.clone(),
        );
        registry.register_with_unit(
            "webhook_oldest_due",
            "How long the oldest due webhook event has been due (0 when none)",
            Unit::Seconds,
            m.webhook_oldest_due_seconds.clone(),
        );
        registry.register(
            "webhook_in_flight",
            "Webhook deliveries in flight on this replica (at most WEBHOOK_CONCURRENCY)",
            m.webhook_in_flight.clone(),
        );
        registry.register(
            "webhook_circuit_opens",
            "Times a webhook endpoint's circuit opened after WEBHOOK_BREAKER_FAILURES consecutive failures, or a failed trial",
            m.webhook_circuit_opens.clone(),
        );
        registry.register(
            "webhook_circuits_open",
            "Webhook endpoints whose circuit is open or half-open now (on the replica holding the delivery lease)",
            m.webhook_circuits_open.clone(),
        );
        registry.register(
            "webhook_held_back",
            "Webhook events moved past their endpoint's cool-off without an attempt (its circuit open)",
            m.webhook_held_back.clone(),
        );
        registry.register(
            "reconciler_jobs_compared",
            "Quiet jobs the reconciler compared with the ledger and the dead letters",
            m.reconciler_jobs_compared.clone(),
        );
        registry.register(
            "reconciler_points_resent",
            "Points the reconciler found neither written nor dead-lettered and sent again",
            m.reconciler_points_resent.clone(),
        );
        registry.register(
            "reconciler_points_given_up",
            "Points the reconciler dead-lettered as lost in transit after its re-sends",
            m.reconciler_points_given_up.clone(),
        );
        registry.register_with_unit(
            "reconciler_quiet_period",
            "How long a job must go without progress before the reconciler compares it (0 on replicas not holding its lease)",
            Unit::Seconds,
            m.reconciler_quiet_period_seconds.clone(),
        );
        registry.register_with_unit(
            "oldest_unfinished_job",
            "Age of the oldest released job not yet final, from its release (reported by the reconciler's lease holder, 0 elsewhere)",
            Unit::Seconds,
            m.oldest_unfinished_job_seconds.clone(),
        );
        registry.register(
            "readiness_checks",
            "Readiness checks made (one MySQL query, Redis PING and SQS GetQueueAttributes each); /readyz answers from the last for a second",
            m.readiness_checks.clone(),
        );
        Self { registry, ..m }
    }

    /// The `client_id` label of `client_id`: itself when configured, else [`OTHER_CLIENT`].
    pub fn client_label(&self, client_id: &str) -> ClientLabels {
        let known = self
            .clients
            .binary_search_by(|c| c.as_str().cmp(client_id))
            .is_ok();
        ClientLabels {
            client_id: if known { client_id } else { OTHER_CLIENT }.to_owned(),
        }
    }

    /// Sets the per-client backlog series from `(client_id, due points, oldest due age in
    /// seconds)` rows: every configured client has both series, 0 without a backlog.
    pub fn set_client_backlogs(&self, rows: &[(String, i64, f64)]) {
        self.client_backlog_points.clear();
        self.client_dispatch_lag_seconds.clear();
        for client in &self.clients {
            let label = ClientLabels {
                client_id: client.clone(),
            };
            self.client_backlog_points.get_or_create(&label).set(0);
            self.client_dispatch_lag_seconds
                .get_or_create(&label)
                .set(0.0);
        }
        for (client_id, points, lag) in rows {
            let label = self.client_label(client_id);
            self.client_backlog_points
                .get_or_create(&label)
                .inc_by(*points);
            let oldest = self.client_dispatch_lag_seconds.get_or_create(&label);
            if *lag > oldest.get() {
                oldest.set(*lag);
            }
        }
    }

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
    fn client_series_are_the_configured_clients_and_other() {
        let metrics = SenderMetrics::for_clients(vec!["b".into(), "a".into(), "a".into()]);
        metrics.set_client_backlogs(&[
            ("a".into(), 300, 12.5),
            ("gone".into(), 20, 40.0),
            ("removed".into(), 5, 50.0),
        ]);
        let text = metrics.render();
        for line in [
            r#"accrual_sender_client_backlog_points{client_id="a"} 300"#,
            r#"accrual_sender_client_backlog_points{client_id="b"} 0"#,
            r#"accrual_sender_client_backlog_points{client_id="other"} 25"#,
            r#"accrual_sender_client_dispatch_lag_seconds{client_id="other"} 50.0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // The next reading replaces this one: a client whose backlog drained reads 0.
        metrics.set_client_backlogs(&[]);
        let text = metrics.render();
        assert!(text.contains(r#"accrual_sender_client_backlog_points{client_id="a"} 0"#));
        assert!(!text.contains(r#"client_id="other""#), "{text}");
    }
}
