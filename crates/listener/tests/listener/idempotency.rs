//! SQS delivers at least once; the ledger must hold each point once.

use std::time::Duration;

use accrual_listener::ledger::Ledger;
use accrual_testkit::{TestEnv, eventually};
use sqlx::Connection;
use tokio::time::Instant;

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

/// Two writes of this process holding one point (a message delivered again while a write held
/// it): the second waits for the first. With the first committed it counts a duplicate; with the
/// first abandoned at its hold cap it writes the point itself, since the message it then deletes
/// may be the only copy left.
#[tokio::test]
async fn a_point_another_write_holds_waits_for_that_write_and_is_written_once_whatever_its_fate() {
    let env = TestEnv::new().await;
    let ledger = Ledger::new(env.pool.clone(), 64);
    let far = Instant::now() + Duration::from_secs(3_600);
    let mut locker = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    let lock = "LOCK TABLES point_accruals WRITE";

    // Committed: one written, one duplicate.
    let record = point("member-held", 4);
    sqlx::query(lock).execute(&mut locker).await.unwrap();
    let writes: Vec<_> = (0..2)
        .map(|_| {
            let (ledger, record) = (ledger.clone(), record.clone());
            tokio::spawn(async move { ledger.write(&[record], far).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    let mut counts = (0, 0);
    for write in writes {
        let outcome = write.await.unwrap().unwrap().expect("before the deadline");
        counts.0 += outcome.written;
        counts.1 += outcome.duplicates;
    }
    assert_eq!(counts, (1, 1));

    // Abandoned: the write that waited writes the point once the table is free.
    let record = point("member-abandoned", 6);
    sqlx::query(lock).execute(&mut locker).await.unwrap();
    let first = tokio::spawn({
        let (ledger, record) = (ledger.clone(), record.clone());
        async move {
            let soon = Instant::now() + Duration::from_secs(2);
            ledger.write(&[record], soon).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn({
        let (ledger, record) = (ledger.clone(), record.clone());
        async move { ledger.write(&[record], far).await }
    });
    assert!(
        first.await.unwrap().unwrap().is_none(),
        "the first write gives up at its hold cap"
    );
    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    let outcome = second.await.unwrap().unwrap().expect("before the deadline");
    assert_eq!((outcome.written, outcome.duplicates), (1, 0));
    assert_eq!(env.ledger_rows().await, 2);
}
