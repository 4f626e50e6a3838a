//! Webhook delivery: every sender replica runs this task; the one holding the `webhooks` lease
//! ([`accrual_core::lease`]) delivers the outbox ([`accrual_core::webhook`]), the others wait.
//!
//! The holder keeps up to `WEBHOOK_CONCURRENCY` deliveries in flight; as one ends, the next due
//! events are claimed at once (and every `WEBHOOK_POLL` when none ends). Clients share the slots in
//! turns: each claim lists the clients with due events and gives them one slot each per turn,
//! starting after the client served last, so one client with thousands of due events does not
//! take every slot. An endpoint has at most `WEBHOOK_ENDPOINT_CONCURRENCY` deliveries in flight,
//! and a circuit breaker: after `WEBHOOK_BREAKER_FAILURES` consecutive failures (timeouts, no
//! connection, 5xx answers) its due events are held back for `WEBHOOK_BREAKER_COOL_OFF` (moved
//! later without an attempt: their retries are not burned), then one trial delivery closes it or
//! opens it again. A client's dead endpoint therefore holds at most `WEBHOOK_ENDPOINT_CONCURRENCY`
//! slots for a `WEBHOOK_TIMEOUT` each, and once its circuit is open, one slot per cool-off.
//!
//! A claimed event's `next_attempt_at` is pushed a whole lease ahead, so an event whose deliverer
//! dies is tried again once that has passed. Each POST is signed (its `t` on MySQL's clock, as the
//! claim read it, never the replica's), bounded by `WEBHOOK_TIMEOUT`, redirects not followed, and
//! every attempt is recorded. A 2xx answer finishes the event; anything else schedules the next
//! attempt with exponential back-off from `WEBHOOK_BACKOFF_FIRST` plus jitter, until the next
//! attempt would come more than `WEBHOOK_RETRY_FOR` after the event: then it gives up (recorded,
//! counted, logged). Delivery is at least once: a receiver that answers too late, or a replica
//! that dies after the POST, gets the same event (same `event_id`) again.
//!
//! # Layout
//!
//! - `settings` — `WEBHOOK_*` and their start-up checks.
//! - `task` — the lease, the slots, the loop that claims as deliveries end.
//! - `claim` — the due clients, the turns, the claim and holding events back.
//! - `breaker` — per-endpoint caps and circuits (in memory on the lease holder).
//! - `deliver` — one signed POST and its record.

mod breaker;
mod claim;
mod deliver;
mod settings;
mod task;

pub use settings::WebhookSettings;
pub use task::Webhooks;
