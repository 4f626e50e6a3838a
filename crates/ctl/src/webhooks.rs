//! `accrualctl webhooks set|show|remove|deliveries`: clients' webhook endpoints, straight in MySQL.

use accrual_core::webhook;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::WebhooksCommand;

pub async fn run(pool: &MySqlPool, command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Set { client, url } => set(pool, &client, &url).await,
        WebhooksCommand::Show { client } => show(pool, &client).await,
        WebhooksCommand::Remove { client } => remove(pool, &client).await,
        WebhooksCommand::Deliveries { client, limit } => deliveries(pool, &client, limit).await,
    }
}

fn check_client(client: &str) -> anyhow::Result<()> {
    if !accrual_core::api_key::valid_client_id(client) {
        anyhow::bail!("client id `{client}` must be 1-64 characters of [A-Za-z0-9_.-]");
    }
    Ok(())
}

async fn set(pool: &MySqlPool, client: &str, url: &str) -> anyhow::Result<()> {
    check_client(client)?;
    let url = webhook::endpoint_url(url).with_context(|| format!("Refused URL `{url}`"))?;
    let secret = webhook::generate_secret();
    sqlx::query(
        "INSERT INTO webhook_endpoints (client_id, url, secret) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE url = VALUES(url), secret = VALUES(secret), updated_at = NOW(6)",
    )
    .bind(client)
    .bind(url.as_str())
    .bind(&secret)
    .execute(pool)
    .await
    .context("Failed to store the endpoint")?;
    println!(
        "{}",
        json!({ "client": client, "url": url.as_str(), "secret": secret })
    );
    eprintln!(
        "Give `secret` to the client (it is shown only now): every delivery is signed with it. Events from now on go to this URL."
    );
    Ok(())
}

async fn show(pool: &MySqlPool, client: &str) -> anyhow::Result<()> {
    check_client(client)?;
    let row: Option<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT url, created_at, updated_at FROM webhook_endpoints WHERE client_id = ?",
    )
    .bind(client)
    .fetch_optional(pool)
    .await
    .context("Failed to read the endpoint")?;
    let Some((url, created_at, updated_at)) = row else {
        anyhow::bail!("client `{client}` has no webhook endpoint");
    };
    println!(
        "{}",
        json!({ "client": client, "url": url, "created_at": created_at, "updated_at": updated_at })
    );
    Ok(())
}

async fn remove(pool: &MySqlPool, client: &str) -> anyhow::Result<()> {
    check_client(client)?;
    let mut tx = pool.begin().await?;
    let removed = sqlx::query("DELETE FROM webhook_endpoints WHERE client_id = ?")
        .bind(client)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    let given_up = sqlx::query(
        "UPDATE webhook_events SET next_attempt_at = NULL, gave_up_at = NOW(6), \
           last_error = 'the client''s webhook endpoint was removed' \
         WHERE client_id = ? AND next_attempt_at IS NOT NULL",
    )
    .bind(client)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await.context("Failed to remove the endpoint")?;
    println!(
        "{}",
        json!({ "client": client, "removed": removed, "pending_given_up": given_up })
    );
    Ok(())
}

type EventRow = (
    Uuid,
    String,
    Uuid,
    DateTime<Utc>,
    u32,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<u16>,
    Option<String>,
);

/// (attempt, attempted_at, http_status, error, duration_ms)
type AttemptRow = (u32, DateTime<Utc>, Option<u16>, Option<String>, u32);

async fn deliveries(pool: &MySqlPool, client: &str, limit: u32) -> anyhow::Result<()> {
    check_client(client)?;
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT event_id, event, job_id, created_at, attempts, next_attempt_at, delivered_at, \
           gave_up_at, last_status, last_error \
         FROM webhook_events WHERE client_id = ? ORDER BY created_at DESC, event_id DESC LIMIT ?",
    )
    .bind(client)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("Failed to read the events")?;
    for e in events {
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, attempted_at, http_status, error, duration_ms \
                 FROM webhook_attempts WHERE event_id = ? ORDER BY attempt",
        )
        .bind(e.0)
        .fetch_all(pool)
        .await?;
        let status = if e.6.is_some() {
            "delivered"
        } else if e.7.is_some() {
            "gave_up"
        } else {
            "pending"
        };
        let log: Vec<_> = attempts
            .into_iter()
            .map(|a| {
                json!({ "attempt": a.0, "at": a.1, "http_status": a.2, "error": a.3, "duration_ms": a.4 })
            })
            .collect();
        println!(
            "{}",
            json!({
                "event_id": e.0,
                "event": e.1,
                "job_id": e.2,
                "created_at": e.3,
                "status": status,
                "attempts": e.4,
                "next_attempt_at": e.5,
                "delivered_at": e.6,
                "gave_up_at": e.7,
                "last_status": e.8,
                "last_error": e.9,
                "attempt_log": log,
            })
        );
    }
    Ok(())
}
