//! Collects points into batches (by size or linger time), writes each batch in one transaction and
//! deletes its messages only after the commit. Up to [`BATCHES_IN_PROCESS`] batches are written and
//! deleted at once, while the next is collected.
//!
//! A packed message is never split between batches: a batch takes whole messages until it holds
//! `max_rows` points or more, so a message is deleted once, after all of its points are done.
//!
//! A batch the database refuses because of its rows is split in halves until the bad rows stand
//! alone; the good rows commit and each bad one goes to the dead-letter queue with the database's
//! error. A batch that fails for any other reason (connection lost, server down, lock conflicts)
//! is kept and written again with back-off while the [`DatabaseGate`] stops the receivers; the
//! visibility keeper (`held`) keeps its messages hidden meanwhile, up to the hold cap of the
//! batch's earliest message: then the attempt is abandoned (its MySQL connection closed) and the
//! batch's messages are handed back to SQS.
//!
//! Points the ledger refuses by rule (their job was reversed, or their `external_id` superseded;
//! see `ledger`) are recorded as dead letters in the write's transaction and then sent to the
//! dead-letter queue; a message one of whose refused points could not be sent is kept, so the
//! point comes back and is refused again.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::message::PointRecord;
use accrual_core::progress::Progress;
use accrual_core::{db, job_outcome};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gate::{DatabaseGate, LOCK_RETRIES, backoff};
use crate::held::HeldMessages;
use crate::ledger::{Ledger, WriteOutcome};
use crate::metrics::ListenerMetrics;
use crate::queue::Queue;
use crate::receiver::{DeadLetterLog, Inbound, dead_letter_point};

/// Batches written and deleted at once. The receivers have room for one more, collected meanwhile.
pub const BATCHES_IN_PROCESS: usize = 3;

/// Logs a batch task that panicked (its messages reappear after their visibility timeout).
fn report(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!(error = %e, "A batch task failed; its messages are received again after their visibility timeout");
    }
}

pub struct Batcher {
    pub ledger: Ledger,
    pub queue: Queue,
    pub dead_letters: DeadLetterLog,
    pub metrics: Arc<ListenerMetrics>,
    pub progress: Progress,
    pub gate: DatabaseGate,
    /// Messages received and not yet finished; the batcher releases each batch's when done.
    pub held: HeldMessages,
    pub max_rows: usize,
    pub linger: Duration,
}

/// A batch after writing: what the ledger did, and the rows it refused with the reason.
#[derive(Debug, Default)]
struct Written {
    outcome: WriteOutcome,
    rejected: Vec<(usize, String)>,
}

/// Why a batch was not written.
#[derive(Debug, Clone, Copy)]
enum GaveUp {
    /// The shutdown deadline passed while MySQL was unavailable.
    Shutdown,
    /// The hold cap of one of its messages passed.
    HoldCap,
}

impl Batcher {
    /// Runs until every receiver has dropped its sender, flushing what is left. Once `abandon` is
    /// cancelled (the shutdown deadline), a batch that cannot be written is handed back to SQS
    /// instead of waiting for MySQL.
    pub async fn run(self, mut inbound: mpsc::Receiver<Inbound>, abandon: CancellationToken) {
        let this = Arc::new(self);
        // Batches being written and deleted while the next one is collected: a batch's deletes
        // (one DeleteMessageBatch per ten messages) overlap the next batch's insert.
        let mut in_process = tokio::task::JoinSet::new();
        while let Some(first) = inbound.recv().await {
            let mut rows = first.records.len();
            let mut batch = Vec::with_capacity(this.max_rows.min(1_024));
            batch.push(first);
            let deadline = Instant::now() + this.linger;
            while rows < this.max_rows {
                match tokio::time::timeout_at(deadline, inbound.recv()).await {
                    Ok(Some(next)) => {
                        rows += next.records.len();
                        batch.push(next);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            while in_process.len() >= BATCHES_IN_PROCESS {
                report(in_process.join_next().await);
            }
            let (this, abandon) = (this.clone(), abandon.clone());
            in_process.spawn(async move { this.process_batch(batch, &abandon).await });
        }
        while let Some(done) = in_process.join_next().await {
            report(Some(done));
        }
    }

    /// Writes one batch and deletes its messages after the commit; bad rows go to the DLQ. Keeps
    /// trying while the database is unavailable, unless `abandon` is cancelled: then the messages
    /// are made visible again for another listener (or this one after a restart).
    pub async fn process_batch(&self, batch: Vec<Inbound>, abandon: &CancellationToken) {
        let count: usize = batch.iter().map(|i| i.records.len()).sum();
        let mut records = Vec::with_capacity(count);
        // The message (index into `handles`) of each record.
        let mut owners = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(batch.len());
        // The batch's room in the batcher's input, given back (dropped) once it is done.
        let mut _room = Vec::with_capacity(batch.len());
        let give_up_at = batch.iter().map(|i| i.give_up_at).min();
        for (message, inbound) in batch.into_iter().enumerate() {
            owners.extend(std::iter::repeat_n(message, inbound.records.len()));
            records.extend(inbound.records);
            handles.push(inbound.receipt_handle);
            _room.extend(inbound.room);
        }

        let Some(give_up_at) = give_up_at else {
            return;
        };
        let written = if abandon.is_cancelled() {
            Err(GaveUp::Shutdown)
        } else {
            self.write_isolating(&records, abandon, give_up_at).await
        };
        match written {
            Ok(written) => self.finish(&records, &owners, &handles, written).await,
            Err(why) => {
                let failed = self.queue.change_visibility(&handles, 0).await;
                match why {
                    GaveUp::Shutdown => tracing::warn!(
                        points = count,
                        not_handed_back = failed,
                        "Shutdown deadline passed before MySQL took the batch; its messages are visible again"
                    ),
                    GaveUp::HoldCap => {
                        self.metrics.hold_cap_reached.inc_by(handles.len() as u64);
                        tracing::warn!(
                            points = count,
                            messages = handles.len(),
                            not_handed_back = failed,
                            "Hold cap reached before MySQL took the batch; gave up the write, its messages are visible again"
                        );
                    }
                }
            }
        }
        self.held.release(&handles);
    }

    /// After the write: counts what was committed, dead-letters the refused rows, each alone as a
    /// v1 body, then deletes every message all of whose points are done (written, duplicate or
    /// dead-lettered).
    async fn finish(
        &self,
        records: &[PointRecord],
        owners: &[usize],
        handles: &[String],
        written: Written,
    ) {
        // Counted as soon as the rows are committed, before anything else is awaited: a reader
        // that sees the rows in the ledger (or an empty queue) must not see counters lagging
        // behind them.
        let Written { outcome, rejected } = written;
        self.metrics.written.inc_by(outcome.written as u64);
        self.metrics.duplicates.inc_by(outcome.duplicates as u64);
        self.metrics.batches.inc();
        self.metrics.batch_points.observe(records.len() as f64);
        for (job_id, (written, duplicates)) in &outcome.by_job {
            self.progress
                .add(
                    *job_id,
                    &[("written", *written), ("duplicates", *duplicates)],
                )
                .await;
        }
        for job_id in &outcome.resettle {
            // A dead letter of this job is now written: a finished job's outcome changes (it may
            // become `completed`). A running one is left to the sender's completion task, which
            // makes every first settlement. A failure here leaves a finished job's counts as they
            // were until its next change.
            if let Err(e) = job_outcome::settle_if_final(self.ledger.pool(), *job_id).await {
                tracing::warn!(%job_id, error = %e, "Settling a job again after a dead letter was written failed");
            }
        }
        // Messages that keep a point neither written nor dead-lettered: they are not deleted, so
        // the point comes back (and the others are then duplicates).
        let mut keep = HashSet::new();
        // Points refused and recorded as dead letters in the write's transaction: each is sent to
        // the dead-letter queue once (a message that fails to go keeps its point coming back, and
        // it is refused again).
        if !outcome.refused.is_empty() {
            let mut by_id: HashMap<Uuid, Vec<usize>> = HashMap::new();
            for (index, r) in records.iter().enumerate() {
                by_id.entry(r.accrual_id).or_default().push(index);
            }
            for (id, reason) in &outcome.refused {
                let Some(indices) = by_id.remove(id) else {
                    continue;
                };
                let record = &records[indices[0]];
                match self.queue.send_dead_letter(&record.encode(), reason).await {
                    Ok(()) => {
                        self.metrics.dead_lettered.inc();
                        self.progress
                            .add(record.job_id, &[("dead_lettered", 1)])
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(accrual_id = %id, error = ?anyhow::Error::new(e), "Dead-lettering a refused point failed; the message will be delivered again");
                        keep.extend(indices.iter().map(|&i| owners[i]));
                    }
                }
            }
        }
        for (index, error) in &rejected {
            let reason = format!("MySQL refused the point: {error}");
            let body = records[*index].encode();
            if !dead_letter_point(
                &self.queue,
                &self.dead_letters,
                &self.metrics,
                &body,
                &reason,
            )
            .await
            {
                keep.insert(owners[*index]);
            }
        }
        let to_delete: Vec<String> = handles
            .iter()
            .enumerate()
            .filter(|(i, _)| !keep.contains(i))
            .map(|(_, h)| h.clone())
            .collect();
        let started = Instant::now();
        let undeleted = self.queue.delete(to_delete).await;
        self.metrics
            .delete_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            written = outcome.written,
            duplicates = outcome.duplicates,
            rejected = rejected.len(),
            kept = keep.len(),
            undeleted,
            "Batch committed"
        );
    }

    /// Writes `records`, splitting on data errors until each bad row stands alone. Gives up if
    /// `abandon` is cancelled while the database is unavailable, or at `give_up_at` (the hold cap)
    /// whatever the write is doing: an attempt in progress is abandoned and its connection closed.
    async fn write_isolating(
        &self,
        records: &[PointRecord],
        abandon: &CancellationToken,
        give_up_at: Instant,
    ) -> Result<Written, GaveUp> {
        let started = Instant::now();
        let mut written = Written::default();
        let mut pending: Vec<Range<usize>> = Vec::with_capacity(16);
        pending.push(0..records.len());
        while let Some(range) = pending.pop() {
            let mut failures = 0u32;
            loop {
                match self.ledger.write(&records[range.clone()], give_up_at).await {
                    Ok(None) => return Err(GaveUp::HoldCap),
                    Ok(Some(outcome)) => {
                        written.outcome.absorb(outcome);
                        if self.gate.mark_up() {
                            tracing::info!("MySQL takes writes again; receiving resumes");
                        }
                        break;
                    }
                    Err(e) if db::is_data_error(&e) => {
                        if range.len() == 1 {
                            written.rejected.push((range.start, e.to_string()));
                        } else {
                            let mid = range.start + range.len() / 2;
                            tracing::debug!(rows = range.len(), error = %e, "Batch refused on its data; splitting it");
                            pending.push(mid..range.end);
                            pending.push(range.start..mid);
                        }
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        self.metrics.write_retries.inc();
                        if (!db::is_lock_conflict(&e) || failures > LOCK_RETRIES)
                            && self.gate.mark_down()
                        {
                            tracing::error!(error = %e, "MySQL is unavailable; receiving stops until a write succeeds");
                        }
                        let backoff = backoff(failures);
                        tracing::warn!(
                            rows = range.len(),
                            failures,
                            backoff_ms = backoff.as_millis() as u64,
                            error = %e,
                            "Batch write failed; trying again"
                        );
                        tokio::select! {
                            () = abandon.cancelled() => return Err(GaveUp::Shutdown),
                            () = tokio::time::sleep_until(give_up_at) => return Err(GaveUp::HoldCap),
                            () = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            }
        }
        self.metrics
            .insert_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(written)
    }
}
