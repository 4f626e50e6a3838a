//! SQS client construction and queue set-up.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::settings::SqsSettings;

/// SendMessageBatch and DeleteMessageBatch take at most 10 entries.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS refuses a SendMessageBatch request whose bodies add up to more than 256 KiB (and a message
/// over 256 KiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// ReceiveMessage returns at most 10 messages.
pub const MAX_RECEIVE_MESSAGES: i32 = 10;
/// Long polling waits at most 20 seconds.
pub const MAX_WAIT_TIME_SECS: i32 = 20;
/// Message attribute on a dead letter: why it could not be written.
pub const ATTR_REASON: &str = "dead_letter_reason";
/// Message attribute on a dead letter: the queue it came from.
pub const ATTR_SOURCE_QUEUE: &str = "source_queue";
/// The longest a listener holds one message (keeps it hidden by extending its visibility), in
/// visibility timeouts: after this it stops extending it and drops the MySQL connection of the
/// write that holds it, so SQS delivers it again. The sender's reconciler never counts a job as
/// quiet sooner than this, so it never re-sends a point a listener still holds.
pub const HOLD_CAP_VISIBILITY_TIMEOUTS: u32 = 10;

/// Groups bodies, in order, into SendMessageBatch requests of at most 10 entries and 256 KiB.
pub fn send_batches(bodies: Vec<String>) -> Vec<Vec<String>> {
    let mut out = Vec::with_capacity(bodies.len().div_ceil(MAX_BATCH_ENTRIES));
    let mut current: Vec<String> = Vec::with_capacity(MAX_BATCH_ENTRIES);
    let mut bytes = 0;
    for body in bodies {
        if current.len() == MAX_BATCH_ENTRIES
            || (bytes + body.len() > MAX_BATCH_BYTES && !current.is_empty())
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += body.len();
        current.push(body);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An SQS call failed; `op` names the call.
#[derive(Debug, thiserror::Error)]
#[error("SQS {op} failed")]
pub struct SqsError {
    pub op: &'static str,
    #[source]
    pub source: aws_sdk_sqs::Error,
}

impl SqsError {
    pub fn new(op: &'static str, source: impl Into<aws_sdk_sqs::Error>) -> Self {
        Self {
            op,
            source: source.into(),
        }
    }
}

/// Builds an SQS client from the settings and the SDK's own environment.
///
/// When an endpoint override is set (LocalStack) and no credentials are in the environment, static
/// test credentials are used: otherwise the SDK's credential chain would call the EC2 instance
/// metadata address, which is unreachable (and slow to time out) on a developer's machine.
pub async fn client(settings: &SqsSettings) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.aws_region.clone()))
        .timeout_config(timeouts(settings, std::time::Duration::ZERO));
    if let Some(endpoint) = settings.endpoint() {
        loader = loader.endpoint_url(endpoint);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(Credentials::new(
                "test",
                "test",
                None,
                None,
                "static-local",
            ));
        }
    }
    Client::new(&loader.load().await)
}

/// How long to connect (at most 3 s), how long one request may take (`SQS_ATTEMPT_TIMEOUT`, plus
/// `wait` for a long poll) and one call with retries (`SQS_OPERATION_TIMEOUT`, at least an attempt).
pub fn timeouts(settings: &SqsSettings, wait: std::time::Duration) -> TimeoutConfig {
    let attempt = settings.sqs_attempt_timeout + wait;
    TimeoutConfig::builder()
        .connect_timeout(
            settings
                .sqs_attempt_timeout
                .min(std::time::Duration::from_secs(3)),
        )
        .operation_attempt_timeout(attempt)
        .operation_timeout(settings.sqs_operation_timeout.max(attempt))
        .build()
}

/// A configuration override for one long-poll `ReceiveMessage` of `wait_secs`: its attempt may
/// take the wait on top of `SQS_ATTEMPT_TIMEOUT`.
pub fn long_poll_override(settings: &SqsSettings, wait_secs: i32) -> aws_sdk_sqs::config::Builder {
    let wait = std::time::Duration::from_secs(u64::try_from(wait_secs).unwrap_or(0));
    aws_sdk_sqs::config::Builder::default().timeout_config(timeouts(settings, wait))
}

/// URLs of the main queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct QueueUrls {
    pub main: String,
    pub dlq: String,
}

/// How the main queue is set up by [`ensure_queues`].
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Receives after which SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// How long a received message stays hidden before it is delivered again.
    pub visibility_timeout_secs: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            max_receive_count: 5,
            visibility_timeout_secs: 60,
        }
    }
}

/// Whether [`ensure_queues_with`] may lower the `maxReceiveCount` of an existing main queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerReceiveCount {
    /// Refuse ([`EnsureQueuesError::LowerMaxReceiveCount`]): the safe default.
    Refuse,
    /// Lower it: the operator said so.
    Allow,
}

/// Setting up the queues failed.
#[derive(Debug, thiserror::Error)]
pub enum EnsureQueuesError {
    #[error(transparent)]
    Sqs(#[from] SqsError),
    /// Lowering the count on a live queue sends every message already received that many times to
    /// the dead-letter queue at its next receive, before a listener that still knows the old count
    /// (they re-read it every minute) records it ahead: those points leave uncounted.
    #[error(
        "queue `{queue}` has maxReceiveCount {current}; refusing to lower it to {requested}: \
         messages already received {requested} times or more would go to the dead-letter queue \
         at their next receive, before the listeners re-read the count"
    )]
    LowerMaxReceiveCount {
        queue: String,
        current: u32,
        requested: u32,
    },
}

/// Creates (or updates) the dead-letter queue and the main queue with its redrive policy.
/// Idempotent: an existing queue gets its attributes set to these values, except that a lower
/// `maxReceiveCount` than the queue has is refused (see [`ensure_queues_with`]).
pub async fn ensure_queues(
    client: &Client,
    main: &str,
    dlq: &str,
    options: QueueOptions,
) -> Result<QueueUrls, EnsureQueuesError> {
    ensure_queues_with(client, main, dlq, options, LowerReceiveCount::Refuse).await
}

/// [`ensure_queues`], saying whether an existing main queue's `maxReceiveCount` may be lowered.
pub async fn ensure_queues_with(
    client: &Client,
    main: &str,
    dlq: &str,
    options: QueueOptions,
    lower: LowerReceiveCount,
) -> Result<QueueUrls, EnsureQueuesError> {
    if lower == LowerReceiveCount::Refuse
        && let Ok(main_url) = queue_url(client, main).await
        && let Some(current) = max_receive_count(client, &main_url).await?
        && options.max_receive_count < current
    {
        return Err(EnsureQueuesError::LowerMaxReceiveCount {
            queue: main.to_owned(),
            current,
            requested: options.max_receive_count,
        });
    }
    let dlq_url = ensure_queue(client, dlq, HashMap::new()).await?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| SqsError::new("GetQueueAttributes", e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": options.max_receive_count.to_string(),
    });
    let attributes = HashMap::from([
        (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        (
            QueueAttributeName::VisibilityTimeout,
            options.visibility_timeout_secs.to_string(),
        ),
    ]);
    let main_url = ensure_queue(client, main, attributes).await?;
    Ok(QueueUrls {
        main: main_url,
        dlq: dlq_url,
    })
}

async fn ensure_queue(
    client: &Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, SqsError> {
    // CreateQueue refuses an existing queue whose attributes differ, so look it up first.
    if let Ok(out) = client.get_queue_url().queue_name(name).send().await {
        let url = out.queue_url().unwrap_or_default().to_owned();
        if !attributes.is_empty() {
            client
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| SqsError::new("SetQueueAttributes", e))?;
        }
        return Ok(url);
    }
    let out = client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes).filter(|a| !a.is_empty()))
        .send()
        .await
        .map_err(|e| SqsError::new("CreateQueue", e))?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

/// Looks up a queue's URL by name.
pub async fn queue_url(client: &Client, name: &str) -> Result<String, SqsError> {
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| SqsError::new("GetQueueUrl", e))?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

/// Looks up a queue the service needs, with a hint for the operator when it is missing.
pub async fn find_queue(client: &Client, name: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    queue_url(client, name)
        .await
        .with_context(|| format!("Failed to find queue `{name}` (run `accrualctl init`)"))
}

/// One attribute of a queue, `None` when the queue does not have it.
async fn queue_attribute(
    client: &Client,
    url: &str,
    name: QueueAttributeName,
) -> Result<Option<String>, SqsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| SqsError::new("GetQueueAttributes", e))?;
    Ok(out.attributes().and_then(|a| a.get(&name)).cloned())
}

/// The queue's visibility timeout: how long a received message stays hidden from other consumers.
pub async fn visibility_timeout(
    client: &Client,
    url: &str,
) -> Result<std::time::Duration, SqsError> {
    let secs = queue_attribute(client, url, QueueAttributeName::VisibilityTimeout)
        .await?
        .and_then(|v| v.parse::<u64>().ok())
        // SQS's own default when the attribute is somehow absent.
        .unwrap_or(30);
    Ok(std::time::Duration::from_secs(secs))
}

/// The `maxReceiveCount` of the queue's redrive policy: the receives after which SQS moves a
/// message to the dead-letter queue. `None` when the queue has no redrive policy.
pub async fn max_receive_count(client: &Client, url: &str) -> Result<Option<u32>, SqsError> {
    let policy = queue_attribute(client, url, QueueAttributeName::RedrivePolicy)
        .await?
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok());
    // SQS returns the count as a number; some emulators as a string.
    let count = policy.and_then(|p| match &p["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    });
    Ok(count.and_then(|c| u32::try_from(c).ok()))
}

/// Approximate number of messages visible plus in flight (for progress and tests).
pub async fn approximate_depth(client: &Client, url: &str) -> Result<u64, SqsError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| SqsError::new("GetQueueAttributes", e))?;
    let attrs = out.attributes();
    let get = |name: QueueAttributeName| {
        attrs
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
        + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let b = send_batches((0..25).map(|i| i.to_string()).collect());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(b[2][4], "24");
    }

    #[test]
    fn batches_stay_under_the_request_size_limit() {
        let big = "x".repeat(100 * 1024);
        let b = send_batches(vec![big.clone(), big.clone(), big.clone(), "y".into()]);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
        for batch in b {
            assert!(batch.iter().map(String::len).sum::<usize>() <= MAX_BATCH_BYTES);
        }
    }
}
