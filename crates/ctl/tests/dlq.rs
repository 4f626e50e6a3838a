//! `accrualctl dlq list` and `accrualctl dlq redrive` against poison that a real listener
//! dead-lettered from among 10,000 good points.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use accrual_core::accrual::Accrual;
use accrual_core::domain::{Amount, MemberId, PointType};
use accrual_core::message::PointRecord;
use accrual_listener::{Listener, ListenerSettings};
use accrual_testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn point(i: usize) -> PointRecord {
    PointRecord {
        accrual_id: Uuid::now_v7(),
        job_id: Uuid::now_v7(),
        accrual: Accrual {
            member_id: MemberId::try_from(format!("member-{}", i % 2_000)).unwrap(),
            point_type: PointType::try_from("WELFARE".to_owned()).unwrap(),
            amount: Amount::try_from(1 + (i % 10) as i64).unwrap(),
            reason: None,
            expires_at: None,
            external_id: None,
        },
        accepted_at: chrono::Utc::now(),
        reverses: None,
    }
}

/// `accrualctl <args>` against the test's queues; returns stdout.
fn accrualctl(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .args(args)
        .envs(env.service_env())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "accrualctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn poison_among_10000_good_points_is_dead_lettered_with_reasons_and_redriven_by_accrualctl() {
    accrual_core::telemetry::init();
    let env = TestEnv::new().await;
    let good: Vec<String> = (0..10_000).map(|i| point(i).encode()).collect();
    let template: serde_json::Value = serde_json::from_str(&point(0).encode()).unwrap();
    let mut without_id = template.clone();
    without_id.as_object_mut().unwrap().remove("accrual_id");
    let mut negative = template.clone();
    negative["amount"] = (-5).into();
    let mut long_member = template;
    long_member["member_id"] = "m".repeat(300).into();
    let poison = [
        "this is not JSON".to_owned(),
        without_id.to_string(),
        negative.to_string(),
        long_member.to_string(),
    ];
    let mut bodies = good.clone();
    for (i, p) in poison.iter().enumerate() {
        bodies.insert(1_000 + i * 2_500, p.clone());
    }
    env.send_bodies(&bodies).await;

    let listener = Listener::build(ListenerSettings {
        listener_addr: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_secs: 5,
        queue_attributes_refresh: std::time::Duration::from_secs(60),
        receive_tasks: 4,
        receive_wait_secs: 1,
        batch_max_rows: 256,
        batch_linger: Duration::from_millis(100),
        database: env.database.clone(),
        sqs: env.sqs.clone(),
        redis: env.redis.clone(),
    })
    .await
    .unwrap();
    let metrics = listener.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(listener.run(shutdown.clone()));
    eventually(
        Duration::from_secs(300),
        "the good points written and the poison dead-lettered",
        || async { metrics.written.get() == 10_000 && metrics.dead_lettered.get() == 4 },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(env.ledger_rows().await, 10_000);

    let listed: Vec<serde_json::Value> = accrualctl(&env, &["dlq", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    let reason_of = |body: &str| {
        let letter = listed
            .iter()
            .find(|l| l["body"] == body)
            .unwrap_or_else(|| panic!("{body} not in the DLQ: {listed:?}"));
        assert_eq!(letter["source_queue"], env.sqs.accrual_queue.as_str());
        letter["reason"].as_str().unwrap().to_owned()
    };
    assert!(reason_of(&poison[0]).starts_with("body is not a valid accrual message"));
    assert!(
        reason_of(&poison[1]).contains("accrual_id"),
        "{}",
        reason_of(&poison[1])
    );
    assert_eq!(
        reason_of(&poison[2]),
        "field `amount` must be an integer from 1 to 1000000000"
    );
    assert!(
        reason_of(&poison[3]).contains("member_id"),
        "{}",
        reason_of(&poison[3])
    );

    let redriven: serde_json::Value =
        serde_json::from_str(accrualctl(&env, &["dlq", "redrive"]).trim()).unwrap();

    assert_eq!(redriven["redriven"], 4);
    assert_eq!(env.depth(&env.queues.dlq).await, 0);
    assert_eq!(env.depth(&env.queues.main).await, 4);
}

#[tokio::test]
async fn a_packed_message_in_the_dlq_is_listed_and_redriven_as_its_points() {
    accrual_core::telemetry::init();
    let env = TestEnv::new().await;
    // As SQS leaves it after too many receives: a whole packed message of 25 points.
    let bodies = (0..25).map(|i| point(i).encode()).collect();
    let packed = accrual_core::message::pack(bodies, 25, 256 * 1024).unwrap();
    assert_eq!(packed.len(), 1);
    env.client
        .send_message()
        .queue_url(&env.queues.dlq)
        .message_body(&packed[0])
        .send()
        .await
        .unwrap();
    env.client
        .send_message()
        .queue_url(&env.queues.dlq)
        .message_body(point(99).encode())
        .send()
        .await
        .unwrap();

    let listed: Vec<serde_json::Value> = accrualctl(&env, &["dlq", "list"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut points: Vec<u64> = listed
        .iter()
        .map(|l| l["points"].as_u64().unwrap())
        .collect();
    points.sort_unstable();
    assert_eq!(points, [1, 25]);

    let redriven: serde_json::Value =
        serde_json::from_str(accrualctl(&env, &["dlq", "redrive"]).trim()).unwrap();
    assert_eq!(
        (redriven["redriven"].as_u64(), redriven["messages"].as_u64()),
        (Some(26), Some(2))
    );
    assert_eq!(env.depth(&env.queues.main).await, 2);
}
