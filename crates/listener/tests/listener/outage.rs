//! MySQL going away, refusing rows, or being slow: the listener pauses, isolates or waits, and the
//! ledger ends with every good point exactly once.

use std::time::Duration;

use accrual_core::dlq;
use accrual_core::message::PointRecord;
use accrual_core::sqs::QueueOptions;
use accrual_testkit::proxy::TcpProxy;
use accrual_testkit::{TestEnv, eventually};
use sqlx::Connection;

use crate::helpers::{listener_settings, point, spawn_listener_on};

#[tokio::test]
async fn a_database_outage_mid_stream_stops_receiving_and_every_point_is_written_after_it() {
    // Two receives at most, 5 s hidden each: a listener that kept receiving (or let its messages
    // time out) through a 12 s outage would push points into the DLQ.
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 5,
    })
    .await;
    let proxy = TcpProxy::start(env.database_addr()).await;
    let mut settings = listener_settings(&env);
    settings.database.database_url = env.database_url_via(proxy.port);
    settings.receive_tasks = 4;
    settings.batch_max_rows = 256;
    let points: Vec<PointRecord> = (0..10_000)
        .map(|i| point(&format!("member-{}", i % 3_000), 1 + i % 50))
        .collect();
    let bodies: Vec<String> = points.iter().map(PointRecord::encode).collect();
    env.send_bodies(&bodies).await;
    let app = spawn_listener_on(env, settings).await;
    eventually(
        Duration::from_secs(300),
        "the listener to be mid-stream",
        || async { app.env.ledger_rows().await >= 2_000 },
    )
    .await;

    proxy.cut();
    eventually(
        Duration::from_secs(60),
        "the listener to notice the outage",
        || async { app.metrics.database_up.get() == 0 },
    )
    .await;
    let received_when_noticed = app.metrics.received.get();
    let rows_during_outage = app.env.ledger_rows().await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let received_after_outage = app.metrics.received.get();
    proxy.restore();

    // Only long polls already in flight (4 receivers, 10 messages each) may still return.
    assert!(
        received_after_outage <= received_when_noticed + 40,
        "receiving stopped during the outage: {received_when_noticed} -> {received_after_outage}"
    );
    assert!(
        rows_during_outage < 10_000,
        "the outage hit mid-stream ({rows_during_outage} rows)"
    );
    eventually(
        Duration::from_secs(600),
        "every point written after the outage",
        || async { app.env.ledger_rows().await >= 10_000 },
    )
    .await;
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(60),
        "the main queue to drain",
        || async { app.env.depth(&main).await == 0 },
    )
    .await;
    assert_eq!(app.env.ledger_rows().await, 10_000);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0, "DLQ empty");
    assert!(app.metrics.database_outages.get() >= 1);
    assert_eq!(app.metrics.database_up.get(), 1);
    assert_eq!(app.metrics.dead_lettered.get(), 0);
}

#[tokio::test]
async fn a_batch_refused_on_data_commits_its_good_rows_and_dead_letters_only_the_bad_ones() {
    let env = TestEnv::new().await;
    // A rule the database enforces and message validation does not know about.
    sqlx::query("ALTER TABLE point_accruals ADD CONSTRAINT amount_is_not_13 CHECK (amount <> 13)")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut points: Vec<PointRecord> = (0..300)
        .map(|i| point(&format!("member-{i}"), 1 + i % 12))
        .collect();
    let bad: Vec<PointRecord> = (0..3).map(|i| point(&format!("bad-{i}"), 13)).collect();
    for (i, b) in bad.iter().enumerate() {
        points.insert(50 + i * 97, b.clone());
    }
    let bodies: Vec<String> = points.iter().map(PointRecord::encode).collect();
    env.send_bodies(&bodies).await;
    let mut settings = listener_settings(&env);
    // Large batches, so each bad point sits among good ones.
    settings.batch_max_rows = 128;
    settings.batch_linger = Duration::from_millis(500);

    let app = spawn_listener_on(env, settings).await;

    eventually(
        Duration::from_secs(120),
        "good points written and bad ones dead-lettered",
        || async { app.metrics.written.get() == 300 && app.metrics.dead_lettered.get() == 3 },
    )
    .await;
    assert_eq!(app.env.ledger_rows().await, 300);
    let letters = dlq::list(&app.env.client, &app.env.queues.dlq, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        let record = PointRecord::decode(&letter.body).unwrap();
        assert!(
            bad.iter().any(|b| b.accrual_id == record.accrual_id),
            "only bad points are dead-lettered: {letter:?}"
        );
        let reason = letter.reason.as_deref().unwrap();
        assert!(
            reason.starts_with("MySQL refused the point:") && reason.contains("amount_is_not_13"),
            "{reason}"
        );
    }
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_dead_letters")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 3);
}

#[tokio::test]
async fn messages_held_past_half_their_visibility_timeout_are_extended_not_delivered_again() {
    let env = TestEnv::with_queue_options(QueueOptions {
        visibility_timeout_secs: 4,
        ..QueueOptions::default()
    })
    .await;
    let bodies: Vec<String> = (0..50)
        .map(|i| point(&format!("member-{i}"), 5).encode())
        .collect();
    env.send_bodies(&bodies).await;
    // Another session holds the table: every write of the listener waits on it.
    let mut locker = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    sqlx::query("LOCK TABLES point_accruals WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    let settings = listener_settings(&env);
    let app = spawn_listener_on(env, settings).await;
    eventually(
        Duration::from_secs(30),
        "all 50 messages received",
        || async { app.metrics.received.get() >= 50 },
    )
    .await;

    // Two and a half visibility timeouts with the write blocked. The keeper extends a message
    // once half of its timeout is gone: 2 s of margin, which a loaded CI machine does not eat.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let received_while_blocked = app.metrics.received.get();
    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();

    eventually(
        Duration::from_secs(30),
        "the held batch written",
        || async { app.metrics.written.get() == 50 },
    )
    .await;
    assert_eq!(received_while_blocked, 50, "no message delivered twice");
    assert!(app.metrics.visibility_extensions.get() >= 50);
    assert_eq!(app.metrics.duplicates.get(), 0);
    assert_eq!(app.env.ledger_rows().await, 50);
}

#[tokio::test]
async fn shutdown_during_an_outage_hands_held_messages_back_within_the_grace() {
    // The default 60 s visibility timeout: messages not handed back would stay hidden that long.
    let env = TestEnv::new().await;
    let proxy = TcpProxy::start(env.database_addr()).await;
    let mut settings = listener_settings(&env);
    settings.database.database_url = env.database_url_via(proxy.port);
    settings.shutdown_grace_secs = 3;
    let bodies: Vec<String> = (0..2_000)
        .map(|i| point(&format!("member-{i}"), 2).encode())
        .collect();
    env.send_bodies(&bodies).await;
    let listener = accrual_listener::Listener::build(settings).await.unwrap();
    let metrics = listener.metrics();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(listener.run(shutdown.clone()));
    eventually(
        Duration::from_secs(120),
        "the listener to be mid-stream",
        || async { env.ledger_rows().await >= 200 },
    )
    .await;
    proxy.cut();
    eventually(
        Duration::from_secs(60),
        "the listener to notice the outage",
        || async { metrics.database_up.get() == 0 },
    )
    .await;
    let held = metrics.in_flight.get();

    let started = std::time::Instant::now();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let took = started.elapsed();

    assert!(held > 0, "the listener held messages when stopped");
    // One long poll (1 s) plus the grace (3 s) plus handing back.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(metrics.in_flight.get(), 0, "nothing held after the exit");
    // A listener with a working database gets everything well before the 60 s timeout would
    // have released the held messages.
    let settings = listener_settings(&env);
    let app = spawn_listener_on(env, settings).await;
    eventually(
        Duration::from_secs(45),
        "every point written by the next listener",
        || async { app.env.ledger_rows().await == 2_000 },
    )
    .await;
}

/// Messages a receiver holds while it waits for room in the batcher are kept invisible like those
/// in a batch: a MySQL stall of three visibility timeouts delivers nothing twice. (The batcher's
/// room here is 4 points, so most of each receive waits in its receiver.) The timeout is 4 s: the
/// keeper extends at half of it, and at 2 s a CI run's LocalStack pass, beside the fauxqs pass,
/// saw extensions come after the timeout (their receipt handles refused) and 64 receives of 50.
#[tokio::test]
async fn messages_waiting_for_room_in_the_batcher_are_kept_invisible_too() {
    let env = TestEnv::with_queue_options(QueueOptions {
        visibility_timeout_secs: 4,
        ..QueueOptions::default()
    })
    .await;
    let bodies: Vec<String> = (0..50)
        .map(|i| point(&format!("member-{i}"), 5).encode())
        .collect();
    env.send_bodies(&bodies).await;
    let mut locker = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    sqlx::query("LOCK TABLES point_accruals WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    let mut settings = listener_settings(&env);
    settings.receive_tasks = 2;
    settings.batch_max_rows = 2;
    let app = spawn_listener_on(env, settings).await;
    eventually(
        Duration::from_secs(30),
        "both receivers holding a receive",
        || async { app.metrics.received.get() >= 20 },
    )
    .await;

    // Three visibility timeouts with every write blocked.
    tokio::time::sleep(Duration::from_secs(12)).await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();

    eventually(Duration::from_secs(60), "all 50 written", || async {
        app.metrics.written.get() == 50
    })
    .await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(30), "an empty queue", || async {
        app.env.depth(&main).await == 0
    })
    .await;
    assert_eq!(app.metrics.received.get(), 50, "no message delivered twice");
    assert_eq!(app.metrics.duplicates.get(), 0);
    assert_eq!(app.env.ledger_rows().await, 50);
}
