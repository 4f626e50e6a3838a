//! Collects points into batches (by size or linger time), writes each batch in one transaction and
//! deletes its messages only after the commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use accrual_core::progress::Progress;

use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::receiver::Inbound;
use crate::stats::ListenerStats;

const WRITE_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

pub struct Batcher {
    pub ledger: Ledger,
    pub queue: Queue,
    pub stats: Arc<ListenerStats>,
    pub progress: Progress,
    pub max_rows: usize,
    pub linger: Duration,
}

impl Batcher {
    /// Runs until every receiver has dropped its sender, flushing what is left.
    pub async fn run(self, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(first) = inbound.recv().await {
            let mut batch = Vec::with_capacity(self.max_rows);
            batch.push(first);
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.max_rows {
                match tokio::time::timeout_at(deadline, inbound.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                }
            }
            self.process_batch(batch).await;
        }
    }

    /// Writes one batch and deletes its messages after the commit. If the write keeps failing,
    /// nothing is deleted: the messages are delivered again after the visibility timeout.
    pub async fn process_batch(&self, batch: Vec<Inbound>) {
        let (records, handles): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|i| (i.record, i.receipt_handle))
            .unzip();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.ledger.write(&records).await {
                Ok(outcome) => {
                    ListenerStats::add(&self.stats.written, outcome.written);
                    ListenerStats::add(&self.stats.duplicates, outcome.duplicates);
                    ListenerStats::add(&self.stats.batches, 1);
                    let undeleted = self.queue.delete(handles).await;
                    for (job_id, (written, duplicates)) in &outcome.by_job {
                        self.progress
                            .add(
                                *job_id,
                                &[("written", *written), ("duplicates", *duplicates)],
                            )
                            .await;
                    }
                    tracing::debug!(
                        written = outcome.written,
                        duplicates = outcome.duplicates,
                        undeleted,
                        "Batch committed"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt, rows = records.len(), error = ?anyhow::Error::new(e), "Batch write failed");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        tracing::error!(
            rows = records.len(),
            "Batch not written after retries; its messages will be delivered again"
        );
    }
}
