//! Dead letters, from whichever side gives up on a point: recorded in `accrual_dead_letters` (so
//! its job can complete and say why) and sent to the dead-letter queue with the reason.
//!
//! The listener dead-letters what it cannot write; the dispatcher dead-letters what SQS refuses
//! for good (a sender fault). A body SQS refused for its characters would be refused by the
//! dead-letter queue too, so [`sqs_safe`] escapes those characters as JSON `\uXXXX` escapes
//! first: the same JSON value, in characters SQS carries.

use std::fmt::Write as _;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::domain::sqs_body_char;
use crate::sqs::{ATTR_REASON, ATTR_SOURCE_QUEUE, SqsError};

/// Longest reason kept, in characters (`accrual_dead_letters.reason` is `VARCHAR(1000)`; an SQS
/// message attribute could hold far more).
pub const MAX_REASON_CHARS: usize = 1_000;

/// The ids a v1 body names (a packed point sent alone is a v1 body too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct PointIds {
    pub accrual_id: Uuid,
    pub job_id: Uuid,
}

impl PointIds {
    /// The ids of a body, if it names them.
    pub fn of(body: &str) -> Option<Self> {
        serde_json::from_str(body).ok()
    }
}

/// `reason` cut to [`MAX_REASON_CHARS`].
pub fn clip_reason(reason: &str) -> String {
    reason.chars().take(MAX_REASON_CHARS).collect()
}

/// Records that a point of a job was dead-lettered. Idempotent: the first reason stays.
pub async fn record(pool: &MySqlPool, ids: PointIds, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE accrual_id = accrual_id",
    )
    .bind(ids.accrual_id)
    .bind(ids.job_id)
    .bind(clip_reason(reason))
    .execute(pool)
    .await?;
    Ok(())
}

/// `body` with every character SQS refuses in a message body written as a JSON `\uXXXX` escape.
/// Such characters can only be inside JSON strings (outside, the body is not JSON anyway), where
/// the escape means the same character; every one of them is in the Basic Multilingual Plane.
pub fn sqs_safe(body: &str) -> std::borrow::Cow<'_, str> {
    if body.chars().all(sqs_body_char) {
        return body.into();
    }
    let mut out = String::with_capacity(body.len() + 16);
    for c in body.chars() {
        if sqs_body_char(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    out.into()
}

/// Sends `body` (made [`sqs_safe`]) to the dead-letter queue with the reason and the source queue
/// as message attributes.
pub async fn send(
    client: &Client,
    dlq_url: &str,
    source_queue: &str,
    body: &str,
    reason: &str,
) -> Result<(), SqsError> {
    let reason = clip_reason(reason);
    let attr = |value: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(sqs_safe(value))
            .build()
    };
    let mut send = client
        .send_message()
        .queue_url(dlq_url)
        .message_body(sqs_safe(body));
    if let (Ok(r), Ok(q)) = (attr(&reason), attr(source_queue)) {
        send = send
            .message_attributes(ATTR_REASON, r)
            .message_attributes(ATTR_SOURCE_QUEUE, q);
    }
    send.send()
        .await
        .map_err(|e| SqsError::new("SendMessage", e))?;
    tracing::warn!(%reason, "Sent to the dead-letter queue");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_safe_escapes_only_what_sqs_refuses_and_keeps_the_json_value() {
        // serde_json escapes C0 controls itself but writes U+FFFE and U+FFFF raw.
        let body = serde_json::json!({"reason": "a\u{FFFF}b\u{1}c ポ"}).to_string();
        let safe = sqs_safe(&body);
        assert_eq!(safe, "{\"reason\":\"a\\uffffb\\u0001c ポ\"}");
        assert!(safe.chars().all(sqs_body_char));
        let before: serde_json::Value = serde_json::from_str(&body).expect("json");
        let after: serde_json::Value = serde_json::from_str(&safe).expect("json");
        assert_eq!(before, after);
        assert!(matches!(sqs_safe("{}"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn reasons_are_clipped_by_characters() {
        assert_eq!(clip_reason(&"ポ".repeat(1_500)).chars().count(), 1_000);
    }
}
