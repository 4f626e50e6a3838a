//! Nothing waits forever on a dependency: MySQL statements and lock waits have a limit, and a
//! listener whose SQS is black-holed gets errors (and backs off) instead of hanging.

use std::time::{Duration, Instant};

use accrual_core::db;
use accrual_testkit::proxy::TcpProxy;
use accrual_testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

use crate::helpers::listener_settings;

#[tokio::test]
async fn a_statement_waiting_on_a_lock_fails_after_the_statement_timeout() {
    let env = TestEnv::new().await;
    let mut settings = env.database.clone();
    settings.database_statement_timeout = Duration::from_secs(1);
    let pool = db::connect(&settings).await.unwrap();
    let mut locker = env.pool.acquire().await.unwrap();
    sqlx::query("LOCK TABLES point_accruals WRITE")
        .execute(&mut *locker)
        .await
        .unwrap();

    let started = Instant::now();
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        sqlx::query("INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
                     VALUES (UNHEX(REPEAT('11', 16)), UNHEX(REPEAT('22', 16)), 'm', 'P', 1, NOW(6))")
            .execute(&pool),
    )
    .await;

    let result = waited.expect("the statement gave up by itself");
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *locker)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_listener_whose_sqs_is_black_holed_gets_errors_and_stops_promptly() {
    let env = TestEnv::new().await;
    let proxy = TcpProxy::start(env.sqs_addr()).await;
    let mut settings = listener_settings(&env);
    settings.sqs.aws_endpoint_url = format!("http://127.0.0.1:{}", proxy.port);
    settings.sqs.sqs_attempt_timeout = Duration::from_secs(1);
    settings.sqs.sqs_operation_timeout = Duration::from_secs(3);
    let listener = accrual_listener::Listener::build(settings).await.unwrap();
    let metrics = listener.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(listener.run(shutdown.clone()));
    proxy.stall();

    eventually(
        Duration::from_secs(20),
        "receives failing instead of hanging",
        || async { metrics.receive_errors.get() >= 2 },
    )
    .await;
    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the listener stopped")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
