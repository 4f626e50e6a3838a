//! What waits for dispatch is seen: the pipeline backlog KEDA scales the listeners on counts the
//! due points MySQL holds beside the queue (not a reserved job before its time), and a waiting
//! job's view and event stream show its place under fair dispatch and, once a drain rate is
//! measured, an estimated start and finish.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::metric;
use serde_json::Value;

use crate::helpers::{KEY_A, TestApp, item, spawn_app_with};

const BACKLOG: &str = "accrual_sender_pipeline_backlog_messages";

fn items(points: usize) -> String {
    let items: Vec<String> = (0..points)
        .map(|i| item(&format!("m-{:05}", i % 5_000), "WELFARE", 1))
        .collect();
    format!("[{}]", items.join(","))
}

#[tokio::test]
async fn the_pipeline_backlog_counts_due_points_the_queue_does_not_hold() {
    // An accept-only replica: nothing is dispatched until the test runs dispatch itself.
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.dispatch.points_per_message = 10;
        s.api.chunk_items = 500;
    })
    .await;
    app.post(items(2_000)).job_id().await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    app.post(items(3_000))
        .query(&format!("reserve_at={tomorrow}"))
        .job_id()
        .await;

    // Four chunks of 500 points make 50 messages each; the queue is empty, and the job for
    // tomorrow does not count today.
    let main = app.env.queues.main.clone();
    assert_eq!(app.env.depth(&main).await, 0);
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, BACKLOG), Some(200.0), "{metrics}");
    // KEDA's metrics-api scaler reads the same on the operations port.
    let backlog = app.http.get(format!("{}/backlog", app.ops_address)).send();
    let backlog: Value = backlog.await.unwrap().json().await.unwrap();
    assert_eq!(
        backlog,
        serde_json::json!({"messages": 200, "due_messages": 200, "queue_messages": 0})
    );

    // Dispatched, the same messages are in the queue and still counted.
    app.run_background_once().await;
    assert_eq!(app.env.depth(&main).await, 200);
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, BACKLOG), Some(200.0), "{metrics}");
    let backlog = app.http.get(format!("{}/backlog", app.ops_address)).send();
    let backlog: Value = backlog.await.unwrap().json().await.unwrap();
    assert_eq!(backlog["queue_messages"], 200, "{backlog}");

    // Written, nothing is left.
    app.spawn_listener().await;
    eventually(Duration::from_secs(60), "the backlog drained", || async {
        metric(&app.metrics().await, BACKLOG) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_waiting_job_shows_the_points_ahead_of_it_and_when_it_should_start_and_finish() {
    const CAMPAIGN: usize = 30_000;
    let app = spawn_app_with(|s| {
        s.api.chunk_items = 250;
        s.dispatch.dispatch_queue_horizon = Duration::from_secs(1);
        s.dispatch.dispatch_poll = Duration::from_millis(200);
    })
    .await;
    // Client A's campaign; with no listener yet the queue fills to its floor and dispatch waits.
    let campaign = app.post(items(CAMPAIGN)).job_id().await;
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(60),
        "the queue at its floor",
        || async { app.env.depth(&main).await >= 100 },
    )
    .await;
    let queued = app.env.depth(&main).await;

    // Client B's 50 points wait for the queue and for their turn beside A's campaign, not for the
    // campaign.
    let small = app.post(items(50)).api_key("key_b").job_id().await;
    let b = view_as(&app, &small, "key_b").await;
    let b_ahead = b["queue"]["points_ahead"].as_u64().expect("B waits");
    let b_finish = b["queue"]["points_to_finish"].as_u64().unwrap();
    // The view's reading of the queue may miss the last chunks sent (up to one per dispatcher,
    // and one sent while it was read).
    assert!(
        b_ahead + 3 * 250 >= queued,
        "the {queued} queued are ahead of B: {b}"
    );
    assert!(
        b_finish <= queued + 50 + 50 + 500,
        "B's 50 points and A's share beside them after the {queued} queued: {b}"
    );
    let a = app.job_view(&campaign).await;
    let a_finish = a["queue"]["points_to_finish"].as_u64().expect("A waits");
    assert!(
        a_finish >= queued + (CAMPAIGN as u64) / 2,
        "A's campaign finishes after most of itself: {a}"
    );

    // Its event stream carries the place too.
    let mut stream = app
        .http
        .get(format!("{}/v1/jobs/{campaign}/events", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"points_ahead\""),
        "{first:?}"
    );
    drop(stream);

    // A listener drains the queue: with a measured rate the campaign gets its estimates.
    app.spawn_listener_with(|l| l.receive_tasks = 1).await;
    eventually(
        Duration::from_secs(60),
        "estimates for the campaign",
        || async {
            let a = app.job_view(&campaign).await;
            assert!(
                a["queue"].is_object(),
                "the campaign left the queue before any estimate: {a}"
            );
            let (start, finish) = (
                &a["queue"]["estimated_start"],
                &a["queue"]["estimated_finish"],
            );
            start.is_string() && finish.is_string() && start.as_str() <= finish.as_str()
        },
    )
    .await;
    eventually(Duration::from_secs(120), "the campaign written", || async {
        app.job_view(&campaign).await["status"] == "completed"
    })
    .await;
    let a = app.job_view(&campaign).await;
    assert!(
        a.get("queue").is_none(),
        "a dispatched job has no place: {a}"
    );
}

async fn view_as(app: &TestApp, job_id: &str, key: &str) -> Value {
    let url = format!("{}/v1/jobs/{job_id}", app.address);
    let response = app.http.get(url).bearer_auth(key).send().await.unwrap();
    response.json().await.unwrap()
}
