//! Fan-out of message bodies to SQS with `SendMessageBatch`: 10 entries a call, a bounded number of
//! calls in flight, failed entries retried with capped exponential back-off.

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

/// Why a fan-out stopped before every body was sent.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("SQS refused a message for good ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("SQS kept failing after {MAX_ATTEMPTS} attempts")]
    Exhausted(#[source] SqsError),
    #[error("SQS kept failing entries after {MAX_ATTEMPTS} attempts ({code})")]
    EntriesExhausted { code: String },
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
}

impl Fanout {
    pub fn new(client: Client, queue_url: String, max_in_flight: usize, calls: Counter) -> Self {
        Self {
            client,
            queue_url,
            max_in_flight: max_in_flight.max(1),
            calls,
        }
    }

    /// Sends every body; returns how many were sent. Stops at the first batch that cannot be sent.
    pub async fn send_all(&self, bodies: Vec<String>) -> Result<usize, FanoutError> {
        stream::iter(send_batches(bodies))
            .map(|batch| self.send_batch(batch))
            .buffer_unordered(self.max_in_flight)
            .try_fold(0, |sent, n| async move { Ok(sent + n) })
            .await
    }

    /// Sends one batch of at most 10 bodies, retrying the call and any failed entries.
    async fn send_batch(&self, batch: Vec<String>) -> Result<usize, FanoutError> {
        let total = batch.len();
        // Entry ids are the bodies' places in the batch, so failed entries can be found again.
        let mut pending: Vec<(usize, String)> = batch.into_iter().enumerate().collect();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let entries = pending.iter().map(|(id, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(id.to_string())
                    .message_body(body.clone())
                    .build()
            });
            let entries = entries.collect::<Result<Vec<_>, _>>();
            let entries = entries.map_err(|e| FanoutError::Refused {
                code: "BuildError".into(),
                message: e.to_string(),
            })?;
            self.calls.inc();
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(out) => {
                    let failed = out.failed();
                    if failed.is_empty() {
                        return Ok(total);
                    }
                    if let Some(f) = failed.iter().find(|f| f.sender_fault()) {
                        return Err(FanoutError::Refused {
                            code: f.code().to_owned(),
                            message: f.message().unwrap_or_default().to_owned(),
                        });
                    }
                    let code = failed[0].code().to_owned();
                    tracing::warn!(attempt, failed = failed.len(), %code, "SendMessageBatch entries failed; retrying them");
                    let retry: Vec<&str> = failed.iter().map(|f| f.id()).collect();
                    pending.retain(|(id, _)| retry.contains(&id.to_string().as_str()));
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
                Err(err) => {
                    return Err(FanoutError::Refused {
                        code: err.code().unwrap_or("unknown").to_owned(),
                        message: err.message().unwrap_or("no message").to_owned(),
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("the loop returns on its last attempt")
    }
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
