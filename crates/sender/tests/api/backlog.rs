//! `DISPATCH_MAX_QUEUE_DEPTH`: dispatch stops running ahead of the listeners at the bound, and
//! every point still ends written once the listeners catch up.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::metric;

use crate::helpers::{TestApp, item, spawn_app_with};

const POINTS: usize = 6_000;
const BOUND: u64 = 1_000;
const CHUNK: u32 = 250;

#[tokio::test]
async fn dispatch_waits_at_the_queue_depth_bound_and_resumes_as_the_listener_drains() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_max_queue_depth = BOUND;
        s.api.chunk_items = CHUNK;
        s.dispatch.dispatch_tasks = 2;
    })
    .await;
    let job_id = post_job(&app).await;

    // No listener yet: the queue fills up to the bound and stays there.
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(60),
        "the queue at the bound",
        || async { app.env.depth(&main).await >= BOUND },
    )
    .await;
    // Each dispatcher may have claimed one chunk before a reading showed the bound, and one
    // reading may miss what was sent while it was taken: at most a few chunks over it.
    let ceiling = BOUND + 3 * u64::from(CHUNK);
    let mut deepest = 0;
    for _ in 0..8 {
        deepest = deepest.max(app.env.depth(&main).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        deepest <= ceiling,
        "the queue held {deepest} messages, more than the bound of {BOUND} and a few chunks"
    );
    let view = app.job_view(&job_id).await;
    assert_eq!(view["status"], "dispatching", "{view}");
    let metrics = app.metrics_at(&app.address).await;
    let paused = metric(&metrics, "accrual_sender_dispatch_paused_seconds_total").unwrap();
    assert!(paused > 0.0, "no pause counted:\n{metrics}");
    let depth = metric(&metrics, "accrual_sender_dispatch_queue_depth").unwrap();
    assert!(depth >= BOUND as f64, "depth gauge {depth}");

    // A listener drains the queue; dispatch resumes and every point is written once.
    app.spawn_listener().await;
    eventually(Duration::from_secs(180), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, POINTS as i64);
    let view = app.job_view(&job_id).await;
    assert_eq!(view["written"], POINTS as u64, "{view}");
}

#[tokio::test]
async fn without_a_bound_dispatch_runs_ahead_of_the_listeners() {
    // The control: the same job with DISPATCH_MAX_QUEUE_DEPTH=0 fills the queue with all of it.
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_max_queue_depth = 0;
        s.api.chunk_items = CHUNK;
    })
    .await;
    post_job(&app).await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(120), "every point queued", || async {
        app.env.depth(&main).await == POINTS as u64
    })
    .await;
}

/// Posts the tests' job, `POINTS` one-point items over 1,000 members; returns its id.
async fn post_job(app: &TestApp) -> String {
    let items: Vec<String> = (0..POINTS)
        .map(|i| item(&format!("emp-{:04}", i % 1_000), "WELFARE", 1))
        .collect();
    let response = app.post(format!("[{}]", items.join(","))).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_owned()
}
