//! Fan-out of message bodies to SQS with `SendMessageBatch`: 10 entries a call, a bounded number of
//! calls in flight, failed entries retried with capped exponential back-off.
//!
//! What SQS refuses for good (a sender fault: a body it will never accept) is not retried and does
//! not stop the fan-out: it comes back in [`Sent::refused`] with SQS's reason, so the dispatcher can
//! dead-letter exactly those points and mark the chunk dispatched. Retrying them would re-claim the
//! chunk forever and re-send its other points each time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use accrual_core::sqs::{SqsError, send_batches};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures_util::{StreamExt, TryStreamExt, stream};
use prometheus_client::metrics::counter::Counter;

/// Attempts per batch before the fan-out gives up (about a minute of back-off in all).
const MAX_ATTEMPTS: u32 = 12;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Why a fan-out stopped before every body was sent or refused: SQS kept failing in a way a later
/// attempt may not meet (down, throttling), so the whole chunk is tried again later.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("SQS kept failing after {MAX_ATTEMPTS} attempts")]
    Exhausted(#[source] SqsError),
    #[error("SQS kept failing entries after {MAX_ATTEMPTS} attempts ({code})")]
    EntriesExhausted { code: String },
    #[error("SQS refused the call")]
    Failed(#[source] SqsError),
}

/// A body SQS refused for good, with SQS's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub body: String,
    pub reason: String,
}

/// What a fan-out did: how many bodies SQS took, and the ones it refused for good.
#[derive(Debug, Default)]
pub struct Sent {
    pub sent: usize,
    pub refused: Vec<Refused>,
}

impl Sent {
    fn absorb(mut self, other: Sent) -> Sent {
        self.sent += other.sent;
        self.refused.extend(other.refused);
        self
    }
}

/// Sends message bodies to one queue.
#[derive(Clone, Debug)]
pub struct Fanout {
    client: Client,
    queue_url: String,
    /// Most SendMessageBatch calls in flight at once for one fan-out.
    max_in_flight: usize,
    /// Counts every SendMessageBatch call, retries included.
    calls: Counter,
    /// Whether each message carries its client as `MessageGroupId` (SQS fair queues).
    message_groups: bool,
}

impl Fanout {
    pub fn new(client: Client, queue_url: String, max_in_flight: usize, calls: Counter) -> Self {
        Self {
            client,
            queue_url,
            max_in_flight: max_in_flight.max(1),
            calls,
            message_groups: true,
        }
    }

    /// With `false`, messages carry no `MessageGroupId` (for an SQS emulator that refuses the
    /// field on a standard queue).
    pub fn with_message_groups(mut self, message_groups: bool) -> Self {
        self.message_groups = message_groups;
        self
    }

    /// Sends every body, each with `client_id` as its `MessageGroupId` (so SQS fair queues serve
    /// a quiet client beside a busy one); returns how many were sent and which were refused for
    /// good. Fails only when SQS kept failing for reasons that may pass. `progress` counts the
    /// calls SQS answered, so a caller can tell a slow fan-out from one that makes no progress.
    pub async fn send_all(
        &self,
        bodies: Vec<String>,
        client_id: &str,
        progress: &AtomicU64,
    ) -> Result<Sent, FanoutError> {
        let group = self.message_groups.then_some(client_id);
        stream::iter(send_batches(bodies))
            .map(|batch| self.send_batch(batch, group, progress))
            .buffer_unordered(self.max_in_flight)
            .try_fold(
                Sent::default(),
                |all, one| async move { Ok(all.absorb(one)) },
            )
            .await
    }

    /// Sends one batch of at most 10 bodies, retrying the call and any failed entries. A call
    /// refused as a whole for a reason retrying cannot fix is split into single entries, so only
    /// the body at fault is refused.
    async fn send_batch(
        &self,
        batch: Vec<String>,
        group: Option<&str>,
        progress: &AtomicU64,
    ) -> Result<Sent, FanoutError> {
        // Entry ids are the bodies' places in the batch, so failed entries can be found again.
        let mut pending: Vec<(usize, String)> = batch.into_iter().enumerate().collect();
        let mut done = Sent::default();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let entries = pending.iter().map(|(id, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(id.to_string())
                    .message_body(body.clone())
                    .set_message_group_id(group.map(str::to_owned))
                    .build()
            });
            // Building fails only without an id or a body, which every entry has.
            let entries: Vec<_> = entries.filter_map(Result::ok).collect();
            self.calls.inc();
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            if result.is_ok() {
                progress.fetch_add(1, Ordering::Relaxed);
            }
            match result {
                Ok(out) => {
                    let failed = out.failed();
                    done.sent += pending.len() - failed.len();
                    if failed.is_empty() {
                        return Ok(done);
                    }
                    let mut retry = Vec::new();
                    for (id, body) in std::mem::take(&mut pending) {
                        let Some(f) = failed.iter().find(|f| f.id() == id.to_string()) else {
                            continue;
                        };
                        // LocalStack marks an entry it refuses for its characters with
                        // `SenderFault: false`; the code says what the flag should.
                        if f.sender_fault() || is_content_code(f.code()) {
                            done.refused.push(Refused {
                                body,
                                reason: format!(
                                    "SQS refused the message ({}): {}",
                                    f.code(),
                                    f.message().unwrap_or("no message")
                                ),
                            });
                        } else {
                            retry.push((id, body));
                        }
                    }
                    if retry.is_empty() {
                        return Ok(done);
                    }
                    let code = failed[0].code().to_owned();
                    tracing::warn!(attempt, failed = retry.len(), %code, "SendMessageBatch entries failed; retrying them");
                    pending = retry;
                    if attempt == MAX_ATTEMPTS {
                        return Err(FanoutError::EntriesExhausted { code });
                    }
                }
                Err(err) if is_retriable(&err) && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(attempt, error = %err, "SendMessageBatch failed; retrying");
                }
                Err(err) if is_retriable(&err) => {
                    return Err(FanoutError::Exhausted(SqsError::new(
                        "SendMessageBatch",
                        err,
                    )));
                }
                Err(err) if !refuses_content(&err) => {
                    // Credentials, permissions, a missing queue: nothing a body can fix, and
                    // nothing to dead-letter; the chunk is tried again later.
                    return Err(FanoutError::Failed(SqsError::new("SendMessageBatch", err)));
                }
                Err(err) if pending.len() > 1 => {
                    // The whole call was refused (a body too large, say): find the body at fault.
                    tracing::warn!(error = %err, entries = pending.len(), "SendMessageBatch refused; sending its entries one by one");
                    for (_, body) in pending {
                        let one = Box::pin(self.send_batch(vec![body], group, progress)).await?;
                        done = done.absorb(one);
                    }
                    return Ok(done);
                }
                Err(err) => {
                    let (_, body) = pending.remove(0);
                    done.refused.push(Refused {
                        body,
                        reason: format!(
                            "SQS refused the message ({}): {}",
                            err.code().unwrap_or("unknown"),
                            err.message().unwrap_or("no message")
                        ),
                    });
                    return Ok(done);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("the loop returns on its last attempt")
    }
}

/// True when SQS refused a whole call because of what the bodies hold (too long, characters it does
/// not take, bad parameters): sending the bodies one by one finds the one at fault.
fn refuses_content<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    let SdkError::ServiceError(e) = err else {
        return false;
    };
    is_content_code(e.err().code().unwrap_or_default())
}

/// SQS error codes (with or without the `AWS.SimpleQueueService.` prefix) that refuse a message
/// for what it holds: sending the same bytes again can never succeed.
fn is_content_code(code: &str) -> bool {
    let code = code.rsplit('.').next().unwrap_or(code);
    matches!(
        code,
        "InvalidMessageContents"
            | "BatchRequestTooLong"
            | "InvalidParameterValue"
            | "MessageTooLong"
    )
}

/// True for failures that a later attempt may not meet: network, timeouts, throttling, 5xx.
pub fn is_retriable<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or_default();
            code.contains("Throttl")
                || matches!(
                    code,
                    "ServiceUnavailable" | "InternalError" | "InternalFailure" | "RequestThrottled"
                )
        }
        _ => false,
    }
}
