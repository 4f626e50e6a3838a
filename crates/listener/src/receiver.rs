//! Long-poll receive loop: decodes each message (v1 or packed v2), hands its good points to the
//! batcher and sends poison straight to the dead-letter queue: a body that cannot be read goes as
//! it is; a bad point inside a packed message goes alone, as a v1 body, and the message's other
//! points go on to the batcher (the message is deleted once they are written).

use std::sync::Arc;
use std::time::Duration;

use accrual_core::message::{self, PointRecord, RefusedPoint};
use accrual_core::sqs::MAX_RECEIVE_MESSAGES;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gate::DatabaseGate;
use crate::held::HeldMessages;
use crate::ledger::Ledger;
use crate::metrics::ListenerMetrics;
use crate::queue::Queue;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A message's decoded points and the handle that deletes it once they are all committed.
#[derive(Debug)]
pub struct Inbound {
    pub records: Vec<PointRecord>,
    pub receipt_handle: String,
}

/// One long-poll receive loop; a listener runs several.
#[derive(Clone)]
pub struct Receiver {
    pub queue: Queue,
    pub dead_letters: DeadLetterLog,
    /// Long-poll wait per call, in seconds.
    pub wait_secs: i32,
    pub to_batcher: mpsc::Sender<Inbound>,
    /// Receiving pauses while this says MySQL is down.
    pub gate: DatabaseGate,
    pub held: HeldMessages,
    pub metrics: Arc<ListenerMetrics>,
}

/// Receives until `shutdown` is cancelled or the batcher is gone.
pub async fn run(receiver: Receiver, shutdown: CancellationToken) {
    let Receiver {
        queue,
        dead_letters,
        wait_secs,
        to_batcher,
        gate,
        held,
        metrics,
    } = receiver;
    let mut backoff = FIRST_BACKOFF;
    while !shutdown.is_cancelled() {
        if !gate.is_up() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = gate.wait_up() => {}
            }
            continue;
        }
        // An in-flight receive is never abandoned: SQS (and LocalStack) would still hand messages
        // to the dropped call, and they would stay invisible for a whole visibility timeout.
        // Shutdown therefore waits for at most one long poll (`wait_secs`).
        metrics.receive_calls.inc();
        let result = queue
            .client
            .receive_message()
            .queue_url(&queue.main_url)
            .max_number_of_messages(MAX_RECEIVE_MESSAGES)
            .wait_time_seconds(wait_secs)
            .send()
            .await;
        let received_at = Instant::now();
        let out = match result {
            Ok(out) => {
                backoff = FIRST_BACKOFF;
                out
            }
            Err(e) => {
                metrics.receive_errors.inc();
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "ReceiveMessage failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        metrics.received.inc_by(out.messages().len() as u64);
        for received in out.messages.unwrap_or_default() {
            let (Some(body), Some(handle)) = (received.body, received.receipt_handle) else {
                continue;
            };
            match message::decode_message(&body) {
                Ok(decoded) => {
                    metrics
                        .points_received
                        .inc_by((decoded.points.len() + decoded.refused.len()) as u64);
                    if !decoded.refused.is_empty()
                        && !dead_letter_points(&queue, &dead_letters, &metrics, &decoded.refused)
                            .await
                    {
                        // Left for redelivery: its good points are then duplicates, and the
                        // refused ones are tried again.
                        continue;
                    }
                    if decoded.points.is_empty() {
                        queue.delete(vec![handle]).await;
                        continue;
                    }
                    held.hold(&handle, received_at);
                    let inbound = Inbound {
                        records: decoded.points,
                        receipt_handle: handle,
                    };
                    // Waits while the batcher is busy: back-pressure instead of an unbounded buffer.
                    if let Err(unsent) = to_batcher.send(inbound).await {
                        held.release(&[unsent.0.receipt_handle]);
                        tracing::error!(
                            "Batcher stopped before the receivers; the rest of this receive will be delivered again"
                        );
                        return;
                    }
                }
                Err(reason) => {
                    metrics.points_received.inc();
                    let reason = reason.to_string();
                    if let Err(e) = dead_letters.record(&body, &reason).await {
                        tracing::warn!(error = %e, "Recording a dead letter failed; the message will be delivered again");
                        continue;
                    }
                    match queue.dead_letter(&body, &handle, &reason).await {
                        Ok(()) => {
                            metrics.dead_lettered.inc();
                        }
                        Err(e) => {
                            tracing::warn!(error = ?anyhow::Error::new(e), "Dead-lettering failed; the message will be delivered again")
                        }
                    }
                }
            }
        }
    }
}

/// Sends the refused points of a packed message to the dead-letter queue, each alone, without
/// deleting the message. False if any could not be sent: the message must then stay.
async fn dead_letter_points(
    queue: &Queue,
    dead_letters: &DeadLetterLog,
    metrics: &ListenerMetrics,
    refused: &[RefusedPoint],
) -> bool {
    for point in refused {
        if !dead_letter_point(queue, dead_letters, metrics, &point.body, &point.reason).await {
            return false;
        }
    }
    true
}

/// Records one point's dead letter for its job and sends it (a v1 body) to the dead-letter queue,
/// without deleting the message it came in. False if either failed: that message must then stay,
/// so the point comes back.
pub(crate) async fn dead_letter_point(
    queue: &Queue,
    dead_letters: &DeadLetterLog,
    metrics: &ListenerMetrics,
    body: &str,
    reason: &str,
) -> bool {
    if let Err(e) = dead_letters.record(body, reason).await {
        tracing::warn!(error = %e, "Recording a dead letter failed; the message will be delivered again");
        return false;
    }
    if let Err(e) = queue.send_dead_letter(body, reason).await {
        tracing::warn!(error = ?anyhow::Error::new(e), "Dead-lettering a point failed; the message will be delivered again");
        return false;
    }
    metrics.dead_lettered.inc();
    true
}

/// Where dead letters of known jobs are recorded, so those jobs can still complete.
#[derive(Clone, Debug)]
pub struct DeadLetterLog {
    pub ledger: Ledger,
    pub progress: accrual_core::progress::Progress,
}

impl DeadLetterLog {
    /// If the body names its point and job, records the dead letter in MySQL and the job's counter.
    pub async fn record(&self, body: &str, reason: &str) -> Result<(), sqlx::Error> {
        let Some(ids) = accrual_core::dead_letter::PointIds::of(body) else {
            return Ok(());
        };
        self.ledger.record_dead_letter(ids, reason).await?;
        self.progress.add(ids.job_id, &[("dead_lettered", 1)]).await;
        Ok(())
    }
}
