//! Reading a `POST /v1/accruals` body within its limits: size (413), rate and time (408), and the
//! memory budget shared by every upload in flight (503), of which one client holds at most its
//! share.
//!
//! Bytes are counted as they arrive, never reserved for a declared `Content-Length`: a client that
//! declares large bodies and sends them slowly holds only what it has sent. A body that declares
//! its length must arrive at the rate that ends it within `SENDER_BODY_TIMEOUT` (or the minimum
//! rate, if higher), so an upload that keeps to its minimum rate always fits in its time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use accrual_core::settings::{Problems, parse_duration};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::MAX_BODY_BYTES;
use crate::http::error::ApiError;
use crate::http::server::require_http_timeout;

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("the body exceeds {MAX_BODY_BYTES} bytes (100 MiB)"))
}

/// How long a client refused for the body budget should wait: long enough for the uploads in
/// flight to be parsed, short enough to matter.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The bytes of request bodies held at once: by all clients together (a semaphore of one permit
/// per byte) and by each client (at most its share). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    total: Arc<Semaphore>,
    per_client: u64,
    held: Arc<Mutex<HashMap<String, u64>>>,
}

/// A body's bytes of the budget, given back when dropped.
#[derive(Debug)]
pub struct HeldBytes {
    budget: BodyBudget,
    client_id: String,
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl BodyBudget {
    /// `total` bytes for all clients together, at most `per_client` of them for one.
    pub fn new(total: u64, per_client: u64) -> Self {
        Self {
            // Validated to fit a semaphore.
            total: Arc::new(Semaphore::new(total as usize)),
            per_client,
            held: Arc::default(),
        }
    }

    /// Nothing yet, for `client_id`'s body.
    pub fn start(&self, client_id: &str) -> HeldBytes {
        HeldBytes {
            budget: self.clone(),
            client_id: client_id.to_owned(),
            permit: None,
            bytes: 0,
        }
    }

    /// Bytes of the whole budget not held by any body.
    pub fn available(&self) -> usize {
        self.total.available_permits()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Every operation is one step on the map, consistent even if a holder panicked.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HeldBytes {
    /// `more` bytes for this body, or 503 when its client holds its share or all clients the
    /// whole budget.
    fn grow(&mut self, more: usize) -> Result<(), ApiError> {
        let more = more as u64;
        {
            let mut held = self.budget.lock();
            let client = held.entry(self.client_id.clone()).or_default();
            if *client + more > self.budget.per_client {
                return Err(ApiError::ServerBusy {
                    detail: format!(
                        "this client's uploads in flight hold its share of the body budget ({} bytes); retry when one has been answered",
                        self.budget.per_client
                    ),
                    retry_after: BUSY_RETRY_AFTER,
                });
            }
            *client += more;
        }
        // At most MAX_BODY_BYTES (100 MiB) at a time: far under u32::MAX.
        let permits = u32::try_from(more).unwrap_or(u32::MAX);
        match self.budget.total.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                match &mut self.permit {
                    Some(held) => held.merge(permit),
                    None => self.permit = Some(permit),
                }
                self.bytes += more;
                Ok(())
            }
            Err(_) => {
                self.budget.give_back(&self.client_id, more);
                Err(ApiError::ServerBusy {
                    detail: "too many request bodies are being received at once; retry later"
                        .into(),
                    retry_after: BUSY_RETRY_AFTER,
                })
            }
        }
    }

    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl BodyBudget {
    fn give_back(&self, client_id: &str, bytes: u64) {
        let mut held = self.lock();
        if let Some(client) = held.get_mut(client_id) {
            *client = client.saturating_sub(bytes);
            if *client == 0 {
                held.remove(client_id);
            }
        }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        // The semaphore's permits go back with `permit`.
        self.budget.give_back(&self.client_id, self.bytes);
    }
}

/// Reads the body, refusing it as soon as it passes the limit (by `Content-Length` up front, or
/// while streaming), when it arrives too slowly (408), or when it does not fit in its client's
/// share or the budget (503). The held bytes are the body's part of the budget: keep them as long
/// as the bytes.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    uploads: &Uploads,
    client_id: &str,
) -> Result<(Bytes, HeldBytes), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut held = uploads.budget.start(client_id);
    let rate = min_rate(declared, uploads);
    // One buffer of the declared size, filled frame by frame: the body is never held twice (once
    // as frames and once joined), which for a 100 MiB body would double the peak memory. Pages
    // the body has not reached yet are never touched, so they take no memory.
    let mut limited = Limited::new(body, MAX_BODY_BYTES);
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let started = Instant::now();
    loop {
        let due = next_byte_due(started, buf.len(), rate, uploads);
        let frame = match tokio::time::timeout_at(due, limited.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(too_slow(started.elapsed(), buf.len(), rate, uploads)),
        };
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    held.grow(data.len())?;
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::MalformedJson {
                    message: format!("the body could not be read: {e}"),
                    line: 0,
                    column: 0,
                });
            }
        }
    }
    Ok((Bytes::from(buf), held))
}

/// The slowest average rate a body may arrive at: the configured minimum, or, for a body that
/// declares its length, the rate that ends it within the timeout (after the grace) if higher.
fn min_rate(declared: Option<u64>, uploads: &Uploads) -> f64 {
    let floor = uploads.min_bytes_per_sec.max(1) as f64;
    let window = uploads.timeout.saturating_sub(uploads.rate_grace);
    match declared {
        Some(length) if !window.is_zero() => floor.max(length as f64 / window.as_secs_f64()),
        _ => floor,
    }
}

/// When the body, `received` bytes of it so far, must have grown for its average rate to stay at
/// least `rate` after the grace, and for it to end within the timeout.
fn next_byte_due(started: Instant, received: usize, rate: f64, uploads: &Uploads) -> Instant {
    let at_rate = uploads.rate_grace + Duration::from_secs_f64(received as f64 / rate);
    started + at_rate.min(uploads.timeout)
}

fn too_slow(elapsed: Duration, received: usize, rate: f64, uploads: &Uploads) -> ApiError {
    ApiError::RequestTimeout(if elapsed >= uploads.timeout {
        format!(
            "the body took longer than {}s; send it faster or in smaller requests",
            uploads.timeout.as_secs()
        )
    } else {
        format!(
            "the body arrived slower than {} bytes per second, the rate that ends it within {}s ({received} bytes in {}s)",
            rate.ceil() as u64,
            uploads.timeout.as_secs(),
            elapsed.as_secs()
        )
    })
}

/// How request bodies are read: rate, time and memory limits.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadSettings {
    /// Slowest average rate, in bytes per second, at which a request body may arrive once
    /// `SENDER_BODY_RATE_GRACE` has passed; a slower body is refused with 408.
    #[arg(long, env = "SENDER_BODY_MIN_BYTES_PER_SEC", default_value_t = 64 * 1024)]
    pub sender_body_min_bytes_per_sec: u64,

    /// How long a request body may take before `SENDER_BODY_MIN_BYTES_PER_SEC` applies (e.g. 5s).
    #[arg(long, env = "SENDER_BODY_RATE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub sender_body_rate_grace: Duration,

    /// Longest a request body may take to arrive, whatever its rate (e.g. 300s); then 408.
    #[arg(long, env = "SENDER_BODY_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub sender_body_timeout: Duration,

    /// Bytes of request bodies held at once, across all uploads in flight, counted as they arrive
    /// (at least the 100 MiB largest body); a body that does not fit is refused with 503 and
    /// `Retry-After`.
    #[arg(long, env = "SENDER_BODY_BUDGET_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub sender_body_budget_bytes: u64,

    /// Bytes of request bodies one client may hold at once, out of `SENDER_BODY_BUDGET_BYTES`
    /// (at least the 100 MiB largest body, at most the budget; by default a quarter of the
    /// budget, or the largest body if more); beyond it that client's upload is refused with 503,
    /// whatever room the others leave.
    #[arg(long, env = "SENDER_BODY_CLIENT_SHARE_BYTES")]
    pub sender_body_client_share_bytes: Option<u64>,
}

/// Above this a semaphore cannot count the bytes (tokio's `Semaphore::MAX_PERMITS`).
pub const MAX_BODY_BUDGET_BYTES: u64 = Semaphore::MAX_PERMITS as u64;

impl UploadSettings {
    /// `SENDER_BODY_CLIENT_SHARE_BYTES`, or its default: a quarter of the budget, at least one
    /// largest body, at most the budget.
    pub fn body_client_share_bytes(&self) -> u64 {
        self.sender_body_client_share_bytes.unwrap_or_else(|| {
            (self.sender_body_budget_bytes / 4)
                .max(MAX_BODY_BYTES as u64)
                .min(self.sender_body_budget_bytes)
        })
    }

    /// Refuses a budget a largest body cannot fit in, and rates and times that would cut every
    /// body or none.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        for (timeout, name) in [
            (self.sender_body_rate_grace, "SENDER_BODY_RATE_GRACE"),
            (self.sender_body_timeout, "SENDER_BODY_TIMEOUT"),
        ] {
            require_http_timeout(&mut problems, timeout, name);
        }
        problems.require(
            self.sender_body_min_bytes_per_sec >= 1,
            "SENDER_BODY_MIN_BYTES_PER_SEC must be at least 1",
        );
        problems.require(
            (MAX_BODY_BYTES as u64..=MAX_BODY_BUDGET_BYTES)
                .contains(&self.sender_body_budget_bytes),
            &format!(
                "SENDER_BODY_BUDGET_BYTES must be {MAX_BODY_BYTES}-{MAX_BODY_BUDGET_BYTES} (at least one largest body must fit)"
            ),
        );
        problems.require(
            (MAX_BODY_BYTES as u64..=self.sender_body_budget_bytes.max(MAX_BODY_BYTES as u64))
                .contains(&self.body_client_share_bytes()),
            &format!(
                "SENDER_BODY_CLIENT_SHARE_BYTES must be at least {MAX_BODY_BYTES} (one largest body) and at most SENDER_BODY_BUDGET_BYTES"
            ),
        );
        problems.into_group_result()
    }
}

impl Uploads {
    /// The limits `settings` give (validated), with an empty budget.
    pub fn new(settings: &UploadSettings) -> Self {
        Self {
            budget: BodyBudget::new(
                settings.sender_body_budget_bytes,
                settings.body_client_share_bytes(),
            ),
            min_bytes_per_sec: settings.sender_body_min_bytes_per_sec,
            rate_grace: settings.sender_body_rate_grace,
            timeout: settings.sender_body_timeout,
        }
    }
}

/// The limits on reading a request body, so that slow or many uploads cannot hold connections
/// and memory without end.
#[derive(Clone, Debug)]
pub struct Uploads {
    /// Bytes of request bodies held at once, shared by every upload in flight and counted as they
    /// arrive: a body holds what it has sent so far, until it has been parsed.
    pub budget: BodyBudget,
    /// Slowest average rate, once `rate_grace` has passed; a body that declares its length must
    /// also keep the rate that ends it within `timeout`.
    pub min_bytes_per_sec: u64,
    pub rate_grace: Duration,
    /// Longest a body may take, whatever its rate.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn uploads(budget: u64, per_client: u64) -> Uploads {
        Uploads {
            budget: BodyBudget::new(budget, per_client),
            min_bytes_per_sec: 64 * 1024,
            rate_grace: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
        }
    }

    fn chunked(n: usize) -> Body {
        let frames = (0..n).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")));
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_too_large() {
        let max = MAX_BODY_BYTES as u64;
        let uploads = uploads(max, max);
        let exact = read_limited(
            &HeaderMap::new(),
            Body::from(vec![b' '; MAX_BODY_BYTES]),
            &uploads,
            "a",
        )
        .await;
        assert_eq!(exact.map(|(b, _)| b.len()).ok(), Some(MAX_BODY_BYTES));
        let over = read_limited(
            &HeaderMap::new(),
            Body::from(vec![b' '; MAX_BODY_BYTES + 1]),
            &uploads,
            "a",
        )
        .await;
        assert!(matches!(over, Err(ApiError::PayloadTooLarge(_))));
    }

    #[tokio::test]
    async fn bodies_hold_the_bytes_they_sent_within_their_clients_share_until_dropped() {
        let uploads = uploads(100, 70);
        let (_, first) = read_limited(&HeaderMap::new(), chunked(6), &uploads, "a")
            .await
            .expect("60 bytes fit");
        assert_eq!(first.bytes(), 60);
        // Client a's share is 70: 20 more do not fit; client b's 40 do.
        let over_share = read_limited(&HeaderMap::new(), chunked(2), &uploads, "a").await;
        assert!(
            matches!(&over_share, Err(ApiError::ServerBusy { detail, .. }) if detail.contains("share")),
            "{over_share:?}"
        );
        let (_, other) = read_limited(&HeaderMap::new(), chunked(4), &uploads, "b")
            .await
            .expect("client b has its own share");
        // The whole budget is held now: one byte more fits nowhere.
        assert_eq!(uploads.budget.available(), 0);
        let full = read_limited(&HeaderMap::new(), chunked(1), &uploads, "c").await;
        assert!(matches!(full, Err(ApiError::ServerBusy { .. })));
        // A declared length is not reserved: only what arrives counts.
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
        drop(other);
        let (_, small) = read_limited(&declared, chunked(1), &uploads, "b")
            .await
            .expect("10 bytes of a body declaring 1000");
        assert_eq!(small.bytes(), 10);
        drop((first, small));
        assert_eq!(uploads.budget.available(), 100);
        assert!(uploads.budget.lock().is_empty(), "no client holds anything");
    }

    #[test]
    fn a_body_is_due_at_its_minimum_rate_after_the_grace_and_never_after_the_timeout() {
        let uploads = uploads(1, 1);
        let started = Instant::now();
        let floor = min_rate(None, &uploads);
        let due = |received, rate| next_byte_due(started, received, rate, &uploads) - started;
        assert_eq!(due(0, floor), Duration::from_secs(5));
        assert_eq!(due(64 * 1024 * 10, floor), Duration::from_secs(15));
        assert_eq!(due(MAX_BODY_BYTES, floor), Duration::from_secs(300));
        // A declared 100 MiB body must keep 100 MiB / 295 s, and so ends within the timeout
        // when it does; a small one keeps the configured minimum.
        let largest = min_rate(Some(MAX_BODY_BYTES as u64), &uploads);
        assert!(
            (largest - MAX_BODY_BYTES as f64 / 295.0).abs() < 1.0,
            "{largest}"
        );
        assert_eq!(due(MAX_BODY_BYTES, largest), Duration::from_secs(300));
        assert_eq!(min_rate(Some(1_000), &uploads), floor);
    }
}
