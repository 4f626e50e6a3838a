//! Durable jobs: crash-safe dispatch, several replicas, reserved accruals, client retries, progress.

use std::time::Duration;

use accrual_testkit::{TestEnv, eventually};
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, spawn_app, spawn_app_with_dispatchers};
use crate::process::SenderProcess;

/// A JSON body of `n` points over `n / 3` members.
fn job_body(n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"member_id": format!("m-{}", i % (n / 3).max(1)), "point_type": "WELFARE", "amount": 1 + i % 100}))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

async fn rows_of(env: &TestEnv, job_id: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT accrual_id) FROM point_accruals WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn dispatched_chunks(env: &TestEnv, job_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NOT NULL",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn delete_job(app: &TestApp, job_id: Uuid) -> reqwest::Response {
    let url = format!("{}/v1/jobs/{job_id}", app.address);
    app.http
        .delete(url)
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
}

async fn get_job(app: &TestApp, job_id: Uuid, key: &str) -> reqwest::Response {
    let url = format!("{}/v1/jobs/{job_id}", app.address);
    app.http.get(url).bearer_auth(key).send().await.unwrap()
}

fn job_id_of(body: &Value) -> Uuid {
    body["job_id"].as_str().unwrap().parse().unwrap()
}

/// Waits until the job's ledger rows reach `n`, then checks that none is missing or doubled.
async fn assert_ledger_holds_exactly(app: &TestApp, job_id: Uuid, n: i64, timeout: Duration) {
    eventually(timeout, "every point of the job in the ledger", || async {
        rows_of(&app.env, job_id).await.0 >= n
    })
    .await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(120), "an empty queue", || async {
        app.env.depth(&main).await == 0
    })
    .await;
    assert_eq!(rows_of(&app.env, job_id).await, (n, n));
}

#[tokio::test]
async fn a_sender_killed_mid_dispatch_leaves_exactly_every_point_in_the_ledger() {
    let app = spawn_app_with_dispatchers(0).await;
    app.spawn_listener().await;
    let mut first = SenderProcess::spawn(&app.env).await;
    let response = app.post(job_body(200_000)).to(&first.address).await;
    assert_eq!(response.status().as_u16(), 202);
    let job_id = job_id_of(&response.json().await.unwrap());
    eventually(
        Duration::from_secs(120),
        "a few chunks dispatched",
        || async { dispatched_chunks(&app.env, job_id).await >= 3 },
    )
    .await;

    first.kill();
    let dispatched_at_kill = dispatched_chunks(&app.env, job_id).await;
    assert!(
        dispatched_at_kill < 100,
        "the job was fully dispatched before the kill"
    );
    let _second = SenderProcess::spawn(&app.env).await;

    assert_ledger_holds_exactly(&app, job_id, 200_000, Duration::from_secs(900)).await;
    // A chunk is marked dispatched after SQS took it: the listener may have written it first.
    eventually(Duration::from_secs(30), "every chunk marked", || async {
        dispatched_chunks(&app.env, job_id).await >= 100
    })
    .await;
    assert_eq!(dispatched_chunks(&app.env, job_id).await, 100);
    let by_second: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accrual_chunks WHERE job_id = ? AND dispatched_by <> (SELECT dispatched_by FROM accrual_chunks WHERE job_id = ? AND seq = 0)",
    )
    .bind(job_id)
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert!(by_second > 0, "the second sender took over no chunk");
}

#[tokio::test]
async fn a_sender_stopped_with_sigterm_hands_its_chunks_back_and_another_finishes_the_job() {
    let app = spawn_app_with_dispatchers(0).await;
    app.spawn_listener().await;
    let mut first = SenderProcess::spawn(&app.env).await;
    let response = app.post(job_body(20_000)).to(&first.address).await;
    let job_id = job_id_of(&response.json().await.unwrap());
    eventually(Duration::from_secs(60), "a chunk dispatched", || async {
        dispatched_chunks(&app.env, job_id).await >= 1
    })
    .await;

    let (status, took) = first.terminate().await;

    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let leased: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NULL AND lease_owner IS NOT NULL",
    )
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(leased, 0, "chunks still leased by the stopped sender");
    let _second = SenderProcess::spawn(&app.env).await;
    assert_ledger_holds_exactly(&app, job_id, 20_000, Duration::from_secs(600)).await;
}

#[tokio::test]
async fn two_sender_processes_dispatch_one_job_together_without_doubling() {
    let app = spawn_app_with_dispatchers(0).await;
    app.spawn_listener().await;
    let a = SenderProcess::spawn(&app.env).await;
    let _b = SenderProcess::spawn(&app.env).await;

    let response = app.post(job_body(200_000)).to(&a.address).await;
    assert_eq!(response.status().as_u16(), 202);
    let job_id = job_id_of(&response.json().await.unwrap());

    assert_ledger_holds_exactly(&app, job_id, 200_000, Duration::from_secs(900)).await;
    let replicas: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT dispatched_by) FROM accrual_chunks WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(replicas, 2, "both replicas should have dispatched chunks");
}

#[tokio::test]
async fn a_reserved_job_writes_nothing_before_its_time_and_everything_soon_after() {
    let app = spawn_app().await;
    app.spawn_listener().await;
    let reserve_at = Utc::now() + chrono::Duration::seconds(5);
    let query = format!(
        "?reserve_at={}",
        reserve_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .replace('+', "%2B");

    let response = app.post(job_body(1_000)).query(&query).await;

    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "reserved");
    let job_id = job_id_of(&body);
    while Utc::now() < reserve_at - chrono::Duration::milliseconds(100) {
        assert_eq!(
            rows_of(&app.env, job_id).await.0,
            0,
            "a point was written before reserve_at"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = reserve_at + chrono::Duration::seconds(15);
    eventually(Duration::from_secs(25), "all 1,000 points", || async {
        rows_of(&app.env, job_id).await.0 == 1_000
    })
    .await;
    assert!(Utc::now() <= deadline, "released too late");
    let first_written: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT MIN(created_at) FROM point_accruals WHERE job_id = ?")
            .bind(job_id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert!(
        first_written >= reserve_at,
        "written at {first_written}, reserved for {reserve_at}"
    );
}

#[tokio::test]
async fn a_cancelled_reserved_job_never_writes_a_row_and_cannot_be_cancelled_twice() {
    let app = spawn_app().await;
    app.spawn_listener().await;
    let reserve_at = Utc::now() + chrono::Duration::seconds(3);
    let query = format!(
        "?reserve_at={}",
        reserve_at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    let response = app.post(job_body(300)).query(&query).await;
    let job_id = job_id_of(&response.json().await.unwrap());

    let cancelled = delete_job(&app, job_id).await;
    assert_eq!(cancelled.status().as_u16(), 200);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "cancelled"
    );

    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(rows_of(&app.env, job_id).await.0, 0);
    assert_eq!(app.env.depth(&app.env.queues.main).await, 0);
    assert_eq!(delete_job(&app, job_id).await.status().as_u16(), 409);
}

#[tokio::test]
async fn a_job_already_dispatched_cannot_be_cancelled() {
    let app = spawn_app().await;
    let response = app.post(job_body(30)).await;
    let job_id = job_id_of(&response.json().await.unwrap());

    let answer = delete_job(&app, job_id).await;

    assert_eq!(answer.status().as_u16(), 409);
}

#[tokio::test]
async fn one_idempotency_key_sent_three_times_makes_one_job_and_writes_once() {
    let app = spawn_app().await;
    app.spawn_listener().await;
    let body = job_body(3_000);

    let (r1, r2) = tokio::join!(
        app.post(body.clone()).idempotency_key("campaign-7"),
        app.post(body.clone()).idempotency_key("campaign-7"),
    );
    let r3 = app.post(body.clone()).idempotency_key("campaign-7").await;

    let mut statuses = vec![
        r1.status().as_u16(),
        r2.status().as_u16(),
        r3.status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 202]);
    let ids: Vec<Uuid> = [r1, r2, r3]
        .into_iter()
        .map(|r| async { job_id_of(&r.json::<Value>().await.unwrap()) })
        .collect::<futures_util::stream::FuturesOrdered<_>>()
        .collect()
        .await;
    assert!(ids.iter().all(|id| *id == ids[0]));
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    assert_ledger_holds_exactly(&app, ids[0], 3_000, Duration::from_secs(300)).await;

    let other = app.post(job_body(30)).idempotency_key("campaign-7").await;
    assert_eq!(other.status().as_u16(), 409);
}

#[tokio::test]
async fn sse_reports_progress_and_a_final_completed_event() {
    let app = spawn_app().await;
    app.spawn_listener().await;
    let response = app.post(job_body(50_000)).await;
    let job_id = job_id_of(&response.json().await.unwrap());

    let events = app
        .http
        .get(format!("{}/v1/jobs/{job_id}/events", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut stream = events.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read)
        .await
        .expect("the stream ends at the final status");

    let views: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert!(
        views
            .iter()
            .any(|(e, v)| e == "progress" && v["written"].as_u64() < Some(50_000)),
        "{text}"
    );
    let (last_event, last) = views.last().unwrap();
    assert_eq!(last_event, "final");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["written"], 50_000);
    assert_eq!(last["total"], 50_000);
    assert!(last["completed_at"].is_string());

    let get: Value = get_job(&app, job_id, KEY_A).await.json().await.unwrap();
    assert_eq!(get["status"], "completed");
    assert_eq!(get["enqueued"], 50_000);
}

#[tokio::test]
async fn another_clients_job_is_not_found() {
    let app = spawn_app().await;
    let response = app.post(job_body(30)).await;
    let job_id = job_id_of(&response.json().await.unwrap());

    let as_b = get_job(&app, job_id, "key_b").await;

    assert_eq!(as_b.status().as_u16(), 404);
}
