#!/usr/bin/env bash
# LocalStack (Docker) init hook: creates the dead-letter queue and the main queue with its redrive
# policy, as `accrualctl init` does. Runs when LocalStack reports ready.
set -euo pipefail
main=${ACCRUAL_QUEUE:-point-accruals}
dlq=${ACCRUAL_DLQ:-point-accruals-dlq}
max_receive=${MAX_RECEIVE_COUNT:-5}
awslocal sqs create-queue --queue-name "$dlq" >/dev/null
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$(awslocal sqs get-queue-url --queue-name "$dlq" --output text)" \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)
awslocal sqs create-queue --queue-name "$main" --attributes \
  "{\"VisibilityTimeout\":\"60\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"$max_receive\\\"}\"}" >/dev/null
echo "created $main -> $dlq (maxReceiveCount $max_receive)"
