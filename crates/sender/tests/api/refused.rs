//! No chunk loops forever: a point SQS refuses for good is dead-lettered alone with SQS's reason,
//! the rest of its chunk goes on, and the job finishes `completed_with_errors`.
//!
//! The API no longer accepts such a point, so the test stores the job directly (the path a job
//! accepted by an older version, or a future SQS rule, would take).

use std::time::Duration;

use accrual_core::accrual::Accrual;
use accrual_core::domain::{Amount, MemberId, PointType, Reason};
use accrual_core::message::PointRecord;
use accrual_core::{chunk, dead_letter};
use accrual_sender::store::jobs::{self, NewJob};
use accrual_testkit::eventually;
use chrono::{SubsecRound, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::spawn_app_with;

const POINTS: usize = 30;
const BAD: usize = 7;

/// Stores a 30-point job for client_a whose point `bad` (from 0) carries U+FFFF, which SQS refuses
/// in a message body; returns the job id and the bad point's accrual id.
async fn store_job_with_a_point_sqs_refuses(pool: &sqlx::MySqlPool, bad: usize) -> (Uuid, Uuid) {
    let job_id = Uuid::now_v7();
    let now = Utc::now().trunc_subsecs(6);
    let records: Vec<PointRecord> = (0..POINTS)
        .map(|i| PointRecord {
            accrual_id: Uuid::now_v7(),
            job_id,
            accrual: Accrual {
                member_id: MemberId::try_from(format!("m{i}")).unwrap(),
                point_type: PointType::try_from("WELFARE").unwrap(),
                amount: Amount::try_from(i as i64 + 1).unwrap(),
                reason: Some(Reason::try_from("MARK").unwrap()),
                expires_at: None,
                external_id: None,
            },
            accepted_at: now,
            reverses: None,
        })
        .collect();
    let mut bodies: Vec<String> = records.iter().map(PointRecord::encode).collect();
    bodies[bad] = bodies[bad].replace("MARK", "\u{FFFF}");
    assert!(bodies[bad].contains('\u{FFFF}'));
    let job = NewJob {
        job_id,
        client_id: "client_a".into(),
        idempotency_key: None,
        body_sha256: [0; 32],
        total: POINTS,
        members: POINTS,
        reserve_at: None,
        created_at: now,
        label: None,
        chunks: vec![(chunk::encode_bodies(&bodies), POINTS)],
        external_ids: Vec::new(),
        skips: Vec::new(),
        reserved_amounts: Vec::new(),
    };
    jobs::insert(pool, &job).await.unwrap();
    (job_id, records[bad].accrual_id)
}

async fn a_point_sqs_refuses_is_dead_lettered_alone(per_message: u32, bad: usize) {
    let app = spawn_app_with(|s| s.dispatch.points_per_message = per_message).await;
    let listener = app.spawn_listener().await;
    let (job_id, bad) = store_job_with_a_point_sqs_refuses(&app.env.pool, bad).await;

    let job_id = job_id.to_string();
    let job = || app.job_view(&job_id);
    eventually(
        Duration::from_secs(60),
        "the job completed with errors",
        || async { job().await["status"] == "completed_with_errors" },
    )
    .await;
    let view = job().await;
    assert_eq!(
        (
            view["written"].as_u64(),
            view["dead_lettered"].as_u64(),
            view["enqueued"].as_u64()
        ),
        (Some(POINTS as u64 - 1), Some(1), Some(POINTS as u64)),
        "{view}"
    );

    // The ledger holds every other point once, and not the refused one.
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT accrual_id) FROM point_accruals")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (POINTS as i64 - 1, POINTS as i64 - 1));
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM accrual_dead_letters WHERE accrual_id = ?")
            .bind(bad)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert!(reason.starts_with("SQS refused the message"), "{reason}");

    // On the dead-letter queue, with SQS's reason, in characters SQS carries.
    let letters = app.env.receive_dead_letters().await;
    assert_eq!(letters.len(), 1);
    let body = letters[0].body().unwrap();
    assert_eq!(dead_letter::PointIds::of(body).unwrap().accrual_id, bad);
    let letter: Value = serde_json::from_str(body).unwrap();
    assert_eq!(letter["reason"], "\u{FFFF}", "the same JSON value, escaped");
    assert!(
        letters[0].message_attributes().unwrap()[accrual_core::sqs::ATTR_REASON]
            .string_value()
            .unwrap()
            .starts_with("SQS refused the message")
    );

    // Sent once: the chunk was not re-claimed and nothing reached the listener twice. The
    // dispatcher counts a chunk just after marking it dispatched; the job may settle first.
    let counted = [
        "accrual_sender_chunks_dispatched_total 1\n".to_owned(),
        format!("accrual_sender_points_dispatched_total {}\n", POINTS - 1),
        "accrual_sender_points_refused_total 1\n".to_owned(),
    ];
    eventually(Duration::from_secs(10), "the dispatch counted", || async {
        let metrics = app.metrics().await;
        counted.iter().all(|line| metrics.contains(line))
    })
    .await;
    eventually(Duration::from_secs(10), "every point counted", || async {
        listener.written.get() + listener.duplicates.get() == listener.points_received.get()
    })
    .await;
    assert_eq!(listener.points_received.get(), POINTS as u64 - 1);
    assert_eq!(listener.duplicates.get(), 0);
}

#[tokio::test]
async fn a_point_sqs_refuses_is_dead_lettered_alone_and_the_job_completes_with_errors() {
    a_point_sqs_refuses_is_dead_lettered_alone(1, BAD).await;
}

#[tokio::test]
async fn a_packed_message_sqs_refuses_is_sent_again_point_by_point_and_only_the_bad_one_is_dead_lettered()
 {
    a_point_sqs_refuses_is_dead_lettered_alone(10, BAD).await;
}

/// 29 points per message make the chunk's 30th point a packed message of its own: refused, it is
/// unpacked like any packed body (a v1 body names the point its dead letter is recorded for), so
/// the chunk does not go round for ever.
#[tokio::test]
async fn a_packed_message_of_one_point_sqs_refuses_is_dead_lettered_as_that_point() {
    a_point_sqs_refuses_is_dead_lettered_alone(29, POINTS - 1).await;
}
