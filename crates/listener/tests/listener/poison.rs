//! Messages that cannot become a ledger row go to the dead-letter queue at once, with the reason.

use std::collections::HashMap;
use std::time::Duration;

use accrual_core::dlq;
use accrual_core::sqs::{ATTR_REASON, ATTR_SOURCE_QUEUE};
use accrual_testkit::eventually;

use crate::helpers::{point, spawn_listener};

#[tokio::test]
async fn undecodable_messages_go_to_the_dlq_with_their_reason_and_good_ones_are_written() {
    let app = spawn_listener().await;
    let good = point("member-1", 10).encode();
    let negative = good.replace(r#""amount":10"#, r#""amount":-5"#);
    let poison = ["not json at all", negative.as_str()];
    for body in poison {
        app.env.send_raw(body).await;
    }
    for i in 0..20 {
        app.env.send_raw(&point(&format!("m{i}"), 1).encode()).await;
    }

    eventually(
        Duration::from_secs(30),
        "good points written and poison dead-lettered",
        || async { app.metrics.written.get() == 20 && app.metrics.dead_lettered.get() == 2 },
    )
    .await;
    assert_eq!(app.env.ledger_rows().await, 20);

    let mut reasons = HashMap::new();
    for m in app.env.receive_dead_letters().await {
        let attrs = m.message_attributes().unwrap();
        let reason = attrs[ATTR_REASON].string_value().unwrap().to_owned();
        assert_eq!(
            attrs[ATTR_SOURCE_QUEUE].string_value(),
            Some(app.env.sqs.accrual_queue.as_str())
        );
        reasons.insert(m.body().unwrap().to_owned(), reason);
    }
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons["not json at all"].starts_with("body is not a valid accrual message"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[&negative],
        "field `amount` must be an integer from 1 to 1000000000"
    );
}

#[tokio::test]
async fn dead_letters_can_be_listed_with_their_reason_and_redriven_to_the_main_queue() {
    let app = spawn_listener().await;
    let negative = point("member-1", 10)
        .encode()
        .replace(r#""amount":10"#, r#""amount":-5"#);
    app.env.send_raw("{not json").await;
    app.env.send_raw(&negative).await;
    eventually(
        Duration::from_secs(30),
        "both poison messages dead-lettered",
        || async { app.metrics.dead_lettered.get() == 2 },
    )
    .await;

    let letters = dlq::list(&app.env.client, &app.env.queues.dlq, 10)
        .await
        .unwrap();

    assert_eq!(letters.len(), 2);
    let reason_of = |body: &str| {
        letters
            .iter()
            .find(|l| l.body == body)
            .and_then(|l| l.reason.clone())
            .unwrap()
    };
    assert!(reason_of("{not json").starts_with("body is not a valid accrual message"));
    assert_eq!(
        reason_of(&negative),
        "field `amount` must be an integer from 1 to 1000000000"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.source_queue.as_deref() == Some(app.env.sqs.accrual_queue.as_str()))
    );
    // Listing leaves them in place.
    assert_eq!(
        dlq::list(&app.env.client, &app.env.queues.dlq, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    let moved = dlq::redrive(
        &app.env.client,
        &app.env.queues.dlq,
        &app.env.queues.main,
        10,
    )
    .await
    .unwrap();

    assert_eq!((moved.messages, moved.points), (2, 2));
    // Back on the main queue, the listener receives them again; still poison, they return.
    eventually(
        Duration::from_secs(30),
        "the redriven messages received again",
        || async { app.metrics.dead_lettered.get() == 4 },
    )
    .await;
    let dlq_url = app.env.queues.dlq.clone();
    eventually(
        Duration::from_secs(10),
        "two dead letters again",
        || async { app.env.depth(&dlq_url).await == 2 },
    )
    .await;
}

/// Why the ledger once held `0000-00-00` or NULL for an accepted `expires_at`: sqlx binds a
/// `DateTime<Utc>` as a `TIMESTAMP` parameter, and MariaDB stores a `TIMESTAMP` it cannot hold
/// (any instant after 2038-01-19, as well as year 10000 or a leap second) as NULL or a zero date
/// without an error, even with `STRICT_TRANS_TABLES` in the session. Bound as a `NaiveDateTime`
/// (a `DATETIME` parameter) the same instants are stored exactly. This test pins the behaviour
/// the ledger's binding and the validation of `DATETIME(6)` ranges depend on.
#[tokio::test]
async fn a_datetime_bound_as_timestamp_is_stored_as_null_past_2038_and_as_datetime_exactly() {
    let env = accrual_testkit::TestEnv::new().await;
    let mode: String = sqlx::query_scalar("SELECT @@SESSION.sql_mode")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(mode.contains("STRICT_TRANS_TABLES"), "{mode}");
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let mut conn = env.pool.acquire().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE t (n INT, at DATETIME(6) NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let cases = [
        (1, at("2100-01-01T00:00:00Z")),
        (2, at("9999-12-31T23:59:59-23:59")),
        (3, at("2999-06-30T23:59:60Z")),
    ];
    for (n, at) in cases {
        let stored = sqlx::query("INSERT INTO t VALUES (?, ?)")
            .bind(n)
            .bind(at)
            .execute(&mut *conn)
            .await;
        assert!(stored.is_ok(), "{at:?}: {stored:?}");
    }
    sqlx::query("INSERT INTO t VALUES (4, ?)")
        .bind(at("2100-01-01T00:00:00.000001Z").naive_utc())
        .execute(&mut *conn)
        .await
        .unwrap();
    let rows: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT n, CAST(at AS CHAR) FROM t ORDER BY n")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let shown: Vec<(i32, Option<&str>)> = rows.iter().map(|(n, s)| (*n, s.as_deref())).collect();
    assert_eq!(
        shown,
        [
            (1, None),
            (2, Some("0000-00-00 00:00:00.000000")),
            (3, Some("0000-00-00 00:00:00.000000")),
            (4, Some("2100-01-01 00:00:00.000001")),
        ]
    );
}

/// The listener applies the sender's rules to what it receives: a value the ledger's columns
/// cannot hold exactly is dead-lettered with the field at fault, never stored changed; the
/// extreme values they can hold are stored exactly.
#[tokio::test]
async fn the_listener_refuses_instants_the_ledger_cannot_hold_and_stores_edge_values_exactly() {
    let app = spawn_listener().await;
    let mut edge = point(&"m".repeat(64), 1_000_000_000);
    edge.accrual.point_type =
        accrual_core::domain::PointType::try_from("P".repeat(32).as_str()).unwrap();
    edge.accrual.reason =
        Some(accrual_core::domain::Reason::try_from("🎉".repeat(255).as_str()).unwrap());
    edge.accrual.expires_at = Some(
        chrono::DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    );
    let template = point("member-1", 10);
    let with_expiry = |at: &str| {
        template
            .encode()
            .replace(r#""expires_at":null"#, &format!(r#""expires_at":"{at}""#))
    };
    let year_10000 = with_expiry("9999-12-31T23:59:59-23:59");
    let leap = with_expiry("2999-06-30T23:59:60Z");
    let nanos = with_expiry("2999-01-01T00:00:00.123456789Z");
    for body in [&year_10000, &leap, &nanos, &edge.encode()] {
        app.env.send_raw(body).await;
    }

    eventually(
        Duration::from_secs(30),
        "one written and three dead-lettered",
        || async { app.metrics.written.get() == 1 && app.metrics.dead_lettered.get() == 3 },
    )
    .await;
    let stored: (String, String, i64, String, String) = sqlx::query_as(
        "SELECT member_id, point_type, amount, reason, CAST(expires_at AS CHAR) FROM point_accruals",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        (
            "m".repeat(64),
            "P".repeat(32),
            1_000_000_000,
            "🎉".repeat(255),
            "9999-12-31 23:59:59.999999".to_owned()
        )
    );
    let mut reasons = Vec::new();
    for _ in 0..5 {
        for m in app.env.receive_dead_letters().await {
            reasons.push(
                m.message_attributes().unwrap()[ATTR_REASON]
                    .string_value()
                    .unwrap()
                    .to_owned(),
            );
        }
        if reasons.len() == 3 {
            break;
        }
    }
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("field `expires_at`")),
        "{reasons:?}"
    );
}
