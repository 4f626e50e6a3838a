//! Chaos drill (issue 13 §7): one 200,000-point job while, one after another, a listener process is
//! SIGKILLed, MySQL goes away for the listeners for 15 s, one sender's SQS is black-holed for 15 s
//! and poison arrives on the main queue. At the end the ledger, the job and the dead-letter queue
//! are exactly what they would be without any of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use accrual_core::accrual::Accrual;
use accrual_core::dlq;
use accrual_core::domain::{Amount, MemberId, PointType};
use accrual_core::message::PointRecord;
use accrual_core::settings::DatabaseSettings;
use accrual_listener::{Listener, ListenerSettings};
use accrual_testkit::process::{ServiceProcess, free_port, metric};
use accrual_testkit::proxy::TcpProxy;
use accrual_testkit::{TestEnv, eventually};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use sqlx::MySqlPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{KEY_A, spawn_app_with};
use crate::process::SenderProcess;

const POINTS: usize = 200_000;
/// Points packed into one SQS message by every sender.
const PER_MESSAGE: u32 = 100;
/// How long MySQL is cut and SQS black-holed.
const OUTAGE: Duration = Duration::from_secs(15);
/// One chunk (2,000 points) of the job becomes due every `DRIP`: 100 chunks over 80 s.
const DRIP: Duration = Duration::from_millis(800);

/// The drill. Every sender packs 100 points a message (`ACCRUAL_POINTS_PER_MESSAGE=100`), so the
/// 200,000 points are 2,000 SQS messages and the job fits in a couple of minutes on LocalStack.
///
/// Packed, the whole job would be sent in a few seconds, before the later faults; so the test
/// makes the job's chunks due one every 0.8 s (it moves their `due_at`, as a reserved job's are,
/// before any dispatcher runs), and each fault meets points not yet sent as well as points queued.
///
/// - Senders: one in this process accepts the job (it dispatches nothing); one in this process and
///   one OS process (its SQS through a proxy, `SQS_ATTEMPT_TIMEOUT=2s`, a 3 s lease) dispatch it.
/// - Listeners: one in this process and two OS processes, all writing through a MySQL proxy.
/// - Faults, each once the previous one is over: at 20% of the rows one listener process is
///   SIGKILLed; once the others have written 5,000 more rows MySQL is cut for 15 s; once they write
///   again the dispatching process's SQS is black-holed for 15 s; then 5 poison messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200000_point_job_survives_a_killed_listener_a_mysql_outage_a_black_holed_sender_and_poison()
 {
    let started = Instant::now();
    let say = |what: &str| println!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    let logs = std::env::temp_dir().join(format!("accrual-chaos-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&logs).unwrap();
    say(&format!("process logs in {}", logs.display()));

    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.dispatch.points_per_message = PER_MESSAGE;
    })
    .await;
    let env = &app.env;
    let http = &app.http;
    let mysql = TcpProxy::start(env.database_addr()).await;
    let sqs = TcpProxy::start(env.sqs_addr()).await;
    let mysql_via_proxy = env.database_url_via(mysql.port);

    // Listeners, every one writing to MySQL through the proxy.
    let stop_listener = CancellationToken::new();
    let _stop_listener = stop_listener.clone().drop_guard();
    let in_process = Listener::build(ListenerSettings {
        listener_addr: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_secs: 5,
        queue_attributes_refresh: std::time::Duration::from_secs(60),
        receive_tasks: 4,
        receive_wait_secs: 1,
        batch_max_rows: 512,
        batch_linger: Duration::from_millis(100),
        database: DatabaseSettings {
            database_url: mysql_via_proxy.clone(),
            ..env.database.clone()
        },
        sqs: env.sqs.clone(),
        redis: env.redis.clone(),
    })
    .await
    .unwrap();
    let l1 = in_process.metrics();
    tokio::spawn(in_process.run(stop_listener.clone()));
    let mut doomed =
        spawn_listener_process(env, &mysql_via_proxy, &logs.join("listener-killed.log")).await;
    let survivor =
        spawn_listener_process(env, &mysql_via_proxy, &logs.join("listener-survivor.log")).await;
    let doomed_url = format!("http://127.0.0.1:{}", doomed.port);
    let survivor_url = format!("http://127.0.0.1:{}", survivor.port);

    // The job, accepted while no sender dispatches, then made due chunk by chunk.
    let (body, expected_sum) = job_body();
    let response = app.post(body).await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id: Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();
    let dripped = sqlx::query(
        "UPDATE accrual_chunks SET due_at = NOW(6) + INTERVAL (seq * ?) MICROSECOND \
         WHERE job_id = ? AND dispatched_at IS NULL",
    )
    .bind(DRIP.as_micros() as u64)
    .bind(job_id)
    .execute(&env.pool)
    .await
    .unwrap()
    .rows_affected();
    say(&format!(
        "job {job_id} accepted: {dripped} chunks, one due every {DRIP:?}"
    ));

    let steady = app
        .spawn_sender(|s| s.dispatch.points_per_message = PER_MESSAGE)
        .await;
    let sqs_via_proxy = format!("http://127.0.0.1:{}", sqs.port);
    let per_message = PER_MESSAGE.to_string();
    let black_holed = SenderProcess::spawn_logging_to(
        env,
        &[
            ("AWS_ENDPOINT_URL", sqs_via_proxy.as_str()),
            ("SQS_ATTEMPT_TIMEOUT", "2s"),
            ("ACCRUAL_POINTS_PER_MESSAGE", per_message.as_str()),
        ],
        &logs.join("sender-black-holed.log"),
    )
    .await;
    let timeline = tokio::spawn(print_timeline(env.pool.clone(), job_id, started));

    // (1) A listener process is SIGKILLed mid-stream.
    eventually(
        Duration::from_secs(600),
        "20% of the job in the ledger",
        || async { rows_of(&env.pool, job_id).await >= (POINTS / 5) as i64 },
    )
    .await;
    let written_by_doomed =
        scrape(http, &doomed_url, "accrual_listener_points_written_total").await;
    // Killed while it holds messages: received, perhaps written, not deleted.
    let held = std::cell::Cell::new(0.0);
    eventually(
        Duration::from_secs(120),
        "the listener process to hold messages",
        || async {
            held.set(scrape(http, &doomed_url, "accrual_listener_messages_in_flight").await);
            held.get() > 0.0
        },
    )
    .await;
    doomed.kill();
    let held = held.get();
    let at_kill = rows_of(&env.pool, job_id).await;
    say(&format!(
        "(1) SIGKILLed listener {} at {at_kill} rows: it had written about {written_by_doomed} points and held {held} messages",
        doomed.pid()
    ));
    assert!(
        at_kill < POINTS as i64,
        "the job was written before the first fault"
    );
    let carry_on = (at_kill + 5_000).min(POINTS as i64);
    eventually(
        Duration::from_secs(300),
        "the other listeners to carry on",
        || async { rows_of(&env.pool, job_id).await >= carry_on },
    )
    .await;

    // (2) MySQL is cut for the listeners.
    let outages_before = outages(&l1, http, &survivor_url).await;
    mysql.cut();
    let cut_at = Instant::now();
    say(&format!(
        "(2) MySQL cut at {} rows",
        rows_of(&env.pool, job_id).await
    ));
    eventually(OUTAGE, "a listener to stop for want of MySQL", || async {
        l1.database_up.get() == 0
            || scrape(http, &survivor_url, "accrual_listener_database_up").await == 0.0
    })
    .await;
    let rows_noticed = rows_of(&env.pool, job_id).await;
    tokio::time::sleep_until(cut_at + OUTAGE).await;
    let rows_at_restore = rows_of(&env.pool, job_id).await;
    mysql.restore();
    let outages_seen = outages(&l1, http, &survivor_url).await - outages_before;
    say(&format!(
        "(2) MySQL restored: {outages_seen} listener outages; rows {rows_noticed} once a listener stopped, {rows_at_restore} at the restore"
    ));
    assert!(outages_seen >= 1.0, "no listener saw the MySQL outage");
    eventually(
        Duration::from_secs(120),
        "the listeners to write again after the outage",
        || async { rows_of(&env.pool, job_id).await > rows_at_restore },
    )
    .await;
    say(&format!(
        "(2) listeners write again: {} rows",
        rows_of(&env.pool, job_id).await
    ));

    // (3) SQS is black-holed for one dispatching sender.
    let pending = undispatched_chunks(&env.pool, job_id).await;
    assert!(
        pending > 0,
        "the job was fully dispatched before the black-hole: the fault would reach no work"
    );
    let abandoned = "accrual_sender_chunks_abandoned_total";
    let abandoned_before = scrape(http, &black_holed.ops_address, abandoned).await;
    sqs.stall();
    say(&format!(
        "(3) SQS black-holed for sender {} with {pending} chunks not yet dispatched",
        black_holed.pid()
    ));
    tokio::time::sleep(OUTAGE).await;
    sqs.restore();
    let given_up = scrape(http, &black_holed.ops_address, abandoned).await - abandoned_before;
    say(&format!(
        "(3) SQS restored: the black-holed sender gave up {given_up} chunks; {} not yet dispatched",
        undispatched_chunks(&env.pool, job_id).await
    ));
    assert!(given_up >= 1.0, "the black-holed sender gave up no chunk");

    // (4) Poison on the main queue.
    let poison = poison();
    for (body, _) in &poison {
        env.send_raw(body).await;
    }
    say(&format!("(4) {} poison messages sent", poison.len()));
    eventually(
        Duration::from_secs(120),
        "the poison dead-lettered",
        || async {
            let survivor = scrape(
                http,
                &survivor_url,
                "accrual_listener_points_dead_lettered_total",
            );
            l1.dead_lettered.get() as f64 + survivor.await >= poison.len() as f64
        },
    )
    .await;
    say("(4) poison dead-lettered");

    // Every point exactly once, the job completed when its last point was written.
    eventually(
        Duration::from_secs(900),
        "every point of the job in the ledger",
        || async { rows_of(&env.pool, job_id).await >= POINTS as i64 },
    )
    .await;
    say("every point in the ledger");
    let main = env.queues.main.clone();
    eventually(Duration::from_secs(180), "an empty main queue", || async {
        env.depth(&main).await == 0
    })
    .await;
    let stored = || async {
        sqlx::query_as::<_, (String, Option<NaiveDateTime>, Option<u32>, Option<u32>)>(
            "SELECT status, completed_at, written, dead_lettered FROM accrual_jobs WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(60),
        "the stored job to reach a final status",
        || async { stored().await.0 != "dispatching" && stored().await.0 != "enqueued" },
    )
    .await;
    timeline.abort();
    say("job settled");
    println!(
        "in-process listener: points_written={} points_duplicate={} points_dead_lettered={} database_outages={} write_retries={}",
        l1.written.get(),
        l1.duplicates.get(),
        l1.dead_lettered.get(),
        l1.database_outages.get(),
        l1.write_retries.get()
    );
    print_summary(
        &app,
        job_id,
        &logs,
        &steady,
        &black_holed.ops_address,
        &survivor_url,
    )
    .await;

    let (rows, distinct, sum): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT accrual_id), CAST(COALESCE(SUM(amount), 0) AS SIGNED) \
         FROM point_accruals WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, sum),
        (POINTS as i64, POINTS as i64, expected_sum)
    );

    let (status, completed_at, written, dead_lettered) = stored().await;
    assert_eq!(
        (status.as_str(), written, dead_lettered),
        ("completed", Some(POINTS as u32), Some(0))
    );
    let last_write: NaiveDateTime = sqlx::query_scalar(
        "SELECT created_at FROM point_accruals WHERE job_id = ? ORDER BY id DESC LIMIT 1",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(completed_at, Some(last_write));
    let view: Value = http
        .get(format!("{}/v1/jobs/{job_id}", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        (view["written"].as_u64(), view["dead_lettered"].as_u64()),
        (Some(POINTS as u64), Some(0)),
        "{view}"
    );
    let shown: DateTime<Utc> = view["completed_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(shown.naive_utc(), last_write);

    // The poison, and nothing else, in the dead-letter queue, each with its reason.
    let letters = dlq::list(&env.client, &env.queues.dlq, 50).await.unwrap();
    let reasons: HashMap<&str, Option<&str>> = letters
        .iter()
        .map(|l| (l.body.as_str(), l.reason.as_deref()))
        .collect();
    assert_eq!(letters.len(), poison.len(), "{reasons:#?}");
    for (body, reason) in &poison {
        let Some(Some(given)) = reasons.get(body.as_str()) else {
            panic!("{body} is not in the dead-letter queue with a reason: {reasons:#?}");
        };
        assert!(given.starts_with(reason), "{body}: {given}");
    }
    assert_eq!(env.depth(&env.queues.dlq).await, poison.len() as u64);
    let (of_job, all): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(job_id = ?), 0) AS SIGNED), COUNT(*) FROM accrual_dead_letters",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // The three negative amounts name jobs of their own; the two unreadable bodies name none.
    assert_eq!((of_job, all), (0, 3));
    let _ = std::fs::remove_dir_all(&logs);
}

/// 200,000 items over 40,000 members and three point types, and the sum of their amounts.
fn job_body() -> (Vec<u8>, i64) {
    let point_types = ["WELFARE", "BONUS", "CASHBACK"];
    let items: Vec<Value> = (0..POINTS)
        .map(|i| {
            serde_json::json!({
                "member_id": format!("emp-{:05}", i % 40_000),
                "point_type": point_types[i % 3],
                "amount": i % 1_000 + 1,
            })
        })
        .collect();
    let sum = (0..POINTS).map(|i| (i % 1_000 + 1) as i64).sum();
    (serde_json::to_vec(&items).unwrap(), sum)
}

/// Five bodies that can never become ledger rows, each with (the start of) the reason the listener
/// gives: two that are no accrual message at all and three v1 bodies with a negative amount (each
/// of a job of its own, not the drill's).
fn poison() -> Vec<(String, &'static str)> {
    let negative = || {
        let record = PointRecord {
            accrual_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            accrual: Accrual {
                member_id: MemberId::try_from("poisoned".to_owned()).unwrap(),
                point_type: PointType::try_from("WELFARE".to_owned()).unwrap(),
                amount: Amount::try_from(10).unwrap(),
                reason: None,
                expires_at: None,
                external_id: None,
            },
            accepted_at: Utc::now(),
            reverses: None,
        };
        let valid = record.encode();
        let body = valid.replace(r#""amount":10"#, r#""amount":-5"#);
        assert_ne!(body, valid);
        body
    };
    let amount = "field `amount` must be an integer from 1 to 1000000000";
    vec![
        ("not json".to_owned(), "body is not a valid accrual message"),
        (r#"{"v":9}"#.to_owned(), "unsupported message version 9"),
        (negative(), amount),
        (negative(), amount),
        (negative(), amount),
    ]
}

/// The `accrual-listener` binary next to this test executable (target/debug/deps/api-… is the
/// test; target/debug/accrual-listener the binary, which `cargo nextest run --workspace` builds).
pub(crate) fn listener_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("accrual-listener"));
    match binary {
        Some(binary) if binary.is_file() => binary,
        _ => panic!(
            "no accrual-listener binary in the grandparent directory of {}: build it first \
             (`cargo build -p accrual-listener`, or run the tests with `cargo nextest run --workspace`)",
            exe.display()
        ),
    }
}

/// Starts an `accrual-listener` process on the test's queues, writing to MySQL at `database_url`,
/// its log (stderr) in `log`.
async fn spawn_listener_process(env: &TestEnv, database_url: &str, log: &Path) -> ServiceProcess {
    let port = free_port();
    let mut command = Command::new(listener_binary());
    command
        .envs(env.service_env())
        .env("LISTENER_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .env("RECEIVE_TASKS", "4")
        .env("RECEIVE_WAIT_SECS", "2")
        .env("RUST_LOG", "warn,accrual_listener=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ServiceProcess::start(command, port).await
}

/// One unlabelled metric of the service at `base`.
async fn scrape(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, name).unwrap_or_else(|| panic!("no metric {name} at {base}:\n{text}"))
}

/// MySQL outages seen by the in-process listener and the surviving listener process.
async fn outages(
    in_process: &accrual_listener::metrics::ListenerMetrics,
    http: &reqwest::Client,
    survivor: &str,
) -> f64 {
    let survivor = scrape(http, survivor, "accrual_listener_database_outages_total").await;
    in_process.database_outages.get() as f64 + survivor
}

async fn rows_of(pool: &MySqlPool, job_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE job_id = ?")
        .bind(job_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn undispatched_chunks(pool: &MySqlPool, job_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NULL",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Prints the job's rows and undispatched chunks every 5 s, until aborted.
async fn print_timeline(pool: MySqlPool, job_id: Uuid, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!(
            "[{:6.1}s]     {} rows, {} chunks not yet dispatched",
            started.elapsed().as_secs_f64(),
            rows_of(&pool, job_id).await,
            undispatched_chunks(&pool, job_id).await
        );
    }
}

/// Prints who dispatched and wrote what, and the lines of the process logs that show the faults.
async fn print_summary(
    app: &crate::helpers::TestApp,
    job_id: Uuid,
    logs: &Path,
    steady: &str,
    black_holed: &str,
    survivor: &str,
) {
    let by_owner: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT dispatched_by, COUNT(*) FROM accrual_chunks WHERE job_id = ? GROUP BY dispatched_by",
    )
    .bind(job_id)
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    println!("chunks by dispatcher: {by_owner:?}");
    for (who, base, names) in [
        (
            "steady sender",
            steady,
            &["chunks_dispatched", "chunks_abandoned", "sqs_send_calls"][..],
        ),
        (
            "black-holed sender",
            black_holed,
            &["chunks_dispatched", "chunks_abandoned", "sqs_send_calls"][..],
        ),
        (
            "surviving listener process",
            survivor,
            &[
                "points_written",
                "points_duplicate",
                "points_dead_lettered",
                "database_outages",
                "write_retries",
                "receive_errors",
            ][..],
        ),
    ] {
        let prefix = if who.ends_with("sender") {
            "accrual_sender_"
        } else {
            "accrual_listener_"
        };
        let text = app.metrics_at(base).await;
        let values: Vec<String> = names
            .iter()
            .map(|n| format!("{n}={:?}", metric(&text, &format!("{prefix}{n}_total"))))
            .collect();
        println!("{who}: {}", values.join(" "));
    }
    for entry in std::fs::read_dir(logs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for line in text.lines() {
            let message = message_of(line);
            match counts.iter_mut().find(|(m, _)| *m == message) {
                Some((_, n)) => *n += 1,
                None => counts.push((message, 1)),
            }
        }
        println!("{}:", path.display());
        for (message, n) in counts {
            println!("  {n:5} × {message}");
        }
    }
}

/// The message of a log line: what follows the level and target, without the fields after it.
fn message_of(line: &str) -> String {
    let message = line.split_once(": ").map_or(line, |(_, rest)| rest);
    let bytes = message.as_bytes();
    let field = (0..bytes.len()).find(|&at| {
        bytes[at] == b' ' && {
            let key = &message[at + 1..];
            let name = key
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(key.len());
            name > 0 && key[name..].starts_with('=')
        }
    });
    message[..field.unwrap_or(message.len())]
        .chars()
        .take(120)
        .collect()
}
