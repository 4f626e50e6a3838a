# One identity policy per component, each granting exactly the SQS actions its code calls, on
# exactly the queue it calls them on. scripts/infra/check-terraform derives those sets from the
# Rust sources (every SDK call, traced to the queue it names) and fails when a statement here
# grants less or more. IAM action names cover the batch calls: sqs:SendMessage is also
# SendMessageBatch, sqs:DeleteMessage DeleteMessageBatch, sqs:ChangeMessageVisibility its batch.
# Why each action is there: docs/terraform.md.

locals {
  policies = {
    sender       = "Lets accrual-sender dispatch points to the main queue and dead-letter the points SQS refuses."
    listener     = "Lets accrual-listener receive, delete and extend points on the main queue and dead-letter poison."
    init         = "Lets accrualctl init find the queues Terraform created and write the main queue's redrive policy."
    dlq_operator = "Lets accrualctl dlq list and dlq redrive read the dead-letter queue and move letters back."
  }

  policy_documents = {
    sender       = data.aws_iam_policy_document.sender.json
    listener     = data.aws_iam_policy_document.listener.json
    init         = data.aws_iam_policy_document.init.json
    dlq_operator = data.aws_iam_policy_document.dlq_operator.json
  }

  role_names = {
    sender       = var.sender_role_name
    listener     = var.listener_role_name
    init         = var.init_role_name
    dlq_operator = var.dlq_operator_role_name
  }
}

# accrual-sender (crates/sender): GetQueueUrl of both queues at start-up; SendMessageBatch to the
# main queue (the dispatcher); GetQueueAttributes of the main queue (its depth: the dispatchers'
# bound, /readyz, /metrics and /backlog, which KEDA scales the listeners on, and the reconciler);
# SendMessage to the DLQ (a point SQS refuses for good is dead-lettered by the dispatcher).
data "aws_iam_policy_document" "sender" {
  statement {
    sid       = "MainQueue"
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"]
    resources = [aws_sqs_queue.main.arn]
  }

  statement {
    sid       = "DeadLetterQueue"
    actions   = ["sqs:GetQueueUrl", "sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

# accrual-listener (crates/listener): GetQueueUrl of both queues and GetQueueAttributes of the
# main queue at start-up (VisibilityTimeout, RedrivePolicy's maxReceiveCount); ReceiveMessage,
# DeleteMessageBatch/DeleteMessage and ChangeMessageVisibilityBatch on the main queue; SendMessage
# to the DLQ (poison, and a bad point of a packed message, with its reason). It never sends to the
# main queue and never reads the DLQ.
data "aws_iam_policy_document" "listener" {
  statement {
    sid = "MainQueue"
    actions = [
      "sqs:ChangeMessageVisibility",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ReceiveMessage",
    ]
    resources = [aws_sqs_queue.main.arn]
  }

  statement {
    sid       = "DeadLetterQueue"
    actions   = ["sqs:GetQueueUrl", "sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

# accrualctl init (crates/ctl, `Command::Init`, through core::sqs::ensure_queues): with Terraform
# the queues exist, so init only finds them (GetQueueUrl), reads the main queue's RedrivePolicy (to
# refuse lowering maxReceiveCount without --allow-lower-max-receive-count) and the DLQ's ARN
# (GetQueueAttributes) and writes the main queue's RedrivePolicy and VisibilityTimeout
# (SetQueueAttributes; same values as here when MAX_RECEIVE_COUNT and VISIBILITY_TIMEOUT_SECS keep
# their defaults). It is deliberately NOT granted sqs:CreateQueue: ensure_queue calls CreateQueue
# only when GetQueueUrl finds no queue, which after `terraform apply` means a wrong ACCRUAL_QUEUE or
# ACCRUAL_DLQ, and an AccessDenied is the right answer to that. Nor SetQueueAttributes on the DLQ:
# ensure_queues gives the DLQ no attributes, so none are set. Run without Terraform (LocalStack,
# docker compose), init needs sqs:CreateQueue on both queues as well.
data "aws_iam_policy_document" "init" {
  statement {
    sid       = "MainQueue"
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SetQueueAttributes"]
    resources = [aws_sqs_queue.main.arn]
  }

  statement {
    sid       = "DeadLetterQueue"
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

# accrualctl dlq list / dlq redrive (crates/ctl, `Command::Dlq`, through core::dlq): both read the
# DLQ (ReceiveMessage; list with a visibility timeout of 0, so nothing leaves it); redrive also
# counts it first (GetQueueAttributes), sends each letter to the main queue (SendMessage) and only
# then deletes it from the DLQ (DeleteMessageBatch).
data "aws_iam_policy_document" "dlq_operator" {
  statement {
    sid       = "MainQueue"
    actions   = ["sqs:GetQueueUrl", "sqs:SendMessage"]
    resources = [aws_sqs_queue.main.arn]
  }

  statement {
    sid = "DeadLetterQueue"
    actions = [
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ReceiveMessage",
    ]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

# No KEDA policy: KEDA scales the listeners on the senders' GET /backlog (infra/k8s), inside the
# cluster, and never calls SQS. The senders read the queue's depth for it under their own policy.

resource "aws_iam_policy" "component" {
  for_each = local.policies

  # Named after the main queue, so two environments' queues (point-accruals-staging, …) in one
  # account get policies of their own.
  name        = "${var.queue_name}-${replace(each.key, "_", "-")}"
  description = each.value
  policy      = local.policy_documents[each.key]
}

resource "aws_iam_role_policy_attachment" "component" {
  for_each = { for component, role in local.role_names : component => role if role != null }

  role       = each.value
  policy_arn = aws_iam_policy.component[each.key].arn
}
