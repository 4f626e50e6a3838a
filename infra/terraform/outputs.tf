# What the deployment needs from here: the queue names for ACCRUAL_QUEUE / ACCRUAL_DLQ, and the
# policy ARNs for whoever manages the roles; the URLs are for the console and the CLI.

output "queue_name" {
  description = "Main queue name: ACCRUAL_QUEUE of every binary."
  value       = aws_sqs_queue.main.name
}

output "dlq_name" {
  description = "Dead-letter queue name: ACCRUAL_DLQ of every binary."
  value       = aws_sqs_queue.dlq.name
}

output "queue_url" {
  description = "Main queue URL, for the console and the CLI (the binaries look it up by name)."
  value       = aws_sqs_queue.main.url
}

output "dlq_url" {
  description = "Dead-letter queue URL."
  value       = aws_sqs_queue.dlq.url
}

output "queue_arn" {
  description = "Main queue ARN (the only resource, with the DLQ's, that the policies name)."
  value       = aws_sqs_queue.main.arn
}

output "dlq_arn" {
  description = "Dead-letter queue ARN."
  value       = aws_sqs_queue.dlq.arn
}

output "max_receive_count" {
  description = "The redrive policy's maxReceiveCount: run `accrualctl init` with MAX_RECEIVE_COUNT set to this."
  value       = var.max_receive_count
}

output "visibility_timeout_secs" {
  description = "The main queue's visibility timeout: run `accrualctl init` with VISIBILITY_TIMEOUT_SECS set to this."
  value       = aws_sqs_queue.main.visibility_timeout_seconds
}

output "policy_arns" {
  description = "ARN of each component's IAM policy: sender, listener, init, dlq_operator."
  value       = { for component, policy in aws_iam_policy.component : component => policy.arn }
}
