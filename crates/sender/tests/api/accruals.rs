//! `POST /v1/accruals`: acceptance, and every refusal storing and queueing nothing.

use std::time::Duration;

use accrual_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, item, problem, spawn_app};
use crate::process::SenderProcess;

/// Nothing from earlier refused requests is in `members` or on the queue: after a valid one-point
/// request, the queue holds exactly that one message.
async fn assert_nothing_stored_or_queued(app: &TestApp) {
    assert_eq!(app.env.member_rows().await, 0, "members were stored");
    let sentinel = app.post(format!("[{}]", item("sentinel", "P", 1))).await;
    assert_eq!(sentinel.status().as_u16(), 202);
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(10), "the sentinel message", || async {
        app.env.depth(&main).await >= 1
    })
    .await;
    assert_eq!(
        app.env.depth(&main).await,
        1,
        "refused requests queued messages"
    );
}

#[tokio::test]
async fn post_returns_202_with_the_job_and_upserts_members_before_queueing() {
    let app = spawn_app().await;
    let body = format!(
        "[{},{},{}]",
        item("alice", "WELFARE", 10),
        item("alice", "BONUS", 5),
        item("bob", "WELFARE", 7)
    );

    let response = app.post(body).await;

    assert_eq!(response.status().as_u16(), 202);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["accepted"], 3);
    assert_eq!(json["members"], 2);
    assert_eq!(json["status"], "dispatching");
    assert!(
        json["job_id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .is_ok()
    );
    assert_eq!(app.env.member_rows().await, 2);
    let main = app.env.queues.main.clone();
    eventually(
        Duration::from_secs(10),
        "3 messages on the queue",
        || async { app.env.depth(&main).await == 3 },
    )
    .await;
}

#[tokio::test]
async fn malformed_json_returns_400_with_line_and_column() {
    let app = spawn_app().await;

    let response = app
        .post(format!("[\n{},\n{{\"amount\": }}]", item("a", "P", 1)))
        .await;

    let body = problem(response, 400).await;
    assert_eq!(body["type"], "/problems/malformed-json");
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(3), Some(12))
    );
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn a_non_json_content_type_returns_415() {
    let app = spawn_app().await;

    let response = app
        .post(format!("[{}]", item("a", "P", 1)))
        .content_type("text/plain")
        .await;

    assert_eq!(
        problem(response, 415).await["type"],
        "/problems/unsupported-media-type"
    );
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn a_missing_or_unknown_key_returns_401() {
    let app = spawn_app().await;
    let body = format!("[{}]", item("a", "P", 1));

    for key in [None, Some("not-a-key")] {
        let post = app.post(body.clone());
        let response = match key {
            Some(key) => post.api_key(key),
            None => post.without_key(),
        }
        .await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            problem(response, 401).await["type"],
            "/problems/unauthorized"
        );
    }
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn invalid_items_return_422_listing_each_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut items: Vec<String> = (0..1_000)
        .map(|i| item(&format!("m{i}"), "WELFARE", 1))
        .collect();
    items[3] = item("bad member", "WELFARE", 1);
    items[500] = r#"{"member_id":"m","point_type":"P","amount":-5,"colour":"red"}"#.into();

    let response = app.post(format!("[{}]", items.join(","))).await;

    let body = problem(response, 422).await;
    assert_eq!(body["type"], "/problems/validation-failed");
    assert_eq!(body["total_errors"], 3);
    let errors: Vec<(u64, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        vec![(3, "member_id"), (500, "amount"), (500, "colour")]
    );
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn more_than_500000_items_returns_413() {
    let app = spawn_app().await;
    let one = item("m", "P", 1);
    let body = format!("[{}]", vec![one.as_str(); 500_001].join(","));

    let response = app.post(body).await;

    assert_eq!(
        problem(response, 413).await["type"],
        "/problems/payload-too-large"
    );
    assert_nothing_stored_or_queued(&app).await;
}

/// Sends a raw HTTP/1.1 request head, then `body_bytes` of filler (ignoring a closed connection),
/// and returns the status code of the answer.
async fn raw_post(app: &TestApp, head_extra: &str, body_bytes: usize, chunked: bool) -> u16 {
    raw_post_to(&app.address, head_extra, body_bytes, chunked).await
}

async fn raw_post_to(address: &str, head_extra: &str, body_bytes: usize, chunked: bool) -> u16 {
    let addr = address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/accruals HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer key_a\r\n\
         Content-Type: application/json\r\n{head_extra}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let feeder = tokio::spawn(async move {
        let block = vec![b' '; 1024 * 1024];
        let mut sent = 0;
        while sent < body_bytes {
            let n = block.len().min(body_bytes - sent);
            let ok = if chunked {
                let chunk = [format!("{n:x}\r\n").as_bytes(), &block[..n], b"\r\n"].concat();
                writer.write_all(&chunk).await.is_ok()
            } else {
                writer.write_all(&block[..n]).await.is_ok()
            };
            if !ok {
                return;
            }
            sent += n;
        }
    });
    let mut answer = vec![0u8; 12];
    reader.read_exact(&mut answer).await.unwrap();
    feeder.abort();
    String::from_utf8_lossy(&answer[9..12]).parse().unwrap()
}

#[tokio::test]
async fn a_declared_body_over_100_mib_returns_413_before_it_is_read() {
    let app = spawn_app().await;

    let status = raw_post(
        &app,
        &format!("Content-Length: {}\r\n", 100 * 1024 * 1024 + 1),
        1024,
        false,
    )
    .await;

    assert_eq!(status, 413);
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_without_the_sender_growing_past_twice_the_limit() {
    let app = spawn_app().await;
    let sender = SenderProcess::spawn_with(&app.env, &[("DISPATCH_TASKS", "0")]).await;
    let before = sender.peak_rss_kib();

    let status = raw_post_to(
        &sender.address,
        "Transfer-Encoding: chunked\r\n",
        101 * 1024 * 1024,
        true,
    )
    .await;

    let peak = sender.peak_rss_kib();
    assert_eq!(status, 413);
    let limit_kib = 100 * 1024;
    println!("sender peak RSS {before} KiB before, {peak} KiB after a 101 MiB body");
    assert!(
        peak.saturating_sub(before) <= 2 * limit_kib,
        "grew from {before} KiB to {peak} KiB"
    );
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn a_chunked_body_over_100_mib_returns_413_while_streaming() {
    let app = spawn_app().await;

    let status = raw_post(
        &app,
        "Transfer-Encoding: chunked\r\n",
        101 * 1024 * 1024,
        true,
    )
    .await;

    assert_eq!(status, 413);
    assert_nothing_stored_or_queued(&app).await;
}

/// Values SQS or a `DATETIME(6)` column cannot carry exactly: accepted before, they jammed a chunk
/// forever (U+FFFF) or were stored as `0000-00-00` (year 10000 in UTC, a leap second).
#[tokio::test]
async fn values_sqs_or_the_ledger_cannot_hold_get_a_422_and_nothing_is_stored() {
    let app = spawn_app().await;
    let body = r#"[
        {"member_id":"a","point_type":"P","amount":1,"reason":"\uFFFF"},
        {"member_id":"b","point_type":"P","amount":1,"reason":"nul \u0000 inside"},
        {"member_id":"c","point_type":"P","amount":1,"expires_at":"9999-12-31T23:59:59-23:59"},
        {"member_id":"d","point_type":"P","amount":1,"expires_at":"2999-06-30T23:59:60Z"},
        {"member_id":"e","point_type":"P","amount":1e3}
    ]"#;

    let problem = problem(app.post(body).await, 422).await;

    let errors: Vec<(u64, String, String)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let fields: Vec<(u64, &str)> = errors.iter().map(|(i, f, _)| (*i, f.as_str())).collect();
    assert_eq!(
        fields,
        [
            (0, "reason"),
            (1, "reason"),
            (2, "expires_at"),
            (3, "expires_at"),
            (4, "amount")
        ]
    );
    assert!(errors[2].2.contains("1000 to 9999"), "{errors:?}");
    assert!(errors[3].2.contains("leap second"), "{errors:?}");
    assert!(errors[4].2.contains("exponent"), "{errors:?}");
    assert_nothing_stored_or_queued(&app).await;
}

#[tokio::test]
async fn an_expiry_before_the_reservation_time_gets_a_422() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    let reserve_at = (now + chrono::Duration::days(2)).format("%Y-%m-%dT%H:%M:%SZ");
    let expires_at = (now + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let body =
        format!(r#"[{{"member_id":"a","point_type":"P","amount":1,"expires_at":"{expires_at}"}}]"#);

    let response = app
        .http
        .post(format!(
            "{}/v1/accruals?reserve_at={reserve_at}",
            app.address
        ))
        .bearer_auth(crate::helpers::KEY_A)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();

    let problem = problem(response, 422).await;
    assert_eq!(problem["errors"][0]["field"], "expires_at");
    assert_eq!(problem["errors"][0]["message"], "must be after reserve_at");
    assert_nothing_stored_or_queued(&app).await;
}

/// A typo (`reserveAt`) used to dispatch at once a job meant for later, and a parameter of a newer
/// version (`dry_run`, before it was known) stored and sent a real job.
#[tokio::test]
async fn unknown_query_parameters_get_a_400_and_nothing_is_stored() {
    let app = spawn_app().await;
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    for query in [format!("reserveAt={at}"), "dryRun=true".to_owned()] {
        let response = app
            .http
            .post(format!("{}/v1/accruals?{query}", app.address))
            .bearer_auth(crate::helpers::KEY_A)
            .header("Content-Type", "application/json")
            .body(format!("[{}]", item("a", "P", 1)))
            .send()
            .await
            .unwrap();
        let problem = problem(response, 400).await;
        assert_eq!(problem["type"], "/problems/invalid-parameter", "{query}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field"),
            "{problem}"
        );
    }
    assert_nothing_stored_or_queued(&app).await;
}
