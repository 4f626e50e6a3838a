//! Shared core of the bulk point-accrual pipeline: domain types and validation, the SQS message
//! codec, settings, schema and the MySQL and SQS helpers both services use.
//!
//! # Layout
//! - [`api_key`] — API key digests, generation and their configuration entries.
//! - [`dead_letter`] — record a point's dead letter for its job and send it to the DLQ.
//! - [`dlq`] — list and redrive the dead-letter queue.
//! - [`job_outcome`] — a job's exact counts and its final state, stored when it is done.
//! - [`job_view`] — a job as its client sees it (API, SSE, webhook bodies), from MySQL alone.
//! - [`webhook`] — webhook events: the outbox row, the signature, endpoint URLs, the retry schedule.
//! - [`retention`] — what goes once old enough (final jobs' chunk bodies, idempotency keys), its settings.
//! - [`ledger_clients`] — the ledger's `client_id`: its online backfill and index, and whether they are done.
//! - [`lease`] — leases on background work one sender replica at a time does (`maintenance_leases`).
//! - [`domain`] — newtypes (`MemberId`, `PointType`, `Amount`, `Reason`) that can only hold valid values.
//! - [`wire`] — lenient parse of a request body into raw items, with the item limit.
//! - [`accrual`] — all-or-nothing validation of raw items into [`accrual::Accrual`]s.
//! - [`chunk`] — stored form of a chunk of points (compressed message bodies).
//! - [`message`] — the v1 SQS message body, encode and decode.
//! - [`progress`] — live job progress counters in Redis.
//! - [`settings`] — environment variables / CLI flags shared by every binary.
//! - [`db`] — MySQL pool, database creation, embedded migrations, statement shapes.
//! - [`sqs`] — SQS client, queue creation with the redrive policy.
//! - [`telemetry`] — tracing set-up.

pub mod accrual;
pub mod api_key;
pub mod chunk;
pub mod db;
pub mod dead_letter;
pub mod dlq;
pub mod domain;
pub mod job_outcome;
pub mod job_status;
pub mod job_view;
pub mod lease;
pub mod ledger_clients;
pub mod message;
pub mod progress;
pub mod retention;
pub mod settings;
pub mod sqs;
pub mod telemetry;
pub mod webhook;
pub mod wire;
