//! Long-poll receive loop: decodes each message (v1 or packed v2), hands its good points to the
//! batcher and sends poison straight to the dead-letter queue: a body that cannot be read goes as
//! it is; a bad point inside a packed message goes alone, as a v1 body, and the message's other
//! points go on to the batcher (the message is deleted once they are written).
//!
//! A message on its last receive (its receive count has reached the queue's `maxReceiveCount`) has
//! its points recorded ahead as dead letters before anything else: if the listener died before
//! writing them, SQS would move the message to the dead-letter queue where nobody counts it. That
//! record is retried like a write, under the [`DatabaseGate`] (receiving stops while MySQL fails),
//! and the message goes on to the batcher only once it is committed; it is never handed back
//! meanwhile (SQS would move it uncounted). If the record cannot be made before the message's hold
//! cap or the shutdown deadline, the message is let go as it is: SQS moves it, and the sender's
//! reconciler finds its points missing.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::db;
use accrual_core::message::{self, PointRecord, RefusedPoint};
use accrual_core::sqs::MAX_RECEIVE_MESSAGES;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attributes::{CurrentAttributes, QueueAttributes};
use crate::gate::DatabaseGate;
use crate::gate::{LOCK_RETRIES, backoff};
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
    /// This message's share of the points the batcher's input may hold; given back when its
    /// batch is done.
    pub room: Option<OwnedSemaphorePermit>,
    /// The message's hold cap: its batch gives up writing it then, and hands it back.
    pub give_up_at: Instant,
}

/// One long-poll receive loop; a listener runs several.
#[derive(Clone)]
pub struct Receiver {
    pub queue: Queue,
    pub dead_letters: DeadLetterLog,
    /// Long-poll wait per call, in seconds.
    pub wait_secs: i32,
    /// Timeouts of one receive: the attempt timeout plus the long-poll wait.
    pub long_poll: aws_sdk_sqs::config::Builder,
    pub to_batcher: mpsc::Sender<Inbound>,
    /// Points the batcher's input may hold (received, not yet written): a packed message of
    /// hundreds of points takes as much room as hundreds of v1 messages.
    pub room: Arc<Semaphore>,
    /// Room for this many points in all (a message larger than this waits for all of it).
    pub room_points: u32,
    /// The queue's `maxReceiveCount` and visibility timeout, as last read.
    pub attributes: CurrentAttributes,
    /// Receiving pauses while this says MySQL is down.
    pub gate: DatabaseGate,
    /// Cancelled at the shutdown deadline: a record-ahead still failing then is given up.
    pub abandon: CancellationToken,
    pub held: HeldMessages,
    pub metrics: Arc<ListenerMetrics>,
}

/// Receives until `shutdown` is cancelled or the batcher is gone.
pub async fn run(receiver: Receiver, shutdown: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    let r = &receiver;
    while !shutdown.is_cancelled() {
        if !r.gate.is_up() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = r.gate.wait_up() => {}
            }
            continue;
        }
        // An in-flight receive is never abandoned: SQS (and LocalStack) would still hand messages
        // to the dropped call, and they would stay invisible for a whole visibility timeout.
        // Shutdown therefore waits for at most one long poll (`wait_secs`).
        r.metrics.receive_calls.inc();
        let result = r
            .queue
            .client
            .receive_message()
            .queue_url(&r.queue.main_url)
            .max_number_of_messages(MAX_RECEIVE_MESSAGES)
            .wait_time_seconds(r.wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(r.long_poll.clone())
            .send()
            .await;
        let received_at = Instant::now();
        let attributes = r.attributes.get();
        let out = match result {
            Ok(out) => {
                backoff = FIRST_BACKOFF;
                out
            }
            Err(e) => {
                r.metrics.receive_errors.inc();
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "ReceiveMessage failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let messages = out.messages.unwrap_or_default();
        r.metrics.received.inc_by(messages.len() as u64);
        // Every message of this receive is held (kept invisible) from now on, also those that
        // wait here while the batcher has no room.
        let give_up_at = received_at + attributes.hold_cap();
        let visible_until = received_at + r.attributes.surely_hidden_for();
        for handle in messages.iter().filter_map(|m| m.receipt_handle()) {
            r.held.hold(handle, visible_until, give_up_at);
        }
        for received in messages {
            if !r.handle(received, attributes, give_up_at).await {
                tracing::error!(
                    "Batcher stopped before the receivers; the rest of this receive will be delivered again"
                );
                return;
            }
        }
    }
}

impl Receiver {
    /// Decodes one held message and passes it on: its good points to the batcher, poison to the
    /// dead-letter queue. False when the batcher is gone.
    async fn handle(
        &self,
        received: Message,
        attributes: QueueAttributes,
        give_up_at: Instant,
    ) -> bool {
        let receive_count = received
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse::<u32>().ok());
        let (Some(body), Some(handle)) = (received.body, received.receipt_handle) else {
            return true;
        };
        let (queue, dead_letters, metrics) = (&self.queue, &self.dead_letters, &self.metrics);
        let decoded = match message::decode_message(&body) {
            Ok(decoded) => decoded,
            Err(reason) => {
                metrics.points_received.inc();
                let reason = reason.to_string();
                if let Err(e) = dead_letters.record(&body, &reason).await {
                    tracing::warn!(error = %e, "Recording a dead letter failed; the message will be delivered again");
                } else {
                    match queue.dead_letter(&body, &handle, &reason).await {
                        Ok(()) => {
                            metrics.dead_lettered.inc();
                        }
                        Err(e) => {
                            tracing::warn!(error = ?anyhow::Error::new(e), "Dead-lettering failed; the message will be delivered again")
                        }
                    }
                }
                self.held.release(&[handle]);
                return true;
            }
        };
        metrics
            .points_received
            .inc_by((decoded.points.len() + decoded.refused.len()) as u64);
        if !decoded.refused.is_empty()
            && !dead_letter_points(queue, dead_letters, metrics, &decoded.refused).await
        {
            // Left for redelivery: its good points are then duplicates, and the refused ones are
            // tried again.
            self.held.release(&[handle]);
            return true;
        }
        if decoded.points.is_empty() {
            queue.delete(vec![handle.clone()]).await;
            self.held.release(&[handle]);
            return true;
        }
        if let Some(count) = receive_count
            && attributes.is_last_receive(count)
        {
            if !self
                .record_ahead(&decoded.points, attributes, count, give_up_at)
                .await
            {
                // Neither handed on nor back: left to SQS, which moves it at its next receive.
                self.held.release(&[handle]);
                return true;
            }
            self.held.recorded_ahead(
                &handle,
                decoded.points.iter().map(|p| p.accrual_id).collect(),
            );
        }
        let wanted = u32::try_from(decoded.points.len())
            .unwrap_or(u32::MAX)
            .min(self.room_points);
        // Waits while the batcher is busy: back-pressure instead of an unbounded buffer.
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else {
            self.held.release(&[handle]);
            return false;
        };
        let inbound = Inbound {
            records: decoded.points,
            receipt_handle: handle,
            room: Some(room),
            give_up_at,
        };
        if let Err(unsent) = self.to_batcher.send(inbound).await {
            self.held.release(&[unsent.0.receipt_handle]);
            return false;
        }
        true
    }

    /// A message on its last receive: if this listener dies before its points are written, SQS
    /// moves it to the dead-letter queue, where nobody would count it. Its points are recorded as
    /// dead letters now, counting from when SQS would move them, and not at all once written.
    /// Retried like a write, closing the gate while MySQL fails; true once committed, false if
    /// given up at the hold cap or the shutdown deadline.
    async fn record_ahead(
        &self,
        points: &[PointRecord],
        attributes: QueueAttributes,
        count: u32,
        give_up_at: Instant,
    ) -> bool {
        let reason = format!(
            "moved by SQS to the dead-letter queue after {} receives",
            attributes.max_receive_count.unwrap_or(count)
        );
        let mut failures = 0u32;
        loop {
            let recorded = self
                .dead_letters
                .ledger
                .record_dead_letters_ahead(
                    points,
                    &reason,
                    attributes.visibility_timeout,
                    give_up_at,
                )
                .await;
            let e = match recorded {
                Ok(Some(())) => {
                    if self.gate.mark_up() {
                        tracing::info!("MySQL takes writes again; receiving resumes");
                    }
                    tracing::warn!(
                        points = points.len(),
                        receive_count = count,
                        "Message on its last receive before SQS dead-letters it; recorded its points ahead"
                    );
                    return true;
                }
                Ok(None) => {
                    self.metrics.hold_cap_reached.inc();
                    tracing::error!(
                        points = points.len(),
                        receive_count = count,
                        "Hold cap reached before a last-receive message's points were recorded ahead; SQS moves it uncounted, the reconciler re-sends its points"
                    );
                    return false;
                }
                Err(e) => e,
            };
            failures += 1;
            self.metrics.write_retries.inc();
            if (!db::is_lock_conflict(&e) || failures > LOCK_RETRIES) && self.gate.mark_down() {
                tracing::error!(error = %e, "MySQL is unavailable; receiving stops until a write succeeds");
            }
            let pause = backoff(failures);
            tracing::warn!(
                points = points.len(),
                failures,
                backoff_ms = pause.as_millis() as u64,
                error = %e,
                "Recording a last-receive message's points ahead failed; trying again"
            );
            tokio::select! {
                () = self.abandon.cancelled() => {
                    tracing::error!(
                        points = points.len(),
                        "Shutdown deadline passed before a last-receive message's points were recorded ahead; SQS moves it uncounted, the reconciler re-sends its points"
                    );
                    return false;
                }
                () = tokio::time::sleep_until((Instant::now() + pause).min(give_up_at)) => {}
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
