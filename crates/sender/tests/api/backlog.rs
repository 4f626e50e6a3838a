//! `DISPATCH_QUEUE_HORIZON`: the queue holds a few seconds of the listeners' work at their measured
//! rate (never fewer than 100 messages), dispatch waits at that bound, and every point still ends
//! written once the listeners catch up.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::metric;

use crate::helpers::{TestApp, item, spawn_app_with};

const POINTS: usize = 6_000;
/// The bound while nothing drains the queue (`backlog::MIN_QUEUE_MESSAGES`).
const FLOOR: u64 = 100;
const CHUNK: u32 = 250;

#[tokio::test]
async fn with_no_listener_dispatch_waits_at_the_floor_and_resumes_as_the_listener_drains() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_queue_horizon = Duration::from_secs(1);
        s.dispatch.dispatch_poll = Duration::from_millis(200);
        s.api.chunk_items = CHUNK;
        s.dispatch.dispatch_tasks = 2;
    })
    .await;
    let job_id = post_job(&app, POINTS).await;

    // No listener yet: nothing drains, so the bound is the floor; the queue fills up to it and
    // stays there.
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(60),
        "the queue at the bound",
        || async { app.env.depth(&main).await >= FLOOR },
    )
    .await;
    // Each dispatcher may have claimed one chunk before a reading showed the bound, and one
    // reading may miss what was sent while it was taken: at most a few chunks over it.
    let ceiling = FLOOR + 3 * u64::from(CHUNK);
    let mut deepest = 0;
    for _ in 0..8 {
        deepest = deepest.max(app.env.depth(&main).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        deepest <= ceiling,
        "the queue held {deepest} messages, more than the bound of {FLOOR} and a few chunks"
    );
    let view = app.job_view(&job_id).await;
    assert_eq!(view["status"], "dispatching", "{view}");
    let metrics = app.metrics_at(&app.address).await;
    let paused = metric(&metrics, "accrual_sender_dispatch_paused_seconds_total").unwrap();
    assert!(paused > 0.0, "no pause counted:\n{metrics}");
    let depth = metric(&metrics, "accrual_sender_dispatch_queue_depth").unwrap();
    assert!(depth >= FLOOR as f64, "depth gauge {depth}");
    let bound = metric(&metrics, "accrual_sender_dispatch_queue_bound_messages").unwrap();
    // Nothing drains, so the bound stays at the floor, give or take a chunk claimed just before a
    // reading and sent just after it (which looks like a drain for one reading).
    assert!(
        bound <= (FLOOR + u64::from(CHUNK)) as f64,
        "nothing drains, yet the bound is {bound}"
    );

    // A listener drains the queue; dispatch resumes and every point is written once.
    app.spawn_listener().await;
    eventually(Duration::from_secs(180), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, POINTS as i64);
    let view = app.job_view(&job_id).await;
    assert_eq!(view["written"], POINTS as u64, "{view}");
    // What went in and what drained give the rate the bound follows.
    let metrics = app.metrics_at(&app.address).await;
    let rate = metric(&metrics, "accrual_sender_drain_rate_points_per_second").unwrap();
    assert!(rate > 0.0, "no drain rate measured:\n{metrics}");
}

#[tokio::test]
async fn a_slow_listener_gets_a_queue_of_its_horizon_not_the_whole_job() {
    // One receive task writing small batches: the listener is slower than dispatch, so without
    // a horizon half the job piles up in the queue (about 16,000 messages here). The shortest
    // horizon keeps the bound well below that.
    const JOB: usize = 30_000;
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_queue_horizon = Duration::from_millis(500);
        s.dispatch.dispatch_poll = Duration::from_millis(200);
        s.api.chunk_items = 500;
    })
    .await;
    app.spawn_listener_with(|l| {
        l.receive_tasks = 1;
        l.batch_max_rows = 50;
    })
    .await;
    let job_id = post_job(&app, JOB).await;
    let main = app.env.queues.main.clone();
    let (mut deepest, mut widest) = (0, 0.0_f64);
    loop {
        deepest = deepest.max(app.env.depth(&main).await);
        let metrics = app.metrics_at(&app.address).await;
        let bound = metric(&metrics, "accrual_sender_dispatch_queue_bound_messages").unwrap();
        widest = widest.max(bound);
        if app.job_view(&job_id).await["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.env.ledger_rows().await, JOB as i64);
    // Two dispatchers' chunks over the widest bound at most, and far from the whole job.
    assert!(
        deepest as f64 <= widest + 2.0 * 500.0 + 500.0,
        "the queue held {deepest} messages; the bound was at most {widest}"
    );
    assert!(
        deepest < (JOB / 3) as u64,
        "the queue held {deepest} of the job's {JOB} messages"
    );
}

#[tokio::test]
async fn without_a_horizon_dispatch_runs_ahead_of_the_listeners() {
    // The control: the same job with DISPATCH_QUEUE_HORIZON=0 fills the queue with all of it.
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_queue_horizon = Duration::ZERO;
        s.api.chunk_items = CHUNK;
    })
    .await;
    post_job(&app, POINTS).await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(120), "every point queued", || async {
        app.env.depth(&main).await == POINTS as u64
    })
    .await;
}

/// Posts a job of `points` one-point items over 1,000 members; returns its id.
async fn post_job(app: &TestApp, points: usize) -> String {
    let items: Vec<String> = (0..points)
        .map(|i| item(&format!("emp-{:04}", i % 1_000), "WELFARE", 1))
        .collect();
    let response = app.post(format!("[{}]", items.join(","))).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_owned()
}
