//! Event streams: one poller per job however many streams follow it, and a cap per client.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::metric;
use serde_json::Value;

use crate::helpers::{KEY_A, TestApp, item, problem, spawn_app};

/// A job reserved an hour ahead: its stream stays open with nothing to report.
async fn reserved_job(app: &TestApp) -> String {
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let response = app
        .http
        .post(format!("{}/v1/accruals?reserve_at={at}", app.address))
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .body(format!("[{}]", item("a", "P", 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Opens a stream on the job and reads its first event.
async fn open_stream(app: &TestApp, job_id: &str) -> reqwest::Response {
    let mut response = app
        .http
        .get(format!("{}/v1/jobs/{job_id}/events", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("event: progress"),
        "{first:?}"
    );
    response
}

async fn pollers(app: &TestApp) -> f64 {
    metric(&app.metrics().await, "accrual_sender_sse_pollers").unwrap()
}

#[tokio::test]
async fn streams_following_one_job_share_one_poller() {
    let app = spawn_app().await;
    let (one, two) = (reserved_job(&app).await, reserved_job(&app).await);

    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open_stream(&app, &one).await);
    }
    assert_eq!(pollers(&app).await, 1.0);
    streams.push(open_stream(&app, &two).await);
    assert_eq!(pollers(&app).await, 2.0);

    drop(streams);
    eventually(Duration::from_secs(10), "the pollers stopped", || async {
        pollers(&app).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_client_may_keep_only_sixteen_streams_open() {
    let app = spawn_app().await;
    let job = reserved_job(&app).await;
    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(open_stream(&app, &job).await);
    }

    let refused = app
        .http
        .get(format!("{}/v1/jobs/{job}/events", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let body = problem(refused, 429).await;
    assert!(
        body["detail"].as_str().unwrap().contains("event streams"),
        "{body}"
    );

    streams.pop();
    eventually(Duration::from_secs(10), "a slot free again", || async {
        app.http
            .get(format!("{}/v1/jobs/{job}/events", app.address))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
}
