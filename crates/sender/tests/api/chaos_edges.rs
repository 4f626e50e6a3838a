//! The chaos drill's second part (issue 24 §7): faults that no single edge handler covers, where
//! only the reconciler stands between a `202` and a job that never finishes.
//!
//! One 500-point job on a queue with a 2 s visibility timeout and 2 receives, while:
//! - one in-flight message is deleted behind the pipeline's back (as if SQS lost it);
//! - messages are on their last receive in a listener process when MySQL is locked (the
//!   dead-letter table under `LOCK TABLES … WRITE`, so neither their record-ahead nor any write
//!   commits), and that listener is SIGTERMed: it cannot record them, cannot write them, and SQS
//!   moves them to the dead-letter queue uncounted.
//!
//! Then MySQL is unlocked and a new listener drains the rest. The job must still end by itself,
//! exactly and counted: every point written once or dead-lettered with its reason, never both,
//! the point deleted in flight re-sent by the reconciler and written once.

use std::process::{Command, Stdio};
use std::time::Duration;

use accrual_core::sqs::QueueOptions;
use accrual_testkit::process::{ServiceProcess, free_port, metric};
use accrual_testkit::{TestEnv, eventually};
use serde_json::Value;
use sqlx::{Connection, Executor};
use uuid::Uuid;

use crate::chaos::listener_binary;
use crate::helpers::{DEV_KEYS, TestApp, item, spawn_app_in};

const POINTS: usize = 500;

async fn listener_process(env: &TestEnv, log: &std::path::Path) -> ServiceProcess {
    let port = free_port();
    let mut command = Command::new(listener_binary());
    command
        .envs(env.service_env())
        .env("LISTENER_ADDR", format!("127.0.0.1:{port}"))
        .env("RECEIVE_TASKS", "2")
        .env("BATCH_MAX_ROWS", "16")
        .env("RECEIVE_WAIT_SECS", "1")
        .env("SHUTDOWN_GRACE_SECS", "3")
        .env("DATABASE_STATEMENT_TIMEOUT", "60s")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ServiceProcess::start(command, port).await
}

async fn scrape(app: &TestApp, base: &str, name: &str) -> f64 {
    metric(&app.metrics_at(base).await, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ends_exactly_after_a_lost_in_flight_message_and_a_listener_sigtermed_on_last_receives_while_mysql_is_locked()
 {
    let logs =
        std::env::temp_dir().join(format!("accrual-chaos-edges-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&logs).unwrap();
    println!("process logs in {}", logs.display());
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 2,
        visibility_timeout_secs: 2,
    })
    .await;
    let app = spawn_app_in(env, &[], |s| {
        s.keys.accrual_api_keys = DEV_KEYS.into();
        s.reconciler.reconcile_interval = Duration::from_millis(500);
        s.reconciler.reconcile_quiet_floor = Duration::from_secs(1);
    })
    .await;
    let env = &app.env;
    let items: Vec<String> = (0..POINTS)
        .map(|i| item(&format!("m{}", i % 100), "P", 1 + (i % 7) as i64))
        .collect();
    let job = app.post(format!("[{}]", items.join(","))).job_id().await;
    let job_id: Uuid = job.parse().unwrap();
    eventually(Duration::from_secs(60), "the job on the queue", || async {
        env.depth(&env.queues.main).await >= POINTS as u64
    })
    .await;

    // (1) One in-flight message deleted behind the pipeline's back; (2) every other one received
    // once and let go, so that its next receive is its last.
    let mut lost = None;
    let mut seen = 0;
    while seen < POINTS {
        let out = env
            .client
            .receive_message()
            .queue_url(&env.queues.main)
            .max_number_of_messages(10)
            .visibility_timeout(10)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            seen += 1;
            if lost.is_none() {
                env.client
                    .delete_message()
                    .queue_url(&env.queues.main)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                lost = Some(m.body.unwrap());
            }
        }
    }
    println!(
        "(1) one message deleted in flight; (2) the other {} received once",
        seen - 1
    );

    // MySQL locked: no write, no dead letter and no record-ahead commits.
    let mut locker = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    locker
        .execute("LOCK TABLES accrual_dead_letters WRITE, point_accruals WRITE")
        .await
        .unwrap();
    // They come back after their 10 s, to a listener that receives some for the last time and
    // holds them, unable to record or write anything.
    let mut doomed = listener_process(env, &logs.join("listener-sigtermed.log")).await;
    let doomed_url = format!("http://127.0.0.1:{}", doomed.port);
    eventually(
        Duration::from_secs(60),
        "the listener to hold messages",
        || async { scrape(&app, &doomed_url, "accrual_listener_messages_in_flight").await > 0.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, took) = doomed.terminate().await;
    println!("(2) listener SIGTERMed while MySQL was locked: {status:?} after {took:?}");
    locker.execute("UNLOCK TABLES").await.unwrap();
    drop(locker);

    // A new listener drains the rest; the reconciler must find what was lost.
    let _survivor = listener_process(env, &logs.join("listener-survivor.log")).await;
    let view: Value = {
        let view = std::sync::Mutex::new(Value::Null);
        eventually(
            Duration::from_secs(240),
            "the job to reach a final status",
            || async {
                let v = app.job_view(&job).await;
                let done = v["status"] == "completed" || v["status"] == "completed_with_errors";
                *view.lock().unwrap() = v;
                done
            },
        )
        .await;
        view.into_inner().unwrap()
    };
    println!("job settled: {view}");
    // Exactly, and counted: every point written once or dead-lettered with a reason, never both.
    // The messages on their last receive end one of two ways, both exact: their record-ahead
    // committed after all (its statement was waiting for the lock when the listener went), so
    // they count as dead letters moved by SQS; or nothing of them reached MySQL, and the
    // reconciler re-sent them.
    let (written, dead) = (
        view["written"].as_i64().unwrap(),
        view["dead_lettered"].as_i64().unwrap(),
    );
    assert_eq!(written + dead, POINTS as i64, "{view}");
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT accrual_id) FROM point_accruals WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (written, written));
    let (letters, with_reason, also_written): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(NULLIF(d.reason, '')), \
           CAST(COALESCE(SUM(EXISTS (SELECT 1 FROM point_accruals p WHERE p.accrual_id = d.accrual_id)), 0) AS SIGNED) \
         FROM accrual_dead_letters d WHERE d.job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        letters - also_written,
        dead,
        "every counted dead letter is on record"
    );
    assert_eq!(with_reason, letters, "every dead letter has its reason");
    if dead > 0 {
        assert_eq!(view["status"], "completed_with_errors", "{view}");
    } else {
        assert_eq!(view["status"], "completed", "{view}");
    }
    assert!(
        view["reconciler"]["points_resent"].as_u64().unwrap() >= 1,
        "the lost message's point was re-sent: {view}"
    );
    let lost: Value = serde_json::from_str(&lost.unwrap()).unwrap();
    let lost_id: Uuid = lost["accrual_id"].as_str().unwrap().parse().unwrap();
    let lost_written: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE accrual_id = ?")
            .bind(lost_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        lost_written, 1,
        "the point deleted in flight is in the ledger once"
    );
    assert!(
        env.depth(&env.queues.dlq).await >= 1,
        "SQS moved the messages the SIGTERMed listener held on their last receive"
    );
}
