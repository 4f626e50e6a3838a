//! Integration tests of the listener on real MariaDB and LocalStack SQS.
#![allow(clippy::unwrap_used)]

mod client_ids;
mod clock;
mod emulator;
mod helpers;
mod holds;
mod idempotency;
mod outage;
mod outcome;
mod packed;
mod poison;
mod process;
mod reversed;
mod scale;
mod timeouts;
