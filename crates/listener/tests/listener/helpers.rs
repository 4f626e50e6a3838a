use std::sync::Arc;
use std::time::Duration;

use accrual_core::accrual::Accrual;
use accrual_core::domain::{Amount, MemberId, PointType};
use accrual_core::message::PointRecord;
use accrual_listener::metrics::ListenerMetrics;
use accrual_listener::{Listener, ListenerSettings};
use accrual_testkit::TestEnv;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A running listener on fresh queues and a fresh database.
pub struct TestListener {
    pub env: TestEnv,
    pub metrics: Arc<ListenerMetrics>,
    shutdown: CancellationToken,
}

pub async fn spawn_listener() -> TestListener {
    accrual_core::telemetry::init();
    let env = TestEnv::new().await;
    let settings = listener_settings(&env);
    spawn_listener_on(env, settings).await
}

/// Settings for a quick test listener on `env`: 2 receivers, 1 s polls, batches of 64.
pub fn listener_settings(env: &TestEnv) -> ListenerSettings {
    ListenerSettings {
        listener_addr: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_secs: 5,
        queue_attributes_refresh: std::time::Duration::from_secs(60),
        receive_tasks: 2,
        receive_wait_secs: 1,
        batch_max_rows: 64,
        batch_linger: Duration::from_millis(50),
        database: env.database.clone(),
        sqs: env.sqs.clone(),
        redis: env.redis.clone(),
    }
}

/// Starts a listener with `settings` in this process.
pub async fn spawn_listener_on(env: TestEnv, settings: ListenerSettings) -> TestListener {
    accrual_core::telemetry::init();
    let listener = Listener::build(settings).await.unwrap();
    let metrics = listener.metrics();
    let shutdown = CancellationToken::new();
    tokio::spawn(listener.run(shutdown.clone()));
    TestListener {
        env,
        metrics,
        shutdown,
    }
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A valid point of `amount` for `member`.
pub fn point(member: &str, amount: i64) -> PointRecord {
    PointRecord {
        accrual_id: Uuid::now_v7(),
        job_id: Uuid::now_v7(),
        accrual: Accrual {
            member_id: MemberId::try_from(member.to_owned()).unwrap(),
            point_type: PointType::try_from("WELFARE".to_owned()).unwrap(),
            amount: Amount::try_from(amount).unwrap(),
            reason: None,
            expires_at: None,
            external_id: None,
        },
        accepted_at: Utc::now(),
        reverses: None,
    }
}
