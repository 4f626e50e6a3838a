//! Integration tests of the listener on real MariaDB and LocalStack SQS.
#![allow(clippy::unwrap_used)]

mod helpers;
mod idempotency;
mod outage;
mod poison;
mod process;
mod scale;
