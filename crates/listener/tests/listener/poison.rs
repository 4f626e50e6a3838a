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
