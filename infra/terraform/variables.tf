# Inputs. Each default is the code's own default for the same setting (named in the description),
# and scripts/infra/check-terraform fails when one drifts from the code. Change a value here only
# together with the matching environment variable of the binaries and of `accrualctl init`.

variable "aws_region" {
  description = "Region of the queues (AWS_REGION of every binary)."
  type        = string
  default     = "us-east-1"
}

variable "queue_name" {
  description = "Name of the main queue, one message per point or per packed group (ACCRUAL_QUEUE)."
  type        = string
  default     = "point-accruals"

  validation {
    # SQS: 1-80 characters of [A-Za-z0-9_-]; a standard queue, so no .fifo suffix.
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.queue_name))
    error_message = "queue_name must be 1-80 characters of [A-Za-z0-9_-]."
  }
}

variable "dlq_name" {
  description = "Name of the dead-letter queue (ACCRUAL_DLQ)."
  type        = string
  default     = "point-accruals-dlq"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.dlq_name))
    error_message = "dlq_name must be 1-80 characters of [A-Za-z0-9_-]."
  }
}

variable "visibility_timeout_secs" {
  description = "Seconds a received message stays hidden from other receivers (VISIBILITY_TIMEOUT_SECS of accrualctl init). The listener reads it at start-up and extends held messages every half of it."
  type        = number
  default     = 60

  validation {
    # SQS accepts 0-43200 (12 hours); 0 would redeliver every message to another listener at once.
    condition     = var.visibility_timeout_secs >= 1 && var.visibility_timeout_secs <= 43200 && floor(var.visibility_timeout_secs) == var.visibility_timeout_secs
    error_message = "visibility_timeout_secs must be a whole number of seconds from 1 to 43200."
  }
}

variable "max_receive_count" {
  description = "Receives after which SQS moves a message to the dead-letter queue (MAX_RECEIVE_COUNT of accrualctl init). The listener reads it from the redrive policy to record a message's points ahead on its last receive."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000 && floor(var.max_receive_count) == var.max_receive_count
    error_message = "max_receive_count must be a whole number from 1 to 1000."
  }
}

variable "message_retention_secs" {
  description = "Seconds the main queue keeps a message that no listener has deleted: the longest listener outage the pipeline survives without losing points. Default 4 days (SQS's own default); alarm on ApproximateAgeOfOldestMessage well before it."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_secs >= 60 && var.message_retention_secs <= 1209600
    error_message = "message_retention_secs must be from 60 to 1209600 (14 days)."
  }
}

variable "dlq_message_retention_secs" {
  description = "Seconds the dead-letter queue keeps a message, counted from when it was first sent to the MAIN queue (SQS keeps the original enqueue time on a standard queue's redrive). Default 14 days, the most SQS allows, so an operator has at least 10 days to read and redrive what the main queue moved there."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_secs >= 60 && var.dlq_message_retention_secs <= 1209600
    error_message = "dlq_message_retention_secs must be from 60 to 1209600 (14 days)."
  }
}

variable "tags" {
  description = "Tags on every resource (provider default_tags)."
  type        = map(string)
  default     = {}
}

# Each policy is attached to an existing role when its role name is given (for example the IRSA
# roles of the Kubernetes service accounts); otherwise only the policy is created and its ARN
# is an output, to attach wherever the roles are managed.

variable "sender_role_name" {
  description = "IAM role of accrual-sender to attach the sender policy to (null: attach nothing)."
  type        = string
  default     = null
}

variable "listener_role_name" {
  description = "IAM role of accrual-listener to attach the listener policy to (null: attach nothing)."
  type        = string
  default     = null
}

variable "init_role_name" {
  description = "IAM role of the `accrualctl init` Job to attach the init policy to (null: attach nothing)."
  type        = string
  default     = null
}

variable "dlq_operator_role_name" {
  description = "IAM role of whoever runs `accrualctl dlq list|redrive` to attach the DLQ-operator policy to (null: attach nothing)."
  type        = string
  default     = null
}
