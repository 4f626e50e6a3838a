//! Webhook delivery: every sender replica runs this task; the one holding the `webhooks` lease
//! ([`accrual_core::lease`]) delivers the outbox ([`accrual_core::webhook`]), the others wait.
//!
//! Each round (every `WEBHOOK_POLL`) the holder claims up to [`BATCH`] due events (their
//! `next_attempt_at` is pushed a whole lease ahead, so an event whose deliverer dies is tried
//! again once that has passed), POSTs them at once, each signed (its `t` on MySQL's clock, as the
//! claim read it, never the replica's) and bounded by `WEBHOOK_TIMEOUT`,
//! redirects not followed, and records every attempt. A 2xx answer finishes the event; anything
//! else schedules the next attempt with exponential back-off from `WEBHOOK_BACKOFF_FIRST` plus
//! jitter, until the next attempt would come more than `WEBHOOK_RETRY_FOR` after the event: then
//! it gives up (recorded, counted, logged). Delivery is at least once: a receiver that answers
//! too late, or a replica that dies after the POST, gets the same event (same `event_id`) again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrual_core::lease;
use accrual_core::settings::parse_duration;
use accrual_core::webhook::{self, SIGNATURE_HEADER};
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{SenderMetrics, WebhookLabels};

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("accrual-webhooks/", env!("CARGO_PKG_VERSION"));

/// Events claimed and delivered at once per round.
pub const BATCH: usize = 16;

/// Longest error text kept per attempt (the columns' size).
const MAX_ERROR_CHARS: usize = 500;

/// `WEBHOOK_*`: how webhooks are delivered.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// How long an event is retried after it happened before it is given up (e.g. 24h; at least
    /// 1s, at most 30 days).
    #[arg(long, env = "WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_long_duration)]
    pub webhook_retry_for: Duration,

    /// Longest a delivery may take, connection included, before it counts as failed (e.g. 10s;
    /// at least 100ms, at most 5m).
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_long_duration)]
    pub webhook_timeout: Duration,

    /// Wait after the first failed attempt; it doubles after each further one, up to an hour,
    /// plus up to a fifth of jitter (e.g. 10s; at least 10ms, at most 1h).
    #[arg(long, env = "WEBHOOK_BACKOFF_FIRST", default_value = "10s", value_parser = parse_long_duration)]
    pub webhook_backoff_first: Duration,

    /// How often the delivery task looks for due events (e.g. 1s; at least 10ms, at most 1h).
    #[arg(long, env = "WEBHOOK_POLL", default_value = "1s", value_parser = parse_long_duration)]
    pub webhook_poll: Duration,
}

impl WebhookSettings {
    /// Refuses values that would make the task spin, hang or never retry.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        require(
            (Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3_600))
                .contains(&self.webhook_retry_for),
            "WEBHOOK_RETRY_FOR must be at least 1s and at most 30 days",
        );
        require(
            (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.webhook_timeout),
            "WEBHOOK_TIMEOUT must be at least 100ms and at most 5m (deliveries would all fail, or hang)",
        );
        require(
            (Duration::from_millis(10)..=webhook::MAX_BACKOFF)
                .contains(&self.webhook_backoff_first),
            "WEBHOOK_BACKOFF_FIRST must be at least 10ms (failing endpoints would be hammered) and at most 1h",
        );
        require(
            (Duration::from_millis(10)..=Duration::from_secs(3_600)).contains(&self.webhook_poll),
            "WEBHOOK_POLL must be at least 10ms (the task would query MySQL without pause) and at most 1h",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The lease lasts two rounds of a whole batch: a holder renews it every round.
    fn lease_length(&self) -> Duration {
        (self.webhook_timeout + self.webhook_poll) * 2 + Duration::from_secs(1)
    }
}

/// The delivery task of one replica.
#[derive(Clone, Debug)]
pub struct Webhooks {
    pool: MySqlPool,
    settings: WebhookSettings,
    metrics: Arc<SenderMetrics>,
    /// This replica's name in `maintenance_leases.owner`.
    owner: String,
    http: HttpClient,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<axum::body::Bytes>,
>;

/// An HTTP/1 client for http and https URLs: rustls on the crypto provider the AWS SDK already
/// links (aws-lc-rs), the system's root certificates, no proxy, no redirects followed (hyper
/// follows none).
fn https_client() -> anyhow::Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            errors = found.errors.len(),
            "No root certificates found: webhooks to https URLs will fail"
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// An event claimed for an attempt, with its endpoint as it is now.
struct Claimed {
    event_id: Uuid,
    event: String,
    body: String,
    /// Time since the event happened, when claimed.
    age: Duration,
    claimed: Instant,
    /// MySQL's `NOW(6)` when claimed: the signature's time is this plus the time since, so every
    /// replica signs on MySQL's clock whatever its own says (receivers refuse a skewed `t`).
    claimed_db: DateTime<Utc>,
    /// `None` once the client's endpoint is removed.
    endpoint: Option<(String, String)>,
}

/// What one attempt came to.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    result: &'static str,
    took: Duration,
}

impl Webhooks {
    pub fn new(
        pool: MySqlPool,
        settings: WebhookSettings,
        metrics: Arc<SenderMetrics>,
        owner: String,
    ) -> anyhow::Result<Self> {
        let http = https_client()?;
        Ok(Self {
            pool,
            settings,
            metrics,
            owner,
            http,
        })
    }

    /// Runs a round now and then every `WEBHOOK_POLL` until `shutdown` is cancelled (the batch in
    /// hand is finished: each attempt is bounded by `WEBHOOK_TIMEOUT`); then gives the lease up.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            owner = %self.owner,
            retry_for_secs = self.settings.webhook_retry_for.as_secs(),
            timeout_ms = self.settings.webhook_timeout.as_millis() as u64,
            backoff_first_ms = self.settings.webhook_backoff_first.as_millis() as u64,
            "Webhook delivery task starting"
        );
        let mut ticks = tokio::time::interval(self.settings.webhook_poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.round(&shutdown).await {
                tracing::warn!(error = %e, "Webhook round failed; trying again next round");
            }
        }
        if let Err(e) = lease::release(&self.pool, webhook::LEASE, &self.owner).await {
            tracing::debug!(error = %e, "Could not give the webhook lease up; it expires by itself");
        }
    }

    async fn take_lease(&self) -> Result<bool, sqlx::Error> {
        lease::take(
            &self.pool,
            webhook::LEASE,
            &self.owner,
            self.settings.lease_length(),
        )
        .await
    }

    /// While this replica holds the lease, delivers batches until none is due.
    async fn round(&self, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        if !self.take_lease().await? {
            self.metrics.webhook_due.set(0);
            self.metrics.webhook_oldest_due_seconds.set(0.0);
            return Ok(());
        }
        loop {
            let batch = self.claim().await?;
            let full = batch.len() == BATCH;
            let attempts = batch.into_iter().map(|event| self.attempt(event));
            for result in futures_util::future::join_all(attempts).await {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "Recording a webhook attempt failed; the event is tried again");
                }
            }
            if !full || shutdown.is_cancelled() || !self.take_lease().await? {
                break;
            }
        }
        self.observe_due().await
    }

    /// Takes up to [`BATCH`] due events, oldest due first, and moves them a lease ahead.
    async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        type Row = (Uuid, String, String, i64, String, DateTime<Utc>);
        let mut tx = self.pool.begin().await?;
        // Only the events are locked. Joined in this statement, the endpoint would be skipped too
        // while a state change's transaction holds its row share-locked (recording an event reads
        // it with INSERT … SELECT), and its event would look like one whose endpoint was removed.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, event, body, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)), client_id, \
             NOW(6) \
             FROM webhook_events WHERE next_attempt_at <= NOW(6) \
             ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH as u32)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // A plain (non-locking) read: the endpoints as committed, whoever holds their rows.
        let clients: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.4.as_str()).collect();
        let sql = format!(
            "SELECT client_id, url, secret FROM webhook_endpoints WHERE client_id IN {}",
            accrual_core::db::placeholders(1, clients.len())
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql));
        for client in &clients {
            query = query.bind(*client);
        }
        let endpoints: std::collections::HashMap<String, (String, String)> = query
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(client, url, secret)| (client, (url, secret)))
            .collect();
        let ids = accrual_core::db::placeholders(1, rows.len());
        let sql = format!(
            "UPDATE webhook_events SET next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE event_id IN {ids}"
        );
        let mut update = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.settings.lease_length().as_micros() as u64);
        for row in &rows {
            update = update.bind(row.0);
        }
        update.execute(&mut *tx).await?;
        tx.commit().await?;
        let claimed = Instant::now();
        Ok(rows
            .into_iter()
            .map(|r| Claimed {
                event_id: r.0,
                event: r.1,
                body: r.2,
                age: Duration::from_micros(r.3.max(0) as u64),
                claimed,
                claimed_db: r.5,
                endpoint: endpoints.get(&r.4).cloned(),
            })
            .collect())
    }

    /// POSTs one event and records what came of it.
    async fn attempt(&self, event: Claimed) -> Result<(), sqlx::Error> {
        let attempt = match &event.endpoint {
            None => Attempt {
                status: None,
                error: Some("the client's webhook endpoint was removed".into()),
                result: "error",
                took: Duration::ZERO,
            },
            Some((url, secret)) => {
                let signed_at = event.claimed_db
                    + chrono::Duration::from_std(event.claimed.elapsed()).unwrap_or_default();
                self.post(url, secret, signed_at, &event.body).await
            }
        };
        self.metrics
            .webhook_attempts
            .get_or_create(&WebhookLabels {
                result: attempt.result,
            })
            .inc();
        self.record(&event, &attempt).await
    }

    async fn post(&self, url: &str, secret: &str, signed_at: DateTime<Utc>, body: &str) -> Attempt {
        let started = Instant::now();
        // Only an http or https URL with a host, whatever the row holds.
        let url = match webhook::endpoint_url(url) {
            Ok(url) => url,
            Err(e) => {
                return Attempt {
                    status: None,
                    error: Some(format!("endpoint refused: {e}")),
                    result: "error",
                    took: Duration::ZERO,
                };
            }
        };
        let signature = webhook::signature(secret, signed_at.timestamp(), body.as_bytes());
        let request = hyper::Request::post(url.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(SIGNATURE_HEADER, signature)
            .body(http_body_util::Full::new(axum::body::Bytes::from(
                body.to_owned(),
            )));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                return Attempt {
                    status: None,
                    error: Some(format!("endpoint refused: {e}")),
                    result: "error",
                    took: Duration::ZERO,
                };
            }
        };
        // The timeout covers the connection, the request and the answer's head.
        let sent =
            tokio::time::timeout(self.settings.webhook_timeout, self.http.request(request)).await;
        let took = started.elapsed();
        match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                // The answer's body is not read: only its status counts.
                drop(response);
                let delivered = status.is_success();
                Attempt {
                    status: Some(status.as_u16()),
                    error: (!delivered).then(|| format!("HTTP {status}")),
                    result: if delivered { "delivered" } else { "rejected" },
                    took,
                }
            }
            Ok(Err(e)) => Attempt {
                status: None,
                result: "error",
                error: Some(error_chain(&e)),
                took,
            },
            Err(_) => Attempt {
                status: None,
                result: "timeout",
                error: Some(format!(
                    "timed out after {} ms (WEBHOOK_TIMEOUT)",
                    self.settings.webhook_timeout.as_millis()
                )),
                took,
            },
        }
    }

    /// Stores the attempt and the event's next step: delivered, tried again later, or given up.
    async fn record(&self, event: &Claimed, attempt: &Attempt) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let attempts: Option<u32> =
            sqlx::query_scalar("SELECT attempts FROM webhook_events WHERE event_id = ? FOR UPDATE")
                .bind(event.event_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(attempts) = attempts else {
            return Ok(());
        };
        let number = attempts + 1;
        sqlx::query(
            "INSERT INTO webhook_attempts (event_id, attempt, attempted_at, http_status, error, duration_ms) \
             VALUES (?, ?, NOW(6) - INTERVAL ? MICROSECOND, ?, ?, ?)",
        )
        .bind(event.event_id)
        .bind(number)
        .bind(attempt.took.as_micros() as u64)
        .bind(attempt.status)
        .bind(&attempt.error)
        .bind(u32::try_from(attempt.took.as_millis()).unwrap_or(u32::MAX))
        .execute(&mut *tx)
        .await?;
        let delivered = attempt.result == "delivered";
        let wait = webhook::backoff(
            self.settings.webhook_backoff_first,
            number,
            rand::random::<f64>(),
        );
        let age_at_next = event.age + event.claimed.elapsed() + wait;
        // An event whose endpoint is gone has nowhere to go.
        let gave_up = !delivered
            && (event.endpoint.is_none() || age_at_next > self.settings.webhook_retry_for);
        let step = if delivered {
            "delivered_at = NOW(6), next_attempt_at = NULL"
        } else if gave_up {
            "gave_up_at = NOW(6), next_attempt_at = NULL"
        } else {
            "next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND"
        };
        let sql = format!(
            "UPDATE webhook_events SET attempts = ?, last_status = ?, last_error = ?, {step} \
             WHERE event_id = ?"
        );
        let mut update = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(number)
            .bind(attempt.status)
            .bind(&attempt.error);
        if !delivered && !gave_up {
            update = update.bind(wait.as_micros() as u64);
        }
        update.bind(event.event_id).execute(&mut *tx).await?;
        tx.commit().await?;
        if delivered {
            tracing::debug!(event_id = %event.event_id, event = event.event, attempt = number, "Webhook delivered");
        } else if gave_up {
            self.metrics.webhook_gave_up.inc();
            tracing::warn!(
                event_id = %event.event_id,
                event = event.event,
                attempts = number,
                last_error = attempt.error.as_deref().unwrap_or_default(),
                "Webhook given up: no 2xx answer within WEBHOOK_RETRY_FOR, or its endpoint was removed"
            );
        } else {
            tracing::info!(
                event_id = %event.event_id,
                event = event.event,
                attempt = number,
                error = attempt.error.as_deref().unwrap_or_default(),
                retry_in_ms = wait.as_millis() as u64,
                "Webhook attempt failed; trying again later"
            );
        }
        Ok(())
    }

    /// Sets the due gauges from the outbox.
    async fn observe_due(&self) -> Result<(), sqlx::Error> {
        let (due, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(next_attempt_at), NOW(6)) \
             FROM webhook_events WHERE next_attempt_at <= NOW(6)",
        )
        .fetch_one(&self.pool)
        .await?;
        self.metrics.webhook_due.set(due);
        self.metrics
            .webhook_oldest_due_seconds
            .set(oldest.unwrap_or(0).max(0) as f64 / 1e6);
        Ok(())
    }
}

/// A duration as [`parse_duration`] takes it, or in hours (`24h`) or days (`7d`).
fn parse_long_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let long = |suffix: char, unit: u64| {
        s.strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| Duration::from_secs(n.saturating_mul(unit)))
    };
    if let Some(d) = long('h', 3_600).or_else(|| long('d', 86_400)) {
        return Ok(d);
    }
    parse_duration(s).map_err(|e| format!("{e}, h or d"))
}

/// An error and its sources, `: `-separated, cut to [`MAX_ERROR_CHARS`].
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookSettings,
    }

    fn parse(args: &[&str]) -> WebhookSettings {
        let all = std::iter::once("test").chain(args.iter().copied());
        Cli::try_parse_from(all).expect("parses").webhooks
    }

    #[test]
    fn the_defaults_retry_for_a_day() {
        let s = parse(&[]);
        assert_eq!(s.webhook_retry_for, Duration::from_secs(24 * 3_600));
        assert_eq!(s.webhook_timeout, Duration::from_secs(10));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn settings_that_would_spin_or_hang_are_refused_by_name() {
        for (args, named) in [
            (&["--webhook-retry-for", "0s"][..], "WEBHOOK_RETRY_FOR"),
            (&["--webhook-retry-for", "31d"], "WEBHOOK_RETRY_FOR"),
            (&["--webhook-timeout", "0s"], "WEBHOOK_TIMEOUT"),
            (&["--webhook-timeout", "6m"], "WEBHOOK_TIMEOUT"),
            (&["--webhook-backoff-first", "0ms"], "WEBHOOK_BACKOFF_FIRST"),
            (&["--webhook-backoff-first", "2h"], "WEBHOOK_BACKOFF_FIRST"),
            (&["--webhook-poll", "0s"], "WEBHOOK_POLL"),
            (&["--webhook-poll", "2h"], "WEBHOOK_POLL"),
        ] {
            let message = parse(args).validate().expect_err("refused");
            assert!(message.contains(named), "{args:?}: {message}");
        }
    }

    #[test]
    fn the_retry_period_takes_hours_and_days_too() {
        assert_eq!(parse_long_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_long_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_long_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_long_duration("soon").is_err());
    }

    #[test]
    fn error_text_is_cut_to_the_column() {
        let long = std::io::Error::other("x".repeat(2_000));
        assert_eq!(error_chain(&long).chars().count(), MAX_ERROR_CHARS);
    }
}
