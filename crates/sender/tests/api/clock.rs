//! Time from one clock (issue 24, point 5): a sender whose own clock is ten minutes fast (run under
//! libfaketime) still has its jobs dispatched at once and signs its webhooks with MySQL's time,
//! because the instants that others compare with MySQL's `NOW(6)` come from MySQL.

use std::time::Duration;

use accrual_testkit::process::{clock_shifted, free_port};
use accrual_testkit::{TestEnv, eventually};
use chrono::{DateTime, Utc};

use crate::helpers::{KEY_A, item, spawn_app_with_dispatchers};
use crate::process::SenderProcess;
use crate::webhooks::{Behaviour, Receiver, cancel, post_reserved, set_endpoint};

/// How far ahead the skewed sender's clock runs.
const AHEAD: &str = "+10m";

/// The skewed process's environment on top of `extra`.
fn skewed<'a>(
    shifted: &'a [(&'static str, String)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    shifted
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}

/// Only the skewed sender dispatches (the test's own accepts nothing and runs no dispatcher). With
/// `due_at` from its clock, the chunks waited until MySQL's `NOW(6)` caught up: ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_by_a_sender_ten_minutes_fast_is_dispatched_and_completed_at_once() {
    let app = spawn_app_with_dispatchers(0).await;
    let shifted = clock_shifted(AHEAD);
    let sender = SenderProcess::spawn_with(&app.env, &skewed(&shifted, &[])).await;
    app.spawn_listener().await;

    let items: Vec<String> = (0..10)
        .map(|i| item(&format!("skew-{i}"), "WELFARE", 3))
        .collect();
    let response = app
        .http
        .post(format!("{}/v1/accruals", sender.address))
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .body(format!("[{}]", items.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();

    // The process's clock is ahead indeed: the job's `created_at` is its own.
    let view = app.job_view(&job_id).await;
    let created: DateTime<Utc> = view["created_at"].as_str().unwrap().parse().unwrap();
    let mysql_now: DateTime<Utc> = sqlx::query_scalar("SELECT NOW(6)")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert!(
        created - mysql_now > chrono::Duration::minutes(9),
        "the sender's clock is not ahead: created_at {created}, MySQL {mysql_now}"
    );
    eventually(Duration::from_secs(30), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, 10);
}

/// The webhook lease holder's clock is ten minutes fast; the receiver, like any, refuses a
/// signature whose `t` is more than five minutes from its own time (the machine's, MySQL's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_ten_minutes_fast_signs_its_webhooks_with_mysqls_time() {
    let env = TestEnv::new().await;
    let port = free_port();
    let receiver = Receiver::start(port, Behaviour::default()).await;
    set_endpoint(&env.pool, "client_a", port).await;
    let shifted = clock_shifted(AHEAD);
    let webhook_env = [
        ("WEBHOOK_POLL", "100ms"),
        ("WEBHOOK_BACKOFF_FIRST", "100ms"),
        ("WEBHOOK_TIMEOUT", "2s"),
    ];
    let sender = SenderProcess::spawn_with(&env, &skewed(&shifted, &webhook_env)).await;
    let http = reqwest::Client::new();
    let job = post_reserved(&http, &sender.address, 3_600).await;
    cancel(&http, &sender.address, &job).await;

    eventually(
        Duration::from_secs(30),
        "the cancel event delivered with a signature the receiver accepts",
        || async {
            receiver
                .verified()
                .contains_key(&("job.cancelled".to_owned(), job.clone()))
        },
    )
    .await;
    assert!(
        receiver.deliveries().iter().all(|d| d.signature_ok),
        "a delivery was signed with the sender's own clock"
    );
}
