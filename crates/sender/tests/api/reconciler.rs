//! The reconciler: a quiet job's missing points are re-sent, then given up on as lost in transit;
//! a backlog is not a loss, and a healthy job is never compared.

use std::time::Duration;

use accrual_core::sqs::QueueOptions;
use accrual_testkit::process::metric;
use accrual_testkit::{TestEnv, eventually};
use aws_sdk_sqs::types::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{DEV_KEYS, TestApp, item, spawn_app_in};

/// A 1 s visibility timeout and 5 receives: a quiet period of 10 s (the listeners' hold cap).
async fn short_queue_env() -> TestEnv {
    TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 1,
    })
    .await
}

/// A sender whose reconciler looks every 200 ms and gives up after `attempts` re-sends.
async fn app_with_reconciler(attempts: u32) -> TestApp {
    spawn_app_in(short_queue_env().await, &[], |s| {
        s.keys.accrual_api_keys = DEV_KEYS.into();
        s.reconciler.reconcile_interval = Duration::from_millis(200);
        s.reconciler.reconcile_quiet_floor = Duration::from_secs(1);
        s.reconciler.reconcile_attempts = attempts;
    })
    .await
}

fn body(points: usize) -> String {
    let items: Vec<String> = (0..points)
        .map(|i| item(&format!("m{i}"), "P", 1))
        .collect();
    format!("[{}]", items.join(","))
}

async fn wait_for_status(app: &TestApp, job_id: &str, status: &str, within: Duration) -> Value {
    let view = std::sync::Mutex::new(Value::Null);
    eventually(within, &format!("job {job_id} to be {status}"), || async {
        let fetched = app.job_view(job_id).await;
        let done = fetched["status"] == status;
        *view.lock().unwrap() = fetched;
        done
    })
    .await;
    view.into_inner().unwrap()
}

/// Receives up to 10 messages of the main queue (1 s long poll).
async fn receive(env: &TestEnv) -> Vec<Message> {
    env.client
        .receive_message()
        .queue_url(&env.queues.main)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

async fn delete(env: &TestEnv, message: &Message) {
    env.client
        .delete_message()
        .queue_url(&env.queues.main)
        .receipt_handle(message.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
}

/// Takes every message off the main queue as it arrives and deletes it, keeping the bodies, until
/// `stop`: SQS losing whatever it is given.
fn black_hole(env: &TestEnv, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<String>> {
    let (client, url) = (env.client.clone(), env.queues.main.clone());
    tokio::spawn(async move {
        let mut eaten = Vec::new();
        while !stop.is_cancelled() {
            let out = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for m in out.messages.unwrap_or_default() {
                client
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                eaten.push(m.body.unwrap());
            }
        }
        eaten
    })
}

async fn sender_metric(app: &TestApp, name: &str) -> f64 {
    metric(&app.metrics_at(&app.address).await, name).unwrap_or(0.0)
}

/// Ten of a job's messages taken off the queue and deleted behind the pipeline's back: today's
/// code left the job `enqueued` at 10 of 20 for good. The reconciler finds the job quiet, re-sends
/// exactly the missing points, and the job completes by itself, exactly.
#[tokio::test]
async fn points_deleted_behind_the_pipelines_back_are_re_sent_and_the_job_completes() {
    let app = app_with_reconciler(3).await;
    let job_id = app.post(body(20)).job_id().await;
    eventually(
        Duration::from_secs(30),
        "all 20 messages on the queue",
        || async { app.env.depth(&app.env.queues.main).await >= 20 },
    )
    .await;
    let mut lost = 0;
    while lost < 10 {
        for m in receive(&app.env).await {
            if lost < 10 {
                delete(&app.env, &m).await;
                lost += 1;
            }
        }
    }
    app.spawn_listener().await;
    let view = wait_for_status(&app, &job_id, "completed", Duration::from_secs(90)).await;
    assert_eq!(view["written"], 20, "{view}");
    assert_eq!(view["dead_lettered"], 0, "{view}");
    assert_eq!(view["reconciler"]["attempts"], 1, "{view}");
    assert_eq!(view["reconciler"]["points_resent"], 10, "{view}");
    assert_eq!(view["reconciler"]["points_given_up"], 0, "{view}");
    assert_eq!(app.env.ledger_rows().await, 20);
    assert_eq!(
        sender_metric(&app, "accrual_sender_reconciler_points_resent_total").await,
        10.0
    );
}

/// Points lost on every send are re-sent once, then, after another quiet period, dead-lettered
/// as lost in transit: the job settles `completed_with_errors` by itself. When the lost points
/// turn up after all, they count as written, and the job's status changes once more.
#[tokio::test]
async fn points_lost_on_every_send_are_given_up_and_count_as_written_if_they_turn_up() {
    let app = app_with_reconciler(1).await;
    sqlx::query("INSERT INTO webhook_endpoints (client_id, url, secret) VALUES ('client_a', 'http://127.0.0.1:9/', 'whsec_test')")
        .execute(&app.env.pool)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let eater = black_hole(&app.env, stop.clone());
    let job_id = app.post(body(3)).job_id().await;
    let view = wait_for_status(
        &app,
        &job_id,
        "completed_with_errors",
        Duration::from_secs(90),
    )
    .await;
    stop.cancel();
    let eaten = eater.await.unwrap();
    assert_eq!(eaten.len(), 6, "each point sent twice: {eaten:?}");
    assert_eq!(view["dead_lettered"], 3, "{view}");
    assert_eq!(view["reconciler"]["attempts"], 1, "{view}");
    assert_eq!(view["reconciler"]["points_resent"], 3, "{view}");
    assert_eq!(view["reconciler"]["points_given_up"], 3, "{view}");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM accrual_dead_letters ORDER BY reason")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(reasons, vec!["lost in transit after 1 attempts"; 3]);
    let mut on_dlq = 0;
    while on_dlq < 3 {
        let letters = app.env.receive_dead_letters().await;
        assert!(
            !letters.is_empty(),
            "3 dead letters on the DLQ, got {on_dlq}"
        );
        on_dlq += letters.len();
    }

    // The originals turn up after all (a late delivery, a redrive).
    app.spawn_listener().await;
    let originals: Vec<String> = eaten.into_iter().take(3).collect();
    app.env.send_bodies(&originals).await;
    let view = wait_for_status(&app, &job_id, "completed", Duration::from_secs(60)).await;
    assert_eq!(
        (&view["written"], &view["dead_lettered"]),
        (&3.into(), &0.into())
    );
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM webhook_events WHERE job_id = ? ORDER BY created_at")
            .bind(uuid::Uuid::parse_str(&job_id).unwrap())
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(events, ["job.completed_with_errors", "job.completed"]);
}

/// A queue that holds a job's messages while no listener runs is a backlog, not a loss: nothing is
/// quiet while the ledger does not grow. Once listeners drain it, the job completes without the
/// reconciler ever comparing it.
#[tokio::test]
async fn a_backlog_is_not_a_loss_and_a_healthy_job_is_never_compared() {
    let app = app_with_reconciler(1).await;
    let job_id = app.post(body(20)).job_id().await;
    let quiet_period = Duration::from_secs(10);
    // Longer than the quiet period, with the job's messages waiting in the queue.
    tokio::time::sleep(quiet_period + Duration::from_secs(3)).await;
    let view = app.job_view(&job_id).await;
    assert_eq!(view["status"], "enqueued", "{view}");
    assert_eq!(view["reconciler"], Value::Null, "{view}");
    assert_eq!(app.env.depth(&app.env.queues.main).await, 20);

    app.spawn_listener().await;
    let view = wait_for_status(&app, &job_id, "completed", Duration::from_secs(30)).await;
    assert_eq!(view["written"], 20, "{view}");
    assert_eq!(view["reconciler"], Value::Null, "{view}");
    assert_eq!(
        sender_metric(&app, "accrual_sender_reconciler_jobs_compared_total").await,
        0.0
    );
    assert_eq!(
        sender_metric(&app, "accrual_sender_reconciler_points_resent_total").await,
        0.0
    );
}
