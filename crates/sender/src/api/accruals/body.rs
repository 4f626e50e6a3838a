//! Reading a `POST /v1/accruals` body within its limits: size (413), rate and time (408), and the
//! memory budget shared by every upload in flight (503).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::MAX_BODY_BYTES;
use crate::api::error::ApiError;
use crate::state::Uploads;

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("the body exceeds {MAX_BODY_BYTES} bytes (100 MiB)"))
}

/// How long a client refused for the body budget should wait: long enough for the uploads in
/// flight to be parsed, short enough to matter.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Reads the body, refusing it as soon as it passes the limit (by `Content-Length` up front, or
/// while streaming a chunked body), when it arrives too slowly (408), or when the bodies in flight
/// hold the whole budget (503). The permit holds the body's bytes of the budget: keep it as long
/// as the bytes.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    uploads: &Uploads,
) -> Result<(Bytes, OwnedSemaphorePermit), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let declared = declared.unwrap_or(0) as usize;
    // The declared length is taken at once, so an upload is refused before it sends a byte rather
    // than half-way; a chunked body takes its bytes as they come.
    let mut permit = reserve(uploads, declared)?;
    // One buffer of the declared size, filled frame by frame: the body is never held twice (once
    // as frames and once joined), which for a 100 MiB body would double the peak memory.
    let mut limited = Limited::new(body, MAX_BODY_BYTES);
    let mut buf = Vec::with_capacity(declared);
    let started = Instant::now();
    loop {
        let due = next_byte_due(started, buf.len(), uploads);
        let frame = match tokio::time::timeout_at(due, limited.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(too_slow(started.elapsed(), buf.len(), uploads)),
        };
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    let more = (buf.len() + data.len()).saturating_sub(permit.num_permits());
                    if more > 0 {
                        permit.merge(reserve(uploads, more)?);
                    }
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
    Ok((Bytes::from(buf), permit))
}

/// `bytes` more of the body budget, or 503 if the uploads in flight hold it.
fn reserve(uploads: &Uploads, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    // At most MAX_BODY_BYTES (100 MiB) at a time: far under u32::MAX.
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    uploads
        .budget
        .clone()
        .try_acquire_many_owned(bytes)
        .map_err(|_| ApiError::ServerBusy {
            detail: "too many request bodies are being received at once; retry later".into(),
            retry_after: BUSY_RETRY_AFTER,
        })
}

/// When the body, `received` bytes of it so far, must have grown for its average rate to stay at
/// least the minimum after the grace, and for it to end within the timeout.
fn next_byte_due(started: Instant, received: usize, uploads: &Uploads) -> Instant {
    let rate = uploads.min_bytes_per_sec.max(1) as f64;
    let at_rate = uploads.rate_grace + Duration::from_secs_f64(received as f64 / rate);
    started + at_rate.min(uploads.timeout)
}

fn too_slow(elapsed: Duration, received: usize, uploads: &Uploads) -> ApiError {
    ApiError::RequestTimeout(if elapsed >= uploads.timeout {
        format!(
            "the body took longer than {}s; send it faster or in smaller requests",
            uploads.timeout.as_secs()
        )
    } else {
        format!(
            "the body arrived slower than {} bytes per second ({received} bytes in {}s)",
            uploads.min_bytes_per_sec,
            elapsed.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn uploads(budget: usize) -> Uploads {
        Uploads {
            budget: std::sync::Arc::new(tokio::sync::Semaphore::new(budget)),
            min_bytes_per_sec: 64 * 1024,
            rate_grace: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_too_large() {
        let uploads = uploads(MAX_BODY_BYTES);
        let exact = read_limited(
            &HeaderMap::new(),
            Body::from(vec![b' '; MAX_BODY_BYTES]),
            &uploads,
        )
        .await;
        assert_eq!(exact.map(|(b, _)| b.len()).ok(), Some(MAX_BODY_BYTES));
        let over = read_limited(
            &HeaderMap::new(),
            Body::from(vec![b' '; MAX_BODY_BYTES + 1]),
            &uploads,
        )
        .await;
        assert!(matches!(over, Err(ApiError::PayloadTooLarge(_))));
    }

    #[tokio::test]
    async fn bodies_take_their_bytes_of_the_budget_until_the_permit_is_dropped() {
        let uploads = uploads(100);
        let chunked = |n: usize| {
            let frames = (0..n).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")));
            Body::from_stream(futures_util::stream::iter(frames))
        };
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("101"));

        let held = read_limited(&HeaderMap::new(), chunked(6), &uploads).await;
        let (_, permit) = held.expect("60 bytes fit");
        assert_eq!(permit.num_permits(), 60);
        let growing = read_limited(&HeaderMap::new(), chunked(5), &uploads).await;
        assert!(matches!(growing, Err(ApiError::ServerBusy { .. })));
        // Refused from the declared length, before a byte is read.
        let up_front = read_limited(&declared, Body::empty(), &uploads).await;
        assert!(matches!(up_front, Err(ApiError::ServerBusy { .. })));
        drop(permit);
        assert_eq!(uploads.budget.available_permits(), 100);
        assert!(
            read_limited(&HeaderMap::new(), chunked(10), &uploads)
                .await
                .is_ok()
        );
    }

    #[test]
    fn a_body_is_due_at_the_minimum_rate_after_the_grace_and_never_after_the_timeout() {
        let uploads = uploads(1);
        let started = Instant::now();
        let due = |received| next_byte_due(started, received, &uploads) - started;
        assert_eq!(due(0), Duration::from_secs(5));
        assert_eq!(due(64 * 1024 * 10), Duration::from_secs(15));
        assert_eq!(due(MAX_BODY_BYTES), Duration::from_secs(300));
    }
}
