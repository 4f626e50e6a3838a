//! The HTTP server's own limits, tried with raw sockets where a client library would hide them:
//! stalled headers and idle connections are closed, trickling bodies get 408, connections are
//! capped, request bodies share a memory budget (503 beyond it), and shutdown ends within its
//! grace whatever clients are still attached.

use std::time::{Duration, Instant};

use accrual_sender::{Application, SenderSettings};
use accrual_testkit::TestEnv;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{DEV_KEYS, KEY_A, TestApp, item, spawn_app_with};

const MIB: usize = 1024 * 1024;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// The head of `POST /v1/accruals` as client_a, declaring `content_length` bytes of JSON.
fn post_head(path: &str, content_length: usize) -> String {
    post_head_as(KEY_A, path, content_length)
}

/// The head of `POST {path}` as the client whose key is `key`, declaring `content_length` bytes.
pub(crate) fn post_head_as(key: &str, path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// A JSON array of one item padded with spaces to exactly `len` bytes.
pub(crate) fn padded_body(len: usize) -> Vec<u8> {
    let mut body = format!("[{}", item("m-1", "WELFARE", 1)).into_bytes();
    body.resize(len - 1, b' ');
    body.push(b']');
    body
}

/// One HTTP response: the status, the head (lower-cased) and the body.
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

/// Reads one response with a `Content-Length`, whatever the connection does afterwards.
pub(crate) async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return Raw {
                    status: head[9..12].parse().unwrap(),
                    body: text[end + 4..end + 4 + length].to_owned(),
                    head,
                };
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("closed before a whole response: {text:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Waits until the server closes the connection (end of stream or reset), discarding any data.
async fn closed_within(stream: &mut TcpStream, within: Duration) {
    let mut chunk = [0u8; 8192];
    tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .expect("the server closed the connection");
}

#[tokio::test]
async fn a_connection_that_stalls_in_its_headers_is_closed() {
    let app = spawn_app_with(|s| s.http.sender_header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = connect(&app).await;

    stream
        .write_all(b"POST /v1/accruals HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    closed_within(&mut stream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_body_that_trickles_is_refused_with_408() {
    let app = spawn_app_with(|s| s.uploads.sender_body_rate_grace = Duration::from_secs(1)).await;
    let (mut reader, mut writer) = connect(&app).await.into_split();
    writer
        .write_all(post_head("/v1/accruals", 1000).as_bytes())
        .await
        .unwrap();
    // One byte every 200 ms: far under 64 KiB/s, yet never silent.
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut buf)).await;
    trickle.abort();

    assert!(read.is_ok(), "no answer to a trickling body");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        text.contains(r#""type":"/problems/request-timeout""#),
        "{text}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.http.sender_idle_timeout = Duration::from_secs(1);
        s.http.sender_header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    let answered = Instant::now();

    closed_within(&mut stream, Duration::from_secs(5)).await;

    // Kept alive for a while, not closed with the answer.
    assert!(answered.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn above_the_connection_cap_a_request_waits_until_a_connection_closes() {
    let app = spawn_app_with(|s| {
        s.http.sender_max_connections = 3;
        s.http.sender_header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&app).await);
    }
    let url = format!("{}/healthz", app.address);
    let mut fourth = tokio::spawn(app.http.get(&url).send());

    let early = tokio::time::timeout(Duration::from_secs(1), &mut fourth).await;
    assert!(early.is_err(), "served above the cap: {early:?}");

    drop(idle.pop());
    let response = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(idle);
    let again = app.http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn uploads_beyond_the_body_budget_get_503_and_the_budget_comes_back() {
    // The smallest budget allowed: one largest body.
    let app = spawn_app_with(|s| s.uploads.sender_body_budget_bytes = 100 * MIB as u64).await;
    let body = padded_body(60 * MIB);
    // The first upload sends all but its last byte and holds its 60 MiB.
    let mut first = connect(&app).await;
    let head = post_head("/v1/accruals", body.len());
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&body[..body.len() - 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The second passes the budget part-way: refused then.
    let busy = send_reading_early(&app, KEY_A, &body).await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(busy.head.contains("retry-after: "), "{}", busy.head);
    assert!(busy.body.contains(r#""type":"/problems/server-busy""#));
    first.write_all(&body[body.len() - 1..]).await.unwrap();
    let accepted = read_response(&mut first).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    // The admitted upload's bytes are given back: another as large fits.
    let again = app.post(body).await;
    assert_eq!(again.status(), 202);
}

/// Sends `body` to `POST /v1/accruals` as `key` while reading the answer, which may come before
/// the body has all been sent (the sender refuses it part-way).
pub(crate) async fn send_reading_early(app: &TestApp, key: &str, body: &[u8]) -> Raw {
    let (mut reader, mut writer) = connect(app).await.into_split();
    let head = post_head_as(key, "/v1/accruals", body.len());
    let chunks: Vec<Vec<u8>> = std::iter::once(head.into_bytes())
        .chain(body.chunks(MIB).map(<[u8]>::to_vec))
        .collect();
    let sending = tokio::spawn(async move {
        for chunk in chunks {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Kept open until the answer has been read.
        std::future::pending::<()>().await;
    });
    // Generous: storing a 60 MiB job takes seconds, and tens of them on a loaded machine.
    let raw = tokio::time::timeout(Duration::from_secs(90), read_response(&mut reader))
        .await
        .expect("an answer before the body ends");
    sending.abort();
    raw
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_with_an_event_stream_and_a_slow_upload_attached() {
    accrual_core::telemetry::init();
    let env = TestEnv::new().await;
    let mut settings =
        <SenderSettings as clap::Parser>::try_parse_from(["accrual-sender"]).unwrap();
    settings.http.sender_addr = "127.0.0.1:0".parse().unwrap();
    settings.http.sender_ops_addr = "127.0.0.1:0".parse().unwrap();
    settings.keys.accrual_api_keys = DEV_KEYS.into();
    settings.database = env.database.clone();
    settings.sqs = env.sqs.clone();
    settings.redis = env.redis.clone();
    settings.shutdown_grace_secs = 2;
    // Only the shutdown may end the upload.
    settings.uploads.sender_body_rate_grace = Duration::from_secs(60);
    let app = Application::build(settings).await.unwrap();
    let address = format!("127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::new();
    let reserve_at = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let job: serde_json::Value = http
        .post(format!("http://{address}/v1/accruals"))
        .query(&[("reserve_at", reserve_at)])
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .body(format!("[{}]", item("m-1", "WELFARE", 1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events_url = format!(
        "http://{address}/v1/jobs/{}/events",
        job["job_id"].as_str().unwrap()
    );
    let events = http
        .get(events_url)
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    let mut events = events.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the event stream is open");
    let mut upload = TcpStream::connect(&address).await.unwrap();
    upload
        .write_all(post_head("/v1/accruals", 10 * MIB).as_bytes())
        .await
        .unwrap();
    upload.write_all(b"[").await.unwrap();

    let started = Instant::now();
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), running).await;

    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "run_until_stopped did not return within 5 s: {stopped:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = events.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream still runs");
    closed_within(&mut upload, Duration::from_secs(1)).await;
    assert!(
        TcpStream::connect(&address).await.is_err(),
        "still accepting"
    );
}
