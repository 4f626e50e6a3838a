//! Packed messages end to end: whatever `ACCRUAL_POINTS_PER_MESSAGE` is, a job's points reach the
//! ledger exactly once, and progress and metrics count points.

use std::time::Duration;

use accrual_testkit::eventually;
use serde_json::Value;

use crate::helpers::{KEY_A, spawn_app_with};

const POINTS: usize = 50_000;

/// Posts a 50,000-point job to a sender packing `per_message` points a message and checks the
/// ledger, the job's counters and the number of messages sent.
async fn fifty_thousand_points_with(per_message: u32) {
    let app = spawn_app_with(|s| s.dispatch.points_per_message = per_message).await;
    let listener = app.spawn_listener().await;
    let point_types = ["WELFARE", "BONUS", "CASHBACK"];
    let items: Vec<Value> = (0..POINTS)
        .map(|i| {
            serde_json::json!({
                "member_id": format!("emp-{:05}", i % 20_000),
                "point_type": point_types[i / 20_000],
                "amount": i % 1_000 + 1,
            })
        })
        .collect();
    let expected_sum: i64 = (0..POINTS).map(|i| (i % 1_000 + 1) as i64).sum();

    let response = app.post(serde_json::to_vec(&items).unwrap()).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    let job_id: uuid::Uuid = body["job_id"].as_str().unwrap().parse().unwrap();

    eventually(Duration::from_secs(600), "50,000 ledger rows", || async {
        app.env.ledger_rows().await >= POINTS as i64
    })
    .await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(30), "an empty queue", || async {
        app.env.depth(&main).await == 0
    })
    .await;

    let (rows, distinct, sum): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT accrual_id), CAST(SUM(amount) AS SIGNED) \
         FROM point_accruals WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, sum),
        (POINTS as i64, POINTS as i64, expected_sum)
    );
    // What the listener promises: every point it received is counted once, as written, as a
    // duplicate (a redelivery) or as dead-lettered, and each point is written exactly once.
    eventually(
        Duration::from_secs(10),
        "every received point counted",
        || async {
            listener.written.get() + listener.duplicates.get() + listener.dead_lettered.get()
                == listener.points_received.get()
        },
    )
    .await;
    assert_eq!(listener.written.get(), POINTS as u64);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0);

    // Progress counts points, not messages.
    let url = format!("{}/v1/jobs/{job_id}", app.address);
    let job = || async {
        let response = app.http.get(&url).bearer_auth(KEY_A).send().await.unwrap();
        response.json::<Value>().await.unwrap()
    };
    eventually(Duration::from_secs(30), "the job completed", || async {
        job().await["status"] == "completed"
    })
    .await;
    let job = job().await;
    assert_eq!(
        (job["enqueued"].as_u64(), job["written"].as_u64()),
        (Some(50_000), Some(50_000)),
        "{job}"
    );

    // Each 2,000-point chunk is packed on its own: ceil(2,000 / per_message) messages per chunk.
    let messages = (POINTS / 2_000) * 2_000usize.div_ceil(per_message as usize);
    let counted = [
        format!("accrual_sender_points_dispatched_total {POINTS}\n"),
        format!("accrual_sender_messages_dispatched_total {messages}\n"),
    ];
    // The dispatcher counts a chunk just after marking it dispatched; the job may settle first.
    eventually(Duration::from_secs(10), "the dispatch counted", || async {
        let metrics = app.metrics().await;
        counted.iter().all(|line| metrics.contains(line))
    })
    .await;
    assert!(listener.received.get() >= messages as u64);
}

#[tokio::test]
async fn fifty_thousand_points_one_per_message_give_exactly_fifty_thousand_rows() {
    fifty_thousand_points_with(1).await;
}

#[tokio::test]
async fn fifty_thousand_points_seven_per_message_give_exactly_fifty_thousand_rows() {
    fifty_thousand_points_with(7).await;
}

#[tokio::test]
async fn fifty_thousand_points_a_hundred_per_message_give_exactly_fifty_thousand_rows() {
    fifty_thousand_points_with(100).await;
}
