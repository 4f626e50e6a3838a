//! How long the listener holds a message, and what it records meanwhile: a last receive is
//! recorded ahead before anything else, its dead letters do not start counting while it is held,
//! no message is held past the hold cap, and the queue's attributes are read again while running.

use std::time::Duration;

use accrual_core::message::PointRecord;
use accrual_core::sqs::{self, LowerReceiveCount, QueueOptions};
use accrual_testkit::{TestEnv, eventually};
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::NaiveDateTime;
use sqlx::Connection;

use crate::helpers::{listener_settings, point, spawn_listener_on};

/// Receives the one message on the main queue and leaves it (receive count 1), as a consumer
/// that died would.
async fn receive_once(env: &TestEnv) {
    loop {
        let out = env
            .client
            .receive_message()
            .queue_url(&env.queues.main)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if !out.messages().is_empty() {
            return;
        }
    }
}

/// Messages on the main queue that are received and hidden.
async fn hidden(env: &TestEnv) -> u64 {
    let out = env
        .client
        .get_queue_attributes()
        .queue_url(&env.queues.main)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The `counts_from` of the dead letter recorded for `p`, if any.
async fn counts_from(env: &TestEnv, p: &PointRecord) -> Option<NaiveDateTime> {
    sqlx::query_scalar("SELECT counts_from FROM accrual_dead_letters WHERE accrual_id = ?")
        .bind(p.accrual_id)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
        .flatten()
}

/// A connection holding `LOCK TABLES point_accruals WRITE`: every write waits for it.
async fn lock_ledger(env: &TestEnv) -> sqlx::MySqlConnection {
    let mut locker = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    sqlx::query("LOCK TABLES point_accruals WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}

#[tokio::test]
async fn a_last_receive_waits_for_its_record_ahead_which_is_retried_under_the_gate() {
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 2,
        // Wide enough that a loaded machine's late extension still comes in time (a CI run: the
        // write's Redis update timed out, and the extension after it came too late with 2 s).
        visibility_timeout_secs: 5,
    })
    .await;
    let p = point("m1", 5);
    env.send_bodies(&[p.encode()]).await;
    receive_once(&env).await;
    // The record-ahead cannot be made (its table is gone) while points could still be written.
    sqlx::query("RENAME TABLE accrual_dead_letters TO accrual_dead_letters_away")
        .execute(&env.pool)
        .await
        .unwrap();
    let settings = listener_settings(&env);
    let app = spawn_listener_on(env, settings).await;

    eventually(
        Duration::from_secs(30),
        "the failing record-ahead to close the gate",
        || async { app.metrics.received.get() == 1 && app.metrics.database_up.get() == 0 },
    )
    .await;
    // Held (extended) past its own timeout, and all along neither written nor handed back.
    eventually(
        Duration::from_secs(30),
        "the message held for three extensions",
        || async {
            assert_eq!(
                app.env.ledger_rows().await,
                0,
                "handed on to the batcher before its record-ahead committed"
            );
            assert_eq!(hidden(&app.env).await, 1, "handed back to SQS");
            app.metrics.visibility_extensions.get() >= 3
        },
    )
    .await;
    assert_eq!(app.metrics.received.get(), 1);

    sqlx::query("RENAME TABLE accrual_dead_letters_away TO accrual_dead_letters")
        .execute(&app.env.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the point written once the record-ahead committed",
        || async {
            app.env.ledger_rows().await == 1 && app.env.depth(&app.env.queues.main).await == 0
        },
    )
    .await;
    assert!(
        counts_from(&app.env, &p).await.is_some(),
        "recorded ahead before it was written"
    );
    assert_eq!(app.metrics.database_up.get(), 1, "the gate opened again");
    assert_eq!(app.metrics.written.get(), 1);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0);
}

#[tokio::test]
async fn the_keeper_moves_a_held_last_receive_dead_letter_forward_so_it_never_counts_early() {
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 2,
        // Wide enough that a loaded machine's late tick still extends in time; a
        // lapsed extension would let SQS dead-letter the message (a CI run: 4.6 s late).
        visibility_timeout_secs: 5,
    })
    .await;
    let p = point("m1", 5);
    env.send_bodies(&[p.encode()]).await;
    receive_once(&env).await;
    let mut locker = lock_ledger(&env).await;
    let settings = listener_settings(&env);
    let app = spawn_listener_on(env, settings).await;

    eventually(
        Duration::from_secs(30),
        "the last receive recorded ahead",
        || async { counts_from(&app.env, &p).await.is_some() },
    )
    .await;
    let first = counts_from(&app.env, &p).await.unwrap();
    // Held past the `counts_from` set at the record-ahead (its receive + 5 s).
    eventually(
        Duration::from_secs(60),
        "the message held for four extensions",
        || async { app.metrics.visibility_extensions.get() >= 4 },
    )
    .await;
    let now = chrono::Utc::now().naive_utc();
    let moved = counts_from(&app.env, &p).await.unwrap();
    assert!(
        moved > first && moved > now,
        "held, so not counting yet: counts_from {moved} (first {first}, now {now})"
    );

    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the point written and its message deleted",
        || async {
            app.env.ledger_rows().await == 1 && app.env.depth(&app.env.queues.main).await == 0
        },
    )
    .await;
    assert_eq!(app.metrics.dead_lettered.get(), 0);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0);
}

#[tokio::test]
async fn a_message_held_to_the_hold_cap_is_let_go_and_the_write_holding_it_killed() {
    // Hold cap: 10 visibility timeouts of 2 s.
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 2,
    })
    .await;
    let database = accrual_core::db::database_name(&env.database.database_url).unwrap();
    env.send_bodies(&[point("m1", 5).encode()]).await;
    let mut locker = lock_ledger(&env).await;
    let mut settings = listener_settings(&env);
    // The write would wait for the lock longer than the test.
    settings.database.database_statement_timeout = Duration::from_secs(300);
    let app = spawn_listener_on(env, settings).await;

    let stuck = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT ID FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND STATE LIKE '%metadata lock%' ORDER BY ID",
        )
        .bind(&database)
        .fetch_all(&app.env.pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(30),
        "the batch write stuck on the lock",
        || async { !stuck().await.is_empty() },
    )
    .await;
    let first = stuck().await[0];
    eventually(
        Duration::from_secs(60),
        "the message let go at the cap and delivered again",
        || async { app.metrics.hold_cap_reached.get() >= 1 && app.metrics.received.get() >= 2 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the stuck session killed",
        || async { !stuck().await.contains(&first) },
    )
    .await;

    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the point written and its message deleted",
        || async {
            app.env.ledger_rows().await == 1 && app.env.depth(&app.env.queues.main).await == 0
        },
    )
    .await;
    assert_eq!(app.metrics.written.get(), 1);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0);
}

#[tokio::test]
async fn a_max_receive_count_lowered_on_the_live_queue_is_acted_on_after_the_next_read() {
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 2,
    })
    .await;
    let mut settings = listener_settings(&env);
    settings.queue_attributes_refresh = Duration::from_millis(500);
    let app = spawn_listener_on(env, settings).await;
    assert_eq!(app.metrics.max_receive_count.get(), 5);

    // `accrualctl init --allow-lower-max-receive-count` on the live queue: every receive is now
    // the last, and the timeout longer.
    sqs::ensure_queues_with(
        &app.env.client,
        &app.env.sqs.accrual_queue,
        &app.env.sqs.accrual_dlq,
        QueueOptions {
            max_receive_count: 1,
            visibility_timeout_secs: 4,
        },
        LowerReceiveCount::Allow,
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the listener to read the new attributes",
        || async {
            app.metrics.max_receive_count.get() == 1
                && app.metrics.visibility_timeout_seconds.get() == 4
        },
    )
    .await;

    let p = point("m1", 5);
    app.env.send_bodies(&[p.encode()]).await;
    eventually(Duration::from_secs(30), "the point written", || async {
        app.env.ledger_rows().await == 1 && app.env.depth(&app.env.queues.main).await == 0
    })
    .await;
    assert!(
        counts_from(&app.env, &p).await.is_some(),
        "its first receive was its last: recorded ahead"
    );
}
