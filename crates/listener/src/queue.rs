//! The listener's side of SQS: deleting handled messages and dead-lettering poison.

use std::collections::HashSet;

use accrual_core::sqs::{MAX_BATCH_ENTRIES, SqsError};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use futures_util::{StreamExt, stream};
use prometheus_client::metrics::counter::Counter;

/// Attempts for the entries of one DeleteMessageBatch call.
const DELETE_ATTEMPTS: u32 = 3;
/// DeleteMessageBatch calls in flight per flush.
const DELETE_CONCURRENCY: usize = 8;

/// The main queue and its dead-letter queue.
#[derive(Clone, Debug)]
pub struct Queue {
    pub client: Client,
    pub main_url: String,
    pub dlq_url: String,
    /// Name of the main queue, recorded on every dead letter.
    pub main_name: String,
    /// Counts DeleteMessageBatch calls.
    pub delete_calls: Counter,
}

impl Queue {
    /// Deletes handled messages; returns how many could not be deleted (they will be delivered
    /// again after the visibility timeout and then count as duplicates, which is harmless).
    pub async fn delete(&self, receipt_handles: Vec<String>) -> usize {
        let chunks: Vec<Vec<String>> = receipt_handles
            .chunks(MAX_BATCH_ENTRIES)
            .map(<[String]>::to_vec)
            .collect();
        stream::iter(chunks)
            .map(|chunk| self.delete_chunk(chunk))
            .buffer_unordered(DELETE_CONCURRENCY)
            .fold(0, |failed, n| async move { failed + n })
            .await
    }

    async fn delete_chunk(&self, mut handles: Vec<String>) -> usize {
        for attempt in 1..=DELETE_ATTEMPTS {
            let entries = handles.iter().enumerate().filter_map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .ok()
            });
            self.delete_calls.inc();
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.main_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await;
            match result {
                Ok(out) if out.failed().is_empty() => return 0,
                Ok(out) => {
                    let failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    tracing::warn!(
                        attempt,
                        failed = failed.len(),
                        "DeleteMessageBatch entries failed"
                    );
                    handles = failed
                        .into_iter()
                        .filter_map(|i| handles.get(i).cloned())
                        .collect();
                }
                Err(e) => tracing::warn!(attempt, error = %e, "DeleteMessageBatch failed"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
        }
        handles.len()
    }

    /// Sets the visibility timeout of held messages to `secs` from now: to keep them hidden while
    /// their batch is still being written, or (0) to hand them back at once. Best effort: returns
    /// how many could not be changed (they keep their current timeout, which is harmless).
    pub async fn change_visibility(&self, receipt_handles: &[String], secs: i32) -> usize {
        self.change_visibility_failing(receipt_handles, secs)
            .await
            .len()
    }

    /// [`Self::change_visibility`], returning the receipt handles that could not be changed.
    pub async fn change_visibility_failing(
        &self,
        receipt_handles: &[String],
        secs: i32,
    ) -> HashSet<String> {
        let chunks: Vec<Vec<String>> = receipt_handles
            .chunks(MAX_BATCH_ENTRIES)
            .map(<[String]>::to_vec)
            .collect();
        stream::iter(chunks)
            .map(|chunk| self.change_visibility_chunk(chunk, secs))
            .buffer_unordered(DELETE_CONCURRENCY)
            .fold(HashSet::new(), |mut failed, chunk| async move {
                failed.extend(chunk);
                failed
            })
            .await
    }

    /// Changes one batch of at most ten; returns the handles whose change failed.
    async fn change_visibility_chunk(&self, handles: Vec<String>, secs: i32) -> Vec<String> {
        let entries = handles.iter().enumerate().filter_map(|(i, h)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .visibility_timeout(secs)
                .build()
                .ok()
        });
        match self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.main_url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
        {
            Ok(out) => out
                .failed()
                .iter()
                .filter_map(|f| f.id().parse::<usize>().ok())
                .filter_map(|i| handles.get(i).cloned())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "ChangeMessageVisibilityBatch failed");
                handles
            }
        }
    }

    /// Sends `body` to the dead-letter queue with the reason, then deletes it from the main queue.
    /// If the dead-letter send fails, the message is left alone: it will be delivered again.
    pub async fn dead_letter(
        &self,
        body: &str,
        receipt_handle: &str,
        reason: &str,
    ) -> Result<(), SqsError> {
        self.send_dead_letter(body, reason).await?;
        self.client
            .delete_message()
            .queue_url(&self.main_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| SqsError::new("DeleteMessage", e))?;
        Ok(())
    }

    /// Sends `body` to the dead-letter queue with the reason and the source queue as attributes.
    pub async fn send_dead_letter(&self, body: &str, reason: &str) -> Result<(), SqsError> {
        accrual_core::dead_letter::send(&self.client, &self.dlq_url, &self.main_name, body, reason)
            .await
    }
}
