# Terraform and the AWS provider this configuration is written for. `terraform init` writes
# .terraform.lock.hcl with the provider's checksums: commit it with the first apply.

terraform {
  # Resource preconditions (main.tf) need 1.2; 1.5 is the oldest release we would support.
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Every argument used here (sqs_managed_sse_enabled, aws_sqs_queue_redrive_allow_policy,
      # aws_iam_policy_document) exists throughout 6.x.
      version = "~> 6.0"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = var.tags
  }
}
