//! Every point's fate is counted on its job, whoever moved it: SQS after `maxReceiveCount`, the
//! listener, or an operator's redrive. Counts stay exact through dead letter → redrive → written.

use std::time::Duration;

use accrual_core::job_outcome;
use accrual_core::message::PointRecord;
use accrual_core::sqs::QueueOptions;
use accrual_testkit::{TestEnv, eventually};
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::helpers::{listener_settings, point, spawn_listener_on};
use crate::process::ListenerProcess;

/// Stores an `enqueued` job of `total` points, as the sender leaves it once its chunks are sent.
async fn store_job(pool: &MySqlPool, total: u32) -> Uuid {
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at) \
         VALUES (?, 'client_a', ?, ?, ?, 'enqueued', NOW(6))",
    )
    .bind(job_id)
    .bind(&[0u8; 32][..])
    .bind(total)
    .bind(total)
    .execute(pool)
    .await
    .unwrap();
    job_id
}

fn points_of(job_id: Uuid, n: usize) -> Vec<PointRecord> {
    (0..n)
        .map(|i| {
            let mut p = point(&format!("m{i}"), i as i64 + 1);
            p.job_id = job_id;
            p
        })
        .collect()
}

/// The stored status and counts of a job.
async fn stored(pool: &MySqlPool, job_id: Uuid) -> (String, Option<u32>, Option<u32>) {
    sqlx::query_as("SELECT status, written, dead_lettered FROM accrual_jobs WHERE job_id = ?")
        .bind(job_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A listener that dies on a message's last receive (SIGKILL while its batch waits for MySQL)
/// leaves it to SQS, which moves it to the DLQ with no reason attached. Its points were recorded
/// ahead on that receive, so the job still completes with errors, each with its reason.
#[tokio::test]
async fn points_sqs_moves_after_the_last_receive_are_counted_as_dead_lettered_with_a_reason() {
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 2,
    })
    .await;
    let job_id = store_job(&env.pool, 5).await;
    let points = points_of(job_id, 5);
    env.send_bodies(&points.iter().map(PointRecord::encode).collect::<Vec<_>>())
        .await;
    // A first consumer receives everything and dies (nothing deleted): receive count 1.
    let mut first = 0;
    while first < 5 {
        let out = env
            .client
            .receive_message()
            .queue_url(&env.queues.main)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        first += out.messages().len();
    }
    // The next one finds MySQL's ledger locked, and is killed while it waits.
    let mut locker = env.pool.acquire().await.unwrap();
    sqlx::query("LOCK TABLES point_accruals WRITE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let mut second = ListenerProcess::spawn(&env, &[]).await;
    eventually(
        Duration::from_secs(30),
        "the last receive recorded ahead",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM accrual_dead_letters WHERE counts_from IS NOT NULL",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap();
            n == 5
        },
    )
    .await;
    second.kill();
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *locker)
        .await
        .unwrap();
    drop(locker);
    // A healthy listener now: SQS moves the messages to the DLQ at its receives.
    let settings = listener_settings(&env);
    let pool = env.pool.clone();
    let dlq = env.queues.dlq.clone();
    let client = env.client.clone();
    let third = spawn_listener_on(env, settings).await;

    eventually(
        Duration::from_secs(60),
        "the job completed with errors",
        || async {
            job_outcome::settle(&pool, job_id).await.unwrap();
            stored(&pool, job_id).await.0 == "completed_with_errors"
        },
    )
    .await;
    assert_eq!(
        stored(&pool, job_id).await,
        ("completed_with_errors".into(), Some(0), Some(5))
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT reason FROM accrual_dead_letters WHERE job_id = ?")
            .bind(job_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        reasons,
        ["moved by SQS to the dead-letter queue after 2 receives"]
    );
    // SQS moves them at the first receive after their visibility timeout.
    eventually(
        Duration::from_secs(30),
        "five messages in the DLQ",
        || async {
            accrual_core::sqs::approximate_depth(&client, &dlq)
                .await
                .unwrap()
                == 5
        },
    )
    .await;
    assert_eq!(third.env.ledger_rows().await, 0);
    assert_eq!(third.metrics.written.get(), 0);
}

/// A point dead-lettered, then redriven and written, counts as written only; the finished job
/// becomes `completed` by itself. A dead letter whose point is in the ledger is never counted.
#[tokio::test]
async fn a_dead_letter_redriven_and_written_counts_as_written_and_the_job_completes() {
    let env = TestEnv::new().await;
    // A rule the database enforces and message validation does not know about.
    sqlx::query("ALTER TABLE point_accruals ADD CONSTRAINT no_m2 CHECK (member_id <> 'm2')")
        .execute(&env.pool)
        .await
        .unwrap();
    let job_id = store_job(&env.pool, 4).await;
    let points = points_of(job_id, 4);
    env.send_bodies(&points.iter().map(PointRecord::encode).collect::<Vec<_>>())
        .await;
    let settings = listener_settings(&env);
    let app = spawn_listener_on(env, settings).await;
    let pool = app.env.pool.clone();

    eventually(
        Duration::from_secs(30),
        "three written and one dead-lettered",
        || async { app.metrics.written.get() == 3 && app.metrics.dead_lettered.get() == 1 },
    )
    .await;
    job_outcome::settle(&pool, job_id).await.unwrap();
    assert_eq!(
        stored(&pool, job_id).await,
        ("completed_with_errors".into(), Some(3), Some(1))
    );

    // The operator fixes the cause and redrives.
    sqlx::query("ALTER TABLE point_accruals DROP CONSTRAINT no_m2")
        .execute(&pool)
        .await
        .unwrap();
    let moved = accrual_core::dlq::redrive(
        &app.env.client,
        &app.env.queues.dlq,
        &app.env.queues.main,
        10,
    )
    .await
    .unwrap();
    assert_eq!(moved.points, 1);

    eventually(
        Duration::from_secs(30),
        "the job completed by itself",
        || async { stored(&pool, job_id).await.0 == "completed" },
    )
    .await;
    assert_eq!(
        stored(&pool, job_id).await,
        ("completed".into(), Some(4), Some(0))
    );
    let outcome = job_outcome::count(&pool, job_id).await.unwrap();
    assert_eq!((outcome.written, outcome.dead_lettered), (4, 0));
    // The dead letter stays on record, but is not counted.
    let letters: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(letters, 1);
}

/// Writes `n` ledger rows of `job_id` directly, as listeners would have.
async fn write_rows(pool: &MySqlPool, job_id: Uuid, n: usize) {
    for i in 0..n {
        sqlx::query(
            "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
             VALUES (?, ?, ?, 'WELFARE', 1, NOW(6))",
        )
        .bind(Uuid::now_v7())
        .bind(job_id)
        .bind(format!("m{i}"))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// However many settlers race on a job's first settlement (sender replicas, a listener), exactly
/// one of them makes it (and observes its completion time); the others store nothing older.
#[tokio::test]
async fn eight_racing_settlers_make_exactly_one_first_settlement() {
    let env = TestEnv::new().await;
    for round in 0..5 {
        let job_id = store_job(&env.pool, 4).await;
        write_rows(&env.pool, job_id, 4).await;
        let settlers = (0..8).map(|_| job_outcome::settle(&env.pool, job_id));
        let settled: Vec<_> = futures_util::future::join_all(settlers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let firsts = settled
            .iter()
            .flatten()
            .filter(|s| s.first_took.is_some())
            .count();
        assert_eq!(firsts, 1, "round {round}: {settled:?}");
        assert_eq!(
            stored(&env.pool, job_id).await,
            ("completed".into(), Some(4), Some(0))
        );
    }
}

/// A listener re-settles a job only once it is finished; a running job's first settlement is the
/// completion task's.
#[tokio::test]
async fn settle_if_final_leaves_a_running_job_to_the_completion_task() {
    let env = TestEnv::new().await;
    let job_id = store_job(&env.pool, 2).await;
    write_rows(&env.pool, job_id, 2).await;
    assert_eq!(
        job_outcome::settle_if_final(&env.pool, job_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        stored(&env.pool, job_id).await,
        ("enqueued".into(), None, None)
    );
    let first = job_outcome::settle(&env.pool, job_id).await.unwrap();
    assert!(first.is_some_and(|s| s.first_took.is_some()), "{first:?}");
    // Finished now: a further change (a third row, as if a redriven dead letter of a bigger job
    // were written) is settled again, not as a first settlement.
    sqlx::query("UPDATE accrual_jobs SET total = 3 WHERE job_id = ?")
        .bind(job_id)
        .execute(&env.pool)
        .await
        .unwrap();
    write_rows(&env.pool, job_id, 1).await;
    let again = job_outcome::settle_if_final(&env.pool, job_id)
        .await
        .unwrap();
    assert!(again.is_some_and(|s| s.first_took.is_none()), "{again:?}");
    assert_eq!(
        stored(&env.pool, job_id).await,
        ("completed".into(), Some(3), Some(0))
    );
}

/// A reversal job that ends `completed_with_errors` has its own status event, and the job it
/// reverses gets no `job.reversed`: not every point was taken back. Once the reversal becomes
/// `completed` (its dead letter redriven and written), the original gets its `job.reversed`.
#[tokio::test]
async fn job_reversed_is_sent_only_once_the_reversal_completes_without_errors() {
    let env = TestEnv::new().await;
    let pool = &env.pool;
    sqlx::query(
        "INSERT INTO webhook_endpoints (client_id, url, secret) \
         VALUES ('client_a', 'http://127.0.0.1:9/', 'whsec_test')",
    )
    .execute(pool)
    .await
    .unwrap();
    let original = store_job(pool, 2).await;
    let reversal = store_job(pool, 2).await;
    sqlx::query("UPDATE accrual_jobs SET reverses = ? WHERE job_id = ?")
        .bind(original)
        .bind(reversal)
        .execute(pool)
        .await
        .unwrap();
    let events = |job_id: Uuid| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT event FROM webhook_events WHERE job_id = ? ORDER BY created_at, event",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await
        .unwrap()
    };
    // One compensating point written, one dead-lettered.
    write_rows(pool, reversal, 1).await;
    let dead = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason) VALUES (?, ?, 'test')",
    )
    .bind(dead)
    .bind(reversal)
    .execute(pool)
    .await
    .unwrap();
    job_outcome::settle(pool, reversal).await.unwrap();
    assert_eq!(stored(pool, reversal).await.0, "completed_with_errors");
    assert_eq!(events(reversal).await, ["job.completed_with_errors"]);
    assert!(
        events(original).await.is_empty(),
        "{:?}",
        events(original).await
    );

    // Redriven and written: the reversal is complete, and the original is reversed.
    sqlx::query(
        "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
         VALUES (?, ?, 'm9', 'WELFARE', -1, NOW(6))",
    )
    .bind(dead)
    .bind(reversal)
    .execute(pool)
    .await
    .unwrap();
    job_outcome::settle(pool, reversal).await.unwrap();
    assert_eq!(stored(pool, reversal).await.0, "completed");
    assert_eq!(
        events(reversal).await,
        ["job.completed_with_errors", "job.completed"]
    );
    assert_eq!(events(original).await, ["job.reversed"]);
}
