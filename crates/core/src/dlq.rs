//! Operator access to the dead-letter queue: list what is there and why, move it back.
//!
//! A dead letter whose `external_id` a later job has claimed since (see the sender's
//! `external_ids`) is superseded: [`redrive_except_superseded`] drops it with a logged reason
//! instead of moving it back, so the id is credited once, by the later point. (The listener would
//! refuse it anyway; dropping it keeps it from coming straight back to the DLQ.)

use std::collections::HashSet;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::sqs::{ATTR_REASON, ATTR_SOURCE_QUEUE, MAX_RECEIVE_MESSAGES, SqsError};

/// Receives that return nothing new before a listing stops.
const EMPTY_RECEIVES_TO_STOP: u32 = 3;
/// How long a message being redriven stays hidden from other readers of the DLQ.
const REDRIVE_VISIBILITY_SECS: i32 = 60;

/// One message in the dead-letter queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    /// Points the body carries (a packed message holds many; anything else counts as one).
    pub points: usize,
    /// Why the listener dead-lettered it; `None` when SQS moved it after too many receives.
    pub reason: Option<String>,
    pub source_queue: Option<String>,
    /// Receives from the DLQ so far (listing counts as one).
    pub receive_count: Option<u32>,
}

impl From<Message> for DeadLetter {
    fn from(m: Message) -> Self {
        let attr = |name: &str| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
                .map(str::to_owned)
        };
        Self {
            reason: attr(ATTR_REASON),
            source_queue: attr(ATTR_SOURCE_QUEUE),
            receive_count: m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok()),
            message_id: m.message_id().unwrap_or_default().to_owned(),
            points: crate::message::points_in(m.body().unwrap_or_default()),
            body: m.body().unwrap_or_default().to_owned(),
        }
    }
}

async fn receive(
    client: &Client,
    url: &str,
    visibility_secs: i32,
) -> Result<Vec<Message>, SqsError> {
    let out = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(MAX_RECEIVE_MESSAGES)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .visibility_timeout(visibility_secs)
        .wait_time_seconds(1)
        .send()
        .await
        .map_err(|e| SqsError::new("ReceiveMessage", e))?;
    Ok(out.messages.unwrap_or_default())
}

/// Lists up to `limit` dead letters without removing them (they are received with a visibility
/// timeout of 0, so they stay available).
pub async fn list(
    client: &Client,
    dlq_url: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, SqsError> {
    let mut seen = HashSet::new();
    let mut letters = Vec::new();
    let mut empty = 0;
    while letters.len() < limit && empty < EMPTY_RECEIVES_TO_STOP {
        let before = letters.len();
        for m in receive(client, dlq_url, 0).await? {
            if letters.len() < limit && seen.insert(m.message_id().unwrap_or_default().to_owned()) {
                letters.push(DeadLetter::from(m));
            }
        }
        empty = if letters.len() == before {
            empty + 1
        } else {
            0
        };
    }
    Ok(letters)
}

/// Moves up to `limit` dead letters back to the main queue (body unchanged, without the
/// dead-letter attributes); each is deleted from the DLQ only after it was sent. Returns how
/// many messages, and points in them, moved.
pub async fn redrive(
    client: &Client,
    dlq_url: &str,
    main_url: &str,
    limit: usize,
) -> Result<Redriven, SqsError> {
    move_back(client, dlq_url, main_url, limit, async |_: &str| {
        Ok::<_, SqsError>(None)
    })
    .await
}

/// A redrive that checks each dead letter against MySQL failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Sqs(#[from] SqsError),
    #[error("checking a dead letter's external_id in MySQL failed")]
    Db(#[from] sqlx::Error),
}

/// [`redrive`], except that a dead letter all of whose points are superseded (each carries an
/// `external_id` that a later point of the client holds now) is deleted from the DLQ instead,
/// with its reason logged; those are counted in [`Redriven::dropped`].
pub async fn redrive_except_superseded(
    client: &Client,
    dlq_url: &str,
    main_url: &str,
    limit: usize,
    pool: &MySqlPool,
) -> Result<Redriven, RedriveError> {
    move_back(client, dlq_url, main_url, limit, async |body: &str| {
        superseded(pool, body).await.map_err(RedriveError::from)
    })
    .await
}

/// Why every point of `body` is superseded, if it is: each names an `external_id` whose holder is
/// now another point. `None` for a body with a point that is not (or cannot be read).
pub async fn superseded(pool: &MySqlPool, body: &str) -> Result<Option<String>, sqlx::Error> {
    let bodies = crate::message::unpack(body).unwrap_or_else(|| vec![body.to_owned()]);
    let mut reasons = Vec::with_capacity(bodies.len());
    for point in &bodies {
        let Ok(record) = crate::message::PointRecord::decode(point) else {
            return Ok(None);
        };
        let Some(external_id) = record.accrual.external_id.as_ref() else {
            return Ok(None);
        };
        let holder: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT e.accrual_id, e.job_id FROM accrual_external_ids e \
             JOIN accrual_jobs j ON j.client_id = e.client_id \
             WHERE j.job_id = ? AND e.external_id = ?",
        )
        .bind(record.job_id)
        .bind(external_id.as_str())
        .fetch_optional(pool)
        .await?;
        match holder {
            Some((accrual_id, job_id)) if accrual_id != record.accrual_id => {
                reasons.push(format!(
                    "point {} is superseded: its external_id {} is held by point {accrual_id} of job {job_id}",
                    record.accrual_id,
                    external_id.as_str()
                ));
            }
            _ => return Ok(None),
        }
    }
    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// Moves dead letters back, deleting instead those `drop` gives a reason for.
async fn move_back<E: From<SqsError>>(
    client: &Client,
    dlq_url: &str,
    main_url: &str,
    limit: usize,
    mut drop: impl AsyncFnMut(&str) -> Result<Option<String>, E>,
) -> Result<Redriven, E> {
    // At most the messages in the DLQ when the redrive starts are moved: one that is still poison
    // comes straight back from a running listener and must not go round and round.
    let limit = limit.min(crate::sqs::approximate_depth(client, dlq_url).await? as usize);
    let mut moved = 0;
    let mut points = 0;
    let mut dropped = 0;
    while moved + dropped < limit {
        let batch = receive(client, dlq_url, REDRIVE_VISIBILITY_SECS).await?;
        if batch.is_empty() {
            break;
        }
        let mut done = Vec::new();
        let mut sent = Vec::new();
        for m in batch.iter().take(limit - moved - dropped) {
            let body = m.body().unwrap_or_default();
            if let Some(reason) = drop(body).await? {
                tracing::warn!(message_id = m.message_id().unwrap_or_default(), %reason, "Dropped a superseded dead letter instead of redriving it");
                dropped += 1;
                done.push(m);
                continue;
            }
            client
                .send_message()
                .queue_url(main_url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| SqsError::new("SendMessage", e))?;
            done.push(m);
            sent.push(m);
        }
        let entries = done.iter().enumerate().filter_map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .ok()
        });
        client
            .delete_message_batch()
            .queue_url(dlq_url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .map_err(|e| SqsError::new("DeleteMessageBatch", e))?;
        moved += sent.len();
        points += sent
            .iter()
            .map(|m| crate::message::points_in(m.body().unwrap_or_default()))
            .sum::<usize>();
    }
    Ok(Redriven {
        messages: moved,
        points,
        dropped,
    })
}

/// What a redrive moved back to the main queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Redriven {
    pub messages: usize,
    /// Points in those messages: what the ledger can gain.
    pub points: usize,
    /// Messages deleted instead, every point of them superseded.
    pub dropped: usize,
}
