//! Signed webhooks: the events, the outbox row written in the same transaction as a job's state
//! change, the signature, the endpoint rules and the retry schedule.
//!
//! A client has at most one endpoint (`webhook_endpoints`, set by the operator with `accrualctl
//! webhooks set`). Whoever changes a job's state (the sender's dispatcher, cancel and completion
//! task, the listener's settlement) calls [`record`] inside its transaction: when the client has
//! an endpoint, the event's body (the job view as at the change, plus `event`, `event_id`,
//! `created_at`) is stored in `webhook_events`, so it exists if and only if the change committed.
//! The sender's delivery task (one replica at a time, by lease) then POSTs it until a 2xx answer
//! or until the retry period is over.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{KeyInit, Mac};
use serde::Serialize;
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::job_status::JobStatus;
use crate::job_view::{self, JobView};

/// The lease the delivery task holds (`maintenance_leases`).
pub const LEASE: &str = "webhooks";

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Accrual-Signature";

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Completed,
    CompletedWithErrors,
    /// A reserved job's time came: it started dispatching.
    Released,
    Cancelled,
    /// A reversal job settled for the first time; the event is about the job it reverses.
    Reversed,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Completed,
        Event::CompletedWithErrors,
        Event::Released,
        Event::Cancelled,
        Event::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Completed => "job.completed",
            Event::CompletedWithErrors => "job.completed_with_errors",
            Event::Released => "job.released",
            Event::Cancelled => "job.cancelled",
            Event::Reversed => "job.reversed",
        }
    }

    /// The event of a job settling with this final status.
    pub fn settled(status: JobStatus) -> Option<Event> {
        match status {
            JobStatus::Completed => Some(Event::Completed),
            JobStatus::CompletedWithErrors => Some(Event::CompletedWithErrors),
            _ => None,
        }
    }
}

/// A webhook's body: the event's own fields and, under `job`, the job's view as at the change
/// (exactly `GET /v1/jobs/{job_id}`'s JSON; nested, so the event's `created_at` and the job's
/// cannot be mistaken for each other).
#[derive(Debug, Serialize)]
pub struct EventBody<'a> {
    pub event: &'static str,
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub job: &'a JobView,
}

/// Stores `event` about `job_id` in the outbox, through `conn` (the transaction that changes the
/// job), if the job's client has an endpoint; returns the new event's id, if any. The body is the
/// job as this transaction sees it.
pub async fn record(
    conn: &mut MySqlConnection,
    job_id: Uuid,
    event: Event,
) -> Result<Option<Uuid>, sqlx::Error> {
    let Some((client_id, view)) = job_view::stored(&mut *conn, job_id).await? else {
        return Ok(None);
    };
    // MySQL's clock, like every other instant of the outbox (the retry period counts from it).
    let now: Option<NaiveDateTime> =
        sqlx::query_scalar("SELECT NOW(6) FROM webhook_endpoints WHERE client_id = ?")
            .bind(&client_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(now) = now else {
        return Ok(None);
    };
    let event_id = Uuid::now_v7();
    let body = EventBody {
        event: event.as_str(),
        event_id,
        created_at: now.and_utc(),
        job: &view,
    };
    let body = serde_json::to_string(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // Only while the endpoint is there (an operator may remove it at the same time).
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (event_id, client_id, event, job_id, body, created_at, next_attempt_at) \
         SELECT ?, client_id, ?, ?, ?, ?, ? FROM webhook_endpoints WHERE client_id = ?",
    )
    .bind(event_id)
    .bind(event.as_str())
    .bind(job_id)
    .bind(&body)
    .bind(now)
    .bind(now)
    .bind(&client_id)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    tracing::debug!(%job_id, %event_id, event = event.as_str(), client_id, "Webhook event recorded");
    Ok(Some(event_id))
}

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Parse(String),
    #[error("only http and https URLs are allowed, not {0}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL must not carry a user name or password")]
    Credentials,
    #[error("the URL is longer than 2048 characters")]
    TooLong,
}

/// Checks an endpoint URL: http or https, with a host, no credentials, at most 2048 characters.
pub fn endpoint_url(text: &str) -> Result<url::Url, UrlError> {
    if text.len() > 2048 {
        return Err(UrlError::TooLong);
    }
    let url = url::Url::parse(text).map_err(|e| UrlError::Parse(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    Ok(url)
}

/// A new random endpoint secret: `whsec_` and 64 hex digits (256 bits from the OS's generator).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", crate::api_key::hex(&bytes))
}

/// `t=<unix>,v1=<hex of HMAC-SHA256(secret, "<unix>.<body>")>`: the `Accrual-Signature` header.
pub fn signature(secret: &str, unix: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix},v1={hex}")
}

/// The most any wait between two attempts grows to.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);

/// The wait after failed attempt number `attempt` (1 for the first): `first`, doubled after each
/// further failure, at most [`MAX_BACKOFF`] (or `first` if that is longer), plus `jitter` (0..1)
/// of a fifth more, so endpoints coming back are not hit by every event at once.
pub fn backoff(first: Duration, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base = first
        .saturating_mul(1u32 << doublings.min(31))
        .min(MAX_BACKOFF.max(first));
    base + base.mul_f64(jitter.clamp(0.0, 1.0) / 5.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_endpoints() {
        assert!(endpoint_url("https://crm.example.com/hooks/accrual").is_ok());
        assert!(endpoint_url("http://127.0.0.1:9000/").is_ok());
        assert_eq!(
            endpoint_url("ftp://example.com/"),
            Err(UrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            endpoint_url("file:///etc/passwd"),
            Err(UrlError::Scheme("file".into()))
        );
        assert!(matches!(
            endpoint_url("example.com"),
            Err(UrlError::Parse(_))
        ));
        assert!(matches!(endpoint_url("http://"), Err(UrlError::Parse(_))));
        assert_eq!(
            endpoint_url("https://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(endpoint_url(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn backoff_doubles_up_to_an_hour_with_at_most_a_fifth_of_jitter() {
        let first = Duration::from_secs(10);
        assert_eq!(backoff(first, 1, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(first, 2, 0.0), Duration::from_secs(20));
        assert_eq!(backoff(first, 4, 0.0), Duration::from_secs(80));
        assert_eq!(backoff(first, 30, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(first, u32::MAX, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(first, 1, 1.0), Duration::from_secs(12));
        let long = Duration::from_secs(2 * 3_600);
        assert_eq!(backoff(long, 3, 0.0), long);
    }

    #[test]
    fn event_names_are_the_documented_ones() {
        let names: Vec<_> = Event::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "job.completed",
                "job.completed_with_errors",
                "job.released",
                "job.cancelled",
                "job.reversed"
            ]
        );
        assert_eq!(Event::settled(JobStatus::Completed), Some(Event::Completed));
        assert_eq!(Event::settled(JobStatus::Cancelled), None);
    }
}
