//! Packed messages (`"v":2`): exactly once per point, and a bad point dead-lettered alone.

use std::time::Duration;

use accrual_core::message::{self, PointRecord};
use accrual_core::sqs::ATTR_REASON;
use accrual_testkit::eventually;

use crate::helpers::{point, spawn_listener};

fn packed(records: &[PointRecord]) -> String {
    let bodies = records.iter().map(PointRecord::encode).collect();
    let mut packed = message::pack(bodies, records.len(), 256 * 1024).unwrap();
    assert_eq!(packed.len(), 1, "one packed message");
    packed.remove(0)
}

#[tokio::test]
async fn a_packed_message_sent_twice_writes_its_points_once() {
    let app = spawn_listener().await;
    let records: Vec<PointRecord> = (0..50).map(|i| point(&format!("m{i}"), i + 1)).collect();
    let body = packed(&records);
    assert!(body.starts_with(r#"{"v":2,"points":["#));

    app.env.send_raw(&body).await;
    app.env.send_raw(&body).await;

    eventually(
        Duration::from_secs(30),
        "both deliveries handled",
        || async { app.metrics.written.get() + app.metrics.duplicates.get() == 100 },
    )
    .await;
    assert_eq!(app.metrics.written.get(), 50);
    assert_eq!(app.metrics.duplicates.get(), 50);
    assert_eq!(app.metrics.points_received.get(), 100);
    assert_eq!(app.metrics.received.get(), 2);
    assert_eq!(app.env.ledger_rows().await, 50);
    let (rows, sum): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(DISTINCT accrual_id), CAST(SUM(amount) AS SIGNED) FROM point_accruals",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!((rows, sum), (50, (1..=50).sum()));
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(10), "both messages deleted", || async {
        app.env.depth(&main).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_packed_message_with_a_negative_amount_writes_the_others_and_dead_letters_that_point() {
    let app = spawn_listener().await;
    // Every point has amount 7 but the 14th, whose 13 becomes -5 inside the packed body.
    let records: Vec<PointRecord> = (0..20)
        .map(|i| point(&format!("m{i}"), if i == 13 { 13 } else { 7 }))
        .collect();
    let bad = &records[13];
    let body = packed(&records).replace(r#""amount":13"#, r#""amount":-5"#);
    assert_eq!(body.matches(r#""amount":-5"#).count(), 1);

    app.env.send_raw(&body).await;

    eventually(
        Duration::from_secs(30),
        "19 points written and one dead-lettered",
        || async { app.metrics.written.get() == 19 && app.metrics.dead_lettered.get() == 1 },
    )
    .await;
    assert_eq!(app.env.ledger_rows().await, 19);
    let missing: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE accrual_id = ?")
            .bind(bad.accrual_id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(missing, 0);

    let letters = app.env.receive_dead_letters().await;
    assert_eq!(letters.len(), 1, "only the bad point is dead-lettered");
    let letter_body = letters[0].body().unwrap();
    // A v1 body: the bad point alone, as it was in the packed message.
    let letter: serde_json::Value = serde_json::from_str(letter_body).unwrap();
    assert_eq!(letter["v"], 1);
    assert_eq!(letter["accrual_id"], bad.accrual_id.to_string());
    assert_eq!(letter["amount"], -5);
    assert_eq!(
        letters[0].message_attributes().unwrap()[ATTR_REASON].string_value(),
        Some("field `amount` must be an integer from 1 to 1000000000")
    );
    let recorded: String =
        sqlx::query_scalar("SELECT reason FROM accrual_dead_letters WHERE accrual_id = ?")
            .bind(bad.accrual_id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert!(recorded.contains("amount"), "{recorded}");
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(10),
        "the packed message deleted",
        || async { app.env.depth(&main).await == 0 },
    )
    .await;
}

#[tokio::test]
async fn v1_and_packed_messages_on_one_queue_are_all_written() {
    let app = spawn_listener().await;
    let v1: Vec<PointRecord> = (0..30).map(|i| point(&format!("a{i}"), 1)).collect();
    let v2: Vec<PointRecord> = (0..300).map(|i| point(&format!("b{i}"), 2)).collect();
    for record in &v1 {
        app.env.send_raw(&record.encode()).await;
    }
    let bodies = v2.iter().map(PointRecord::encode).collect();
    let packed = message::pack(bodies, 100, 256 * 1024).unwrap();
    assert_eq!(packed.len(), 3);
    app.env.send_bodies(&packed).await;

    eventually(Duration::from_secs(30), "330 points written", || async {
        app.metrics.written.get() == 330
    })
    .await;
    let sum: i64 = sqlx::query_scalar("SELECT CAST(SUM(amount) AS SIGNED) FROM point_accruals")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(sum, 30 + 600);
    assert_eq!(app.env.ledger_rows().await, 330);
}
