//! `accrualctl webhooks set|show|remove|deliveries` against a real database.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use accrual_testkit::TestEnv;
use serde_json::Value;
use uuid::Uuid;

fn ctl(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .arg("webhooks")
        .args(args)
        .envs(env.service_env())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn secret_of(env: &TestEnv, client: &str) -> Option<String> {
    sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE client_id = ?")
        .bind(client)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn set_prints_a_new_secret_once_and_replaces_the_endpoint_show_never_prints_it() {
    let env = TestEnv::new().await;
    let first = json(&ctl(
        &env,
        &["set", "crm-eu", "https://crm.example.com/hooks"],
    ));
    let secret = first["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{secret}"
    );
    assert_eq!(first["url"], "https://crm.example.com/hooks");
    assert_eq!(secret_of(&env, "crm-eu").await.as_deref(), Some(&*secret));

    let shown = ctl(&env, &["show", "crm-eu"]);
    let shown_json = json(&shown);
    assert_eq!(shown_json["url"], "https://crm.example.com/hooks");
    assert!(shown_json["created_at"].is_string() && shown_json["updated_at"].is_string());
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(&secret));
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("whsec_"));

    let again = json(&ctl(&env, &["set", "crm-eu", "http://10.0.0.7:8080/in"]));
    assert_ne!(again["secret"], first["secret"], "a new secret each time");
    assert_eq!(
        secret_of(&env, "crm-eu").await.as_deref(),
        again["secret"].as_str()
    );
    assert_eq!(
        json(&ctl(&env, &["show", "crm-eu"]))["url"],
        "http://10.0.0.7:8080/in"
    );
}

#[tokio::test]
async fn only_http_and_https_urls_with_a_host_are_set() {
    let env = TestEnv::new().await;
    for url in [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "example.com/hooks",
        "http://",
        "https://user:pw@example.com/",
    ] {
        let out = ctl(&env, &["set", "crm-eu", url]);
        assert!(!out.status.success(), "{url}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Refused URL"),
            "{url}: {out:?}"
        );
    }
    assert_eq!(secret_of(&env, "crm-eu").await, None);
    let out = ctl(&env, &["set", "crm eu", "https://example.com/"]);
    assert!(!out.status.success());
    assert!(!ctl(&env, &["show", "crm-eu"]).status.success());
}

#[tokio::test]
async fn deliveries_list_each_event_s_status_and_attempts_and_remove_gives_pending_ones_up() {
    let env = TestEnv::new().await;
    json(&ctl(
        &env,
        &["set", "crm-eu", "https://crm.example.com/hooks"],
    ));
    // Three events as the sender leaves them: delivered on the second attempt, given up, pending.
    let (delivered, gave_up, pending) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (event_id, age, finished, attempts) in [
        (
            delivered,
            3,
            "delivered_at = NOW(6), next_attempt_at = NULL",
            2,
        ),
        (gave_up, 2, "gave_up_at = NOW(6), next_attempt_at = NULL", 1),
        (
            pending,
            1,
            "next_attempt_at = NOW(6) + INTERVAL 1 MINUTE",
            1,
        ),
    ] {
        sqlx::query(
            "INSERT INTO webhook_events (event_id, client_id, event, job_id, body, created_at, attempts) \
             VALUES (?, 'crm-eu', 'job.completed', ?, '{}', NOW(6) - INTERVAL ? SECOND, ?)",
        )
        .bind(event_id)
        .bind(Uuid::now_v7())
        .bind(age)
        .bind(attempts)
        .execute(&env.pool)
        .await
        .unwrap();
        let sql = format!("UPDATE webhook_events SET {finished} WHERE event_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    for (event_id, attempt, status, error) in [
        (
            delivered,
            1,
            None,
            Some("timed out after 10000 ms (WEBHOOK_TIMEOUT)"),
        ),
        (delivered, 2, Some(204), None),
        (
            gave_up,
            1,
            Some(500),
            Some("HTTP 500 Internal Server Error"),
        ),
        (pending, 1, Some(503), Some("HTTP 503 Service Unavailable")),
    ] {
        sqlx::query(
            "INSERT INTO webhook_attempts (event_id, attempt, attempted_at, http_status, error, duration_ms) \
             VALUES (?, ?, NOW(6), ?, ?, 12)",
        )
        .bind(event_id)
        .bind(attempt)
        .bind(status)
        .bind(error)
        .execute(&env.pool)
        .await
        .unwrap();
    }

    let listed = lines(&ctl(&env, &["deliveries", "crm-eu"]));
    let summary: Vec<(String, String, u64)> = listed
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
                e["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (pending.to_string(), "pending".into(), 1),
            (gave_up.to_string(), "gave_up".into(), 1),
            (delivered.to_string(), "delivered".into(), 2),
        ],
        "newest first"
    );
    let log = &listed[2]["attempt_log"];
    assert_eq!(log[0]["http_status"], Value::Null);
    assert_eq!(
        log[0]["error"],
        "timed out after 10000 ms (WEBHOOK_TIMEOUT)"
    );
    assert_eq!(log[1]["http_status"], 204);
    assert_eq!(
        lines(&ctl(&env, &["deliveries", "crm-eu", "--limit", "1"])).len(),
        1
    );

    let removed = json(&ctl(&env, &["remove", "crm-eu"]));
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["pending_given_up"], 1);
    assert_eq!(secret_of(&env, "crm-eu").await, None);
    let after = lines(&ctl(&env, &["deliveries", "crm-eu"]));
    assert_eq!(after[0]["status"], "gave_up");
    assert_eq!(
        after[0]["last_error"],
        "the client's webhook endpoint was removed"
    );
    assert_eq!(json(&ctl(&env, &["remove", "crm-eu"]))["removed"], false);
}
