//! One delivery: the POST, signed on MySQL's clock and bounded by `WEBHOOK_TIMEOUT` (redirects not
//! followed), and its record: the attempt's row and the event's next step (delivered, tried again
//! after a back-off, or given up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use accrual_core::webhook::{self, SIGNATURE_HEADER};
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

use super::breaker::Outcome;
use super::claim::Claimed;
use super::settings::WebhookSettings;
use crate::metrics::{SenderMetrics, WebhookLabels};

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("accrual-webhooks/", env!("CARGO_PKG_VERSION"));

/// Longest error text kept per attempt (the columns' size).
const MAX_ERROR_CHARS: usize = 500;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<axum::body::Bytes>,
>;

/// Sends events and records what came of them; cloned into every delivery.
#[derive(Clone, Debug)]
pub(super) struct Deliverer {
    pool: MySqlPool,
    settings: WebhookSettings,
    metrics: Arc<SenderMetrics>,
    http: HttpClient,
}

/// What one attempt came to.
pub(super) struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    result: &'static str,
    took: Duration,
    /// What it tells about the endpoint, for its circuit.
    pub(super) outcome: Outcome,
}

impl Attempt {
    /// No request was made.
    fn not_sent(error: String) -> Self {
        Self {
            status: None,
            error: Some(error),
            result: "error",
            took: Duration::ZERO,
            outcome: Outcome::NotSent,
        }
    }
}

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

impl Deliverer {
    pub(super) fn new(
        pool: MySqlPool,
        settings: WebhookSettings,
        metrics: Arc<SenderMetrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            settings,
            metrics,
            http: https_client()?,
        })
    }

    /// POSTs one event (not recorded yet) and counts the attempt.
    pub(super) async fn attempt(&self, event: &Claimed) -> Attempt {
        let attempt = match &event.endpoint {
            None => Attempt::not_sent("the client's webhook endpoint was removed".into()),
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
        attempt
    }

    async fn post(&self, url: &str, secret: &str, signed_at: DateTime<Utc>, body: &str) -> Attempt {
        let started = Instant::now();
        // Only an http or https URL with a host, whatever the row holds.
        let url = match webhook::endpoint_url(url) {
            Ok(url) => url,
            Err(e) => return Attempt::not_sent(format!("endpoint refused: {e}")),
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
            Err(e) => return Attempt::not_sent(format!("endpoint refused: {e}")),
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
                    outcome: if status.is_server_error() {
                        Outcome::Failed
                    } else {
                        Outcome::Answered
                    },
                }
            }
            Ok(Err(e)) => Attempt {
                status: None,
                result: "error",
                error: Some(error_chain(&e)),
                took,
                outcome: Outcome::Failed,
            },
            Err(_) => Attempt {
                status: None,
                result: "timeout",
                error: Some(format!(
                    "timed out after {} ms (WEBHOOK_TIMEOUT)",
                    self.settings.webhook_timeout.as_millis()
                )),
                took,
                outcome: Outcome::Failed,
            },
        }
    }

    /// Stores the attempt and the event's next step: delivered, tried again later, or given up.
    pub(super) async fn record(
        &self,
        event: &Claimed,
        attempt: &Attempt,
    ) -> Result<(), sqlx::Error> {
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

    #[test]
    fn error_text_is_cut_to_the_column() {
        let long = std::io::Error::other("x".repeat(2_000));
        assert_eq!(error_chain(&long).chars().count(), MAX_ERROR_CHARS);
    }
}
