//! The SQS semantics the pipeline relies on, pinned on each emulator the suite runs on: LocalStack
//! (the default and the reference) and fauxqs (`SQS_EMULATOR=fauxqs`). Where the two differ, each
//! test says what each does, so a change in either shows up here first (README, "Two SQS
//! emulators").

use std::time::{Duration, Instant};

use accrual_core::sqs::{self, QueueOptions};
use accrual_listener::queue::Queue;
use accrual_testkit::{Emulator, TestEnv, eventually};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use prometheus_client::metrics::counter::Counter;

/// A fresh env with `max_receive_count` and `visibility_timeout_secs`.
async fn env_with(max_receive_count: u32, visibility_timeout_secs: u32) -> TestEnv {
    TestEnv::with_queue_options(QueueOptions {
        max_receive_count,
        visibility_timeout_secs,
    })
    .await
}

/// The listener's queue handle on `env`'s queues.
fn queue_of(env: &TestEnv) -> Queue {
    Queue {
        client: env.client.clone(),
        main_url: env.queues.main.clone(),
        dlq_url: env.queues.dlq.clone(),
        main_name: env.sqs.accrual_queue.clone(),
        delete_calls: Counter::default(),
    }
}

/// One receive from `url` (wait `wait_secs`) with the receive count and every message attribute.
async fn receive(env: &TestEnv, url: &str, wait_secs: i32) -> Vec<Message> {
    env.client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

/// Receives from the main queue until `n` messages came back; panics after 30 s.
async fn receive_n(env: &TestEnv, n: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} received", got.len());
        got.extend(receive(env, &env.queues.main, 1).await);
    }
    got
}

fn receive_count(m: &Message) -> u32 {
    m.attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount]
        .parse()
        .unwrap()
}

fn error_code<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .unwrap_or("no service error")
        .to_owned()
}

/// What SQS refuses in a body, both refuse (our dispatcher dead-letters such a point and
/// `dead_letter::sqs_safe` escapes it). Characters outside the Basic Multilingual Plane (U+10000 to
/// U+10FFFF) SQS and LocalStack carry exactly; fauxqs 2.4.1 refuses them (it checks the body
/// UTF-16 unit by unit), in a body, not in a message attribute. On fauxqs the dispatcher would
/// refuse such a point and could not dead-letter it either, and the listener's poison test with a
/// 255-emoji `reason` cannot send its body (scripts/fauxqs/skip-tests).
#[tokio::test]
async fn characters_sqs_refuses_are_refused_by_both_and_only_fauxqs_refuses_emoji() {
    let env = TestEnv::new().await;
    let emulator = Emulator::of(&env).await;
    let c = &env.client;
    let main = &env.queues.main;

    let refused = c
        .send_message()
        .queue_url(main)
        .message_body("a\u{FFFF}")
        .send()
        .await
        .unwrap_err();
    assert!(error_code(&refused).ends_with("InvalidMessageContents"));
    let batch = c
        .send_message_batch()
        .queue_url(main)
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("ffff")
                .message_body("a\u{FFFF}")
                .build()
                .unwrap(),
        )
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("emoji")
                .message_body("🎉 𝄞")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let failed = |id: &str| batch.failed().iter().find(|f| f.id() == id);
    let ffff = failed("ffff").unwrap();
    assert_eq!(ffff.code(), "InvalidMessageContents");
    // The dispatcher goes by the code: LocalStack does not call this the sender's fault.
    assert_eq!(ffff.sender_fault(), emulator == Emulator::Fauxqs);

    let with_attribute = c
        .send_message()
        .queue_url(main)
        .message_body("🎉")
        .message_attributes(
            "reason",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("🎉 in an attribute")
                .build()
                .unwrap(),
        )
        .send()
        .await;
    match emulator {
        Emulator::LocalStack => {
            assert!(failed("emoji").is_none(), "{:?}", batch.failed());
            with_attribute.unwrap();
            let mut bodies: Vec<String> = receive_n(&env, 2)
                .await
                .iter()
                .map(|m| m.body().unwrap().to_owned())
                .collect();
            bodies.sort();
            assert_eq!(bodies, ["🎉", "🎉 𝄞"]);
        }
        Emulator::Fauxqs => {
            assert_eq!(failed("emoji").unwrap().code(), "InvalidMessageContents");
            assert!(error_code(&with_attribute.unwrap_err()).ends_with("InvalidMessageContents"));
            // The same characters in an attribute are carried exactly.
            c.send_message()
                .queue_url(main)
                .message_body("plain")
                .message_attributes(
                    "reason",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value("🎉 in an attribute")
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            let got = receive_n(&env, 1).await;
            assert_eq!(
                got[0].message_attributes().unwrap()["reason"].string_value(),
                Some("🎉 in an attribute")
            );
        }
    }
}

/// The listener deletes in batches and retries the entries a DeleteMessageBatch reports failed
/// (`Queue::delete` returns how many stayed undeleted). LocalStack, like SQS, reports a malformed
/// receipt handle as a failed entry (`ReceiptHandleIsInvalid`) and deletes the others; fauxqs
/// reports every entry as deleted, so a partial failure cannot happen there. Both accept a handle
/// whose message is already gone.
#[tokio::test]
async fn delete_message_batch_reports_a_bad_handle_on_localstack_and_never_fails_on_fauxqs() {
    let env = TestEnv::new().await;
    let emulator = Emulator::of(&env).await;
    let queue = queue_of(&env);
    let bodies: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    env.send_bodies(&bodies).await;
    let mut handles: Vec<String> = receive_n(&env, 12)
        .await
        .iter()
        .map(|m| m.receipt_handle().unwrap().to_owned())
        .collect();
    // A malformed handle in the second chunk of ten, among good ones.
    handles.insert(11, "not-a-receipt-handle".to_owned());

    let undeleted = queue.delete(handles.clone()).await;
    match emulator {
        Emulator::LocalStack => {
            assert_eq!(undeleted, 1);
            // One call for the first ten; three attempts for the bad entry's chunk.
            assert_eq!(queue.delete_calls.get(), 4);
        }
        Emulator::Fauxqs => {
            assert_eq!(undeleted, 0);
            assert_eq!(queue.delete_calls.get(), 2);
        }
    }
    assert_eq!(env.depth(&env.queues.main).await, 0);

    let out = env
        .client
        .delete_message_batch()
        .queue_url(&env.queues.main)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("gone")
                .receipt_handle(&handles[0])
                .build()
                .unwrap(),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("bad")
                .receipt_handle("not-a-receipt-handle")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let ok: Vec<&str> = out.successful().iter().map(|s| s.id()).collect();
    let failed: Vec<(&str, &str)> = out.failed().iter().map(|f| (f.id(), f.code())).collect();
    match emulator {
        Emulator::LocalStack => {
            assert_eq!(ok, ["gone"]);
            assert_eq!(failed, [("bad", "ReceiptHandleIsInvalid")]);
        }
        Emulator::Fauxqs => {
            assert_eq!(ok, ["gone", "bad"]);
            assert!(failed.is_empty());
        }
    }
}

/// After `maxReceiveCount` receives, the next receive that finds the message visible moves it to
/// the dead-letter queue, body and message attributes unchanged (the listener's last-receive
/// records and `accrualctl dlq` rely on it). Differences: LocalStack, like SQS, adds
/// `DeadLetterQueueSourceArn`, and fauxqs does not; the moved message's receive count goes on
/// from the main queue's, and fauxqs also counts the receive that moved it.
#[tokio::test]
async fn a_message_received_max_receive_count_times_moves_to_the_dlq_at_the_next_receive() {
    let env = env_with(2, 1).await;
    let emulator = Emulator::of(&env).await;
    assert_eq!(
        sqs::max_receive_count(&env.client, &env.queues.main)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        sqs::visibility_timeout(&env.client, &env.queues.main)
            .await
            .unwrap(),
        Duration::from_secs(1)
    );
    env.client
        .send_message()
        .queue_url(&env.queues.main)
        .message_body("twice")
        .message_attributes(
            "why",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("kept ポ")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // Received and never deleted: receive counts 1 and 2.
    let mut counts = Vec::new();
    while counts.len() < 2 {
        counts.extend(receive_n(&env, 1).await.iter().map(receive_count));
    }
    assert_eq!(counts, [1, 2]);
    // Moved at a receive, never handed out a third time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.depth(&env.queues.dlq).await == 0 {
        assert!(Instant::now() < deadline, "not moved to the DLQ");
        assert_eq!(receive(&env, &env.queues.main, 1).await.len(), 0);
    }
    assert_eq!(env.depth(&env.queues.main).await, 0);

    let moved = receive(&env, &env.queues.dlq, 2).await;
    assert_eq!(moved.len(), 1);
    let m = &moved[0];
    assert_eq!(m.body(), Some("twice"));
    assert_eq!(
        m.message_attributes().unwrap()["why"].string_value(),
        Some("kept ポ")
    );
    let source = m
        .attributes()
        .unwrap()
        .get(&MessageSystemAttributeName::DeadLetterQueueSourceArn);
    match emulator {
        Emulator::LocalStack => {
            assert!(
                source
                    .unwrap()
                    .ends_with(&format!(":{}", env.sqs.accrual_queue))
            );
            assert_eq!(receive_count(m), 3);
        }
        Emulator::Fauxqs => {
            assert_eq!(source, None);
            assert_eq!(receive_count(m), 4);
        }
    }
}

/// The listener keeps held messages hidden with ChangeMessageVisibilityBatch (the new timeout runs
/// from the call) and hands them back with a timeout of 0, at once. Both report a bad or stale
/// handle as a failed entry (`Queue::change_visibility` counts them), with different codes.
#[tokio::test]
async fn visibility_is_extended_from_the_call_and_zero_hands_a_message_back_at_once() {
    let env = env_with(5, 3).await;
    let emulator = Emulator::of(&env).await;
    let queue = queue_of(&env);
    env.send_raw("held").await;
    let first = receive_n(&env, 1).await;
    let received = tokio::time::Instant::now();
    let handle = first[0].receipt_handle().unwrap().to_owned();

    // Hidden for 3 s from the receive, then for 5 s from the extension: until about 6 s.
    tokio::time::sleep_until(received + Duration::from_secs(1)).await;
    assert_eq!(queue.change_visibility(&[handle], 5).await, 0);
    tokio::time::sleep_until(received + Duration::from_secs(4)).await;
    assert!(receive(&env, &env.queues.main, 0).await.is_empty());
    // Then it comes back, received a second time.
    let again = receive_n(&env, 1).await;
    assert_eq!(receive_count(&again[0]), 2);
    assert!(
        received.elapsed() >= Duration::from_millis(5_800),
        "{:?}",
        received.elapsed()
    );

    // A timeout of 0 hands it back: the next receive gets it.
    let handle = again[0].receipt_handle().unwrap().to_owned();
    assert_eq!(
        queue
            .change_visibility(std::slice::from_ref(&handle), 0)
            .await,
        0
    );
    let back = receive(&env, &env.queues.main, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(receive_count(&back[0]), 3);

    // Deleted, its handle is stale; a malformed one is refused too.
    let handle = back[0].receipt_handle().unwrap().to_owned();
    env.client
        .delete_message()
        .queue_url(&env.queues.main)
        .receipt_handle(&handle)
        .send()
        .await
        .unwrap();
    let out = env
        .client
        .change_message_visibility_batch()
        .queue_url(&env.queues.main)
        .entries(
            aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("stale")
                .receipt_handle(&handle)
                .visibility_timeout(5)
                .build()
                .unwrap(),
        )
        .entries(
            aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("bad")
                .receipt_handle("not-a-receipt-handle")
                .visibility_timeout(5)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(out.successful().is_empty());
    let mut failed: Vec<(&str, &str)> = out.failed().iter().map(|f| (f.id(), f.code())).collect();
    failed.sort_unstable();
    let stale_code = match emulator {
        Emulator::LocalStack => "InvalidParameterValueException",
        Emulator::Fauxqs => "ReceiptHandleIsInvalid",
    };
    assert_eq!(
        failed,
        [("bad", "ReceiptHandleIsInvalid"), ("stale", stale_code)]
    );
    assert_eq!(
        queue
            .change_visibility(&[handle, "not-a-receipt-handle".to_owned()], 5)
            .await,
        2
    );
}

/// A long poll on an empty queue waits its whole wait time and returns nothing; a message sent
/// during the wait is returned at once. Receivers rely on both (shutdown waits for one poll).
#[tokio::test]
async fn a_long_poll_waits_its_time_when_empty_and_returns_a_message_sent_meanwhile() {
    let env = TestEnv::new().await;
    Emulator::of(&env).await;
    let started = Instant::now();
    assert!(receive(&env, &env.queues.main, 2).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let (client, main) = (env.client.clone(), env.queues.main.clone());
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .send_message()
            .queue_url(main)
            .message_body("late")
            .send()
            .await
            .unwrap();
    });
    let started = Instant::now();
    let got = receive(&env, &env.queues.main, 10).await;
    let waited = started.elapsed();
    late.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body(), Some("late"));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    eventually(
        Duration::from_secs(5),
        "the late message in flight",
        || async { env.depth(&env.queues.main).await == 1 },
    )
    .await;
}
