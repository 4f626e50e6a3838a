//! SQS delivers at least once; the ledger must hold each point once.

use std::time::Duration;

use accrual_testkit::eventually;

use crate::helpers::{point, spawn_listener};

#[tokio::test]
async fn the_same_message_body_delivered_twice_writes_one_row() {
    let app = spawn_listener().await;
    let body = point("member-1", 100).encode();

    app.env.send_raw(&body).await;
    app.env.send_raw(&body).await;

    eventually(
        Duration::from_secs(30),
        "both deliveries handled",
        || async { app.metrics.written.get() + app.metrics.duplicates.get() == 2 },
    )
    .await;
    assert_eq!(app.metrics.written.get(), 1);
    assert_eq!(app.metrics.duplicates.get(), 1);
    assert_eq!(app.env.ledger_rows().await, 1);
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(10), "both messages deleted", || async {
        app.env.depth(&main).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_point_already_in_the_ledger_is_counted_as_a_duplicate_on_redelivery() {
    let app = spawn_listener().await;
    let record = point("member-2", 5);
    app.env.send_raw(&record.encode()).await;
    eventually(Duration::from_secs(30), "the first write", || async {
        app.metrics.written.get() == 1
    })
    .await;

    // A re-send after the first message was deleted, as a sender replica re-sending a chunk does.
    app.env.send_raw(&record.encode()).await;

    eventually(Duration::from_secs(30), "the duplicate", || async {
        app.metrics.duplicates.get() == 1
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, 1);
    let stored: (i64, String) =
        sqlx::query_as("SELECT amount, member_id FROM point_accruals WHERE accrual_id = ?")
            .bind(record.accrual_id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(stored, (5, "member-2".to_owned()));
}
