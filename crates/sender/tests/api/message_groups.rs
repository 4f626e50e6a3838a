//! Every message carries its job's client as `MessageGroupId` (issue 27, point 4), so Amazon SQS
//! fair queues keep a quiet client's messages from waiting behind a busy one's; with
//! `DISPATCH_MESSAGE_GROUPS=false` none does. Each emulator's behaviour is pinned: LocalStack
//! accepts the field on a standard queue and hands it back, fauxqs 2.4 accepts it and drops it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use accrual_testkit::Emulator;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use crate::helpers::{KEY_A, TestApp, item, spawn_app_with};

const KEY_B: &str = "key_b";

/// Posts a job of `n` points for each of client_a and client_b; returns client by job id.
async fn two_clients_jobs(app: &TestApp, n: usize) -> HashMap<String, &'static str> {
    let mut clients = HashMap::new();
    for (key, client) in [(KEY_A, "client_a"), (KEY_B, "client_b")] {
        let items: Vec<String> = (0..n)
            .map(|i| item(&format!("{client}-m{i}"), "CAMPAIGN", 1))
            .collect();
        let job = app
            .post(format!("[{}]", items.join(",")))
            .api_key(key)
            .job_id()
            .await;
        clients.insert(job, client);
    }
    clients
}

/// Receives every message of the queue (no listener runs): each one's job and `MessageGroupId`.
async fn receive_all(app: &TestApp, expected: usize) -> Vec<(String, Option<String>)> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} messages",
            got.len()
        );
        let out = app
            .env
            .client
            .receive_message()
            .queue_url(&app.env.queues.main)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            if !seen.insert(m.message_id().unwrap_or_default().to_owned()) {
                continue;
            }
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let group = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            got.push((body["job_id"].as_str().unwrap().to_owned(), group));
        }
    }
    got
}

#[tokio::test]
async fn each_message_carries_its_client_as_message_group_where_the_emulator_keeps_it() {
    let app = spawn_app_with(|_| {}).await;
    let clients = two_clients_jobs(&app, 5).await;
    let received = receive_all(&app, 10).await;
    let emulator = Emulator::of(&app.env).await;
    for (job, group) in &received {
        match emulator {
            Emulator::LocalStack => {
                assert_eq!(group.as_deref(), Some(clients[job]), "{received:?}")
            }
            // Accepted (the job was sent), not kept.
            Emulator::Fauxqs => assert_eq!(group, &None, "{received:?}"),
        }
    }
}

#[tokio::test]
async fn with_message_groups_off_no_message_carries_one() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_message_groups = false).await;
    two_clients_jobs(&app, 5).await;
    let received = receive_all(&app, 10).await;
    assert!(received.iter().all(|(_, g)| g.is_none()), "{received:?}");
}
