# The pipeline's two SQS queues: the main queue (accrual-sender sends, accrual-listener receives)
# and its dead-letter queue. Both are standard queues: the listener is an idempotent, at-least-once
# consumer keyed by accrual_id, so FIFO ordering and deduplication would only cost throughput.
#
# What each setting must be is decided by the code, and scripts/infra/check-terraform holds this
# file to it: the visibility timeout and maxReceiveCount equal accrualctl init's defaults, the
# names equal ACCRUAL_QUEUE/ACCRUAL_DLQ's, the message size fits the code's 256 KiB bound.
# How to apply it, and the order with `accrualctl init`: docs/terraform.md.

locals {
  # The largest message the code sends: a packed message and a SendMessageBatch call are kept
  # under 256 KiB (MAX_BATCH_BYTES in crates/core/src/sqs.rs). Set explicitly so that a provider
  # or account default cannot lower it under what the sender sends.
  max_message_size_bytes = 262144

  # The main queue's redrive policy, in the form `accrualctl init` writes it (it rewrites this
  # attribute when it runs: keep MAX_RECEIVE_COUNT equal to var.max_receive_count).
  main_redrive_policy = {
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  }
}

resource "aws_sqs_queue" "dlq" {
  name                       = var.dlq_name
  message_retention_seconds  = var.dlq_message_retention_secs
  max_message_size           = local.max_message_size_bytes
  sqs_managed_sse_enabled    = true
  visibility_timeout_seconds = 30
  receive_wait_time_seconds  = 0
  delay_seconds              = 0

  lifecycle {
    precondition {
      # A message SQS moves here keeps its original enqueue time, so a DLQ that kept messages for
      # less time than the main queue would drop them before anyone could redrive them.
      condition     = var.dlq_message_retention_secs >= var.message_retention_secs
      error_message = "dlq_message_retention_secs must be at least message_retention_secs."
    }
  }
}

resource "aws_sqs_queue" "main" {
  name = var.queue_name
  # The listener reads this at start-up and every minute (GetQueueAttributes VisibilityTimeout) and
  # extends the visibility of held messages every half of it.
  visibility_timeout_seconds = var.visibility_timeout_secs
  message_retention_seconds  = var.message_retention_secs
  max_message_size           = local.max_message_size_bytes
  # Encryption at rest with SQS-owned keys: no KMS key policy and no kms:* rights for the
  # binaries. A customer-managed key would need kms:GenerateDataKey (sender, listener, DLQ
  # operator) and kms:Decrypt (listener, DLQ operator) in iam.tf.
  sqs_managed_sse_enabled = true
  # The listener long-polls with its own wait (RECEIVE_WAIT_SECS on every ReceiveMessage), and a
  # reserved accrual waits in MySQL, never in SQS (no DelaySeconds).
  receive_wait_time_seconds = 0
  delay_seconds             = 0
  redrive_policy            = jsonencode(local.main_redrive_policy)
}

# Only the main queue may use the DLQ as its dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.main.arn]
  })
}

# Both queues refuse requests that do not come over TLS, whoever sends them. This policy grants
# nothing: access comes only from the identity policies in iam.tf.
data "aws_iam_policy_document" "tls_only" {
  for_each = {
    main = aws_sqs_queue.main.arn
    dlq  = aws_sqs_queue.dlq.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "tls_only" {
  for_each = {
    main = aws_sqs_queue.main.id
    dlq  = aws_sqs_queue.dlq.id
  }

  queue_url = each.value
  policy    = data.aws_iam_policy_document.tls_only[each.key].json
}
