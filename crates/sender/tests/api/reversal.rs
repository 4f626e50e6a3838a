//! Reversing a whole job (issue 15, point 2): `POST /v1/jobs/{job_id}/reversal` makes a reversal
//! job whose compensating points go through the same dispatcher and listeners, one ledger row per
//! written point, each original reversed once, even with concurrent calls and a killed listener.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::{ServiceProcess, free_port, metric};
use serde_json::Value;
use sqlx::MySqlPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, item, problem, spawn_app, spawn_app_with};

const KEY_B: &str = "key_b";

/// `POST /v1/jobs/{job_id}/reversal` as the client whose key is `key`, with an optional
/// `Idempotency-Key`.
async fn reverse_as(
    app: &TestApp,
    key: &str,
    job_id: &str,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/v1/jobs/{job_id}/reversal", app.address))
        .bearer_auth(key);
    if let Some(k) = idempotency_key {
        request = request.header("Idempotency-Key", k);
    }
    request.send().await.unwrap()
}

async fn reverse(app: &TestApp, job_id: &str, idempotency_key: Option<&str>) -> reqwest::Response {
    reverse_as(app, KEY_A, job_id, idempotency_key).await
}

/// Expects a `202` and returns the reversal job's id.
async fn accepted_reversal(response: reqwest::Response, points: u64, members: u64) -> String {
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["accepted"].as_u64(), Some(points), "{accepted}");
    assert_eq!(accepted["members"].as_u64(), Some(members), "{accepted}");
    assert_eq!(accepted["status"], "dispatching", "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status_url"], format!("/v1/jobs/{job_id}"));
    job_id
}

/// `count` items over `members` members (amounts 1..=1000), and the body.
fn body(count: usize, members: usize, member_prefix: &str) -> String {
    let items: Vec<String> = (0..count)
        .map(|i| {
            item(
                &format!("{member_prefix}{}", i % members),
                if i % 2 == 0 { "WELFARE" } else { "BONUS" },
                (i % 1000 + 1) as i64,
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

async fn wait_for_status(app: &TestApp, job_id: &str, status: &str, within: Duration) {
    eventually(within, &format!("job {job_id} {status}"), || async {
        app.job_view(job_id).await["status"] == status
    })
    .await;
}

fn uuid(id: &str) -> Uuid {
    id.parse().unwrap()
}

/// What the ledger holds for the original job and its reversal job.
#[derive(Debug, PartialEq, Eq)]
struct Reversed {
    /// Rows of the reversal job.
    rows: i64,
    /// Distinct originals they reverse.
    distinct_reversed: i64,
    /// Of those, originals of the original job (with the negated amount and the same member and
    /// point type).
    matching: i64,
    /// Members whose sum over both jobs is not 0.
    members_not_zero: i64,
}

async fn reversed(pool: &MySqlPool, original: &str, reversal: &str) -> Reversed {
    let (rows, distinct_reversed): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT reverses) FROM point_accruals WHERE job_id = ?",
    )
    .bind(uuid(reversal))
    .fetch_one(pool)
    .await
    .unwrap();
    let matching: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM point_accruals r JOIN point_accruals o ON o.accrual_id = r.reverses \
         WHERE r.job_id = ? AND o.job_id = ? AND r.amount = -o.amount AND r.amount < 0 \
           AND r.member_id = o.member_id AND r.point_type = o.point_type \
           AND r.expires_at <=> o.expires_at AND r.accrual_id <> o.accrual_id",
    )
    .bind(uuid(reversal))
    .bind(uuid(original))
    .fetch_one(pool)
    .await
    .unwrap();
    let members_not_zero: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT member_id FROM point_accruals WHERE job_id IN (?, ?) \
         GROUP BY member_id HAVING SUM(amount) <> 0) t",
    )
    .bind(uuid(original))
    .bind(uuid(reversal))
    .fetch_one(pool)
    .await
    .unwrap();
    Reversed {
        rows,
        distinct_reversed,
        matching,
        members_not_zero,
    }
}

/// The acceptance case at a small size: every written point of the job is taken back by one
/// compensating row, the original rows stay as they were, the reversal job completes by itself
/// and the views name each other.
#[tokio::test]
async fn a_reversal_job_writes_one_compensating_row_per_point_and_every_member_nets_to_zero() {
    let app = spawn_app().await;
    let _listener = app.spawn_listener().await;
    let original = app.post(body(600, 70, "member-")).job_id().await;
    wait_for_status(&app, &original, "completed", Duration::from_secs(60)).await;
    let before: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT accrual_id, amount FROM point_accruals WHERE job_id = ? ORDER BY id",
    )
    .bind(uuid(&original))
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(before.len(), 600);

    let reversal = accepted_reversal(reverse(&app, &original, None).await, 600, 70).await;
    wait_for_status(&app, &reversal, "completed", Duration::from_secs(60)).await;

    assert_eq!(
        reversed(&app.env.pool, &original, &reversal).await,
        Reversed {
            rows: 600,
            distinct_reversed: 600,
            matching: 600,
            members_not_zero: 0,
        }
    );
    // Append-only: the original rows are untouched.
    let after: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT accrual_id, amount FROM point_accruals WHERE job_id = ? ORDER BY id",
    )
    .bind(uuid(&original))
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(before, after);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT reason FROM point_accruals WHERE job_id = ?")
            .bind(uuid(&reversal))
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(reasons, vec![format!("reversal of job {original}")]);

    let original_view = app.job_view(&original).await;
    assert_eq!(
        original_view["reversed_by"],
        reversal.as_str(),
        "{original_view}"
    );
    assert_eq!(original_view["reverses"], Value::Null, "{original_view}");
    let reversal_view = app.job_view(&reversal).await;
    assert_eq!(
        reversal_view["reverses"],
        original.as_str(),
        "{reversal_view}"
    );
    assert_eq!(reversal_view["reversed_by"], Value::Null, "{reversal_view}");
    assert_eq!(
        (
            reversal_view["total"].as_u64(),
            reversal_view["written"].as_u64(),
            reversal_view["dead_lettered"].as_u64()
        ),
        (Some(600), Some(600), Some(0)),
        "{reversal_view}"
    );
}

/// A second reversal is a 409 naming the first; the first call's Idempotency-Key replays it; a key
/// used for another request, and reversing a reversal job, are 409s; another client's or an
/// unknown job is a 404.
#[tokio::test]
async fn a_second_reversal_is_a_409_and_the_same_idempotency_key_replays_the_first() {
    let app = spawn_app().await;
    let _listener = app.spawn_listener().await;
    let original = app.post(body(50, 5, "m")).job_id().await;
    let other = app.post(body(20, 4, "n")).job_id().await;
    wait_for_status(&app, &original, "completed", Duration::from_secs(60)).await;
    wait_for_status(&app, &other, "completed", Duration::from_secs(60)).await;

    // Another client's job, or no job at all: 404, nothing stored.
    problem(reverse_as(&app, KEY_B, &original, None).await, 404).await;
    problem(reverse(&app, &Uuid::now_v7().to_string(), None).await, 404).await;

    let first = accepted_reversal(reverse(&app, &original, Some("undo-1")).await, 50, 5).await;

    // The same key: the same reversal job, 200.
    let replay = reverse(&app, &original, Some("undo-1")).await;
    assert_eq!(replay.status().as_u16(), 200);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["job_id"], first.as_str(), "{replay}");
    assert_eq!(replay["accepted"].as_u64(), Some(50), "{replay}");

    // Without the key, or with another: 409 naming the reversal job.
    for key in [None, Some("undo-2")] {
        let again = problem(reverse(&app, &original, key).await, 409).await;
        assert_eq!(again["type"], "/problems/conflict");
        let detail = again["detail"].as_str().unwrap();
        assert!(detail.contains(&first), "{detail}");
    }
    // The key of the first reversal, for another job's reversal or for a POST /v1/accruals: 409.
    let reused = problem(reverse(&app, &other, Some("undo-1")).await, 409).await;
    assert!(
        reused["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{reused}"
    );
    let posted = app
        .http
        .post(format!("{}/v1/accruals", app.address))
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", "undo-1")
        .body(body(1, 1, "m"))
        .send()
        .await
        .unwrap();
    problem(posted, 409).await;

    // A reversal job cannot be reversed.
    wait_for_status(&app, &first, "completed", Duration::from_secs(60)).await;
    let of_reversal = problem(reverse(&app, &first, None).await, 409).await;
    assert!(
        of_reversal["detail"]
            .as_str()
            .unwrap()
            .contains("cannot be reversed"),
        "{of_reversal}"
    );

    let jobs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs WHERE reverses IS NOT NULL")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(jobs, 1);
    assert_eq!(
        reversed(&app.env.pool, &original, &first).await,
        Reversed {
            rows: 50,
            distinct_reversed: 50,
            matching: 50,
            members_not_zero: 0,
        }
    );
}

/// Three calls at once make one reversal job: without a key one call gets the 202 and the others
/// a 409; with one key, the others get the same job (200). (The replica may prepare three at
/// once here: at its default of two, the third would be a 503.)
#[tokio::test]
async fn three_concurrent_reversal_calls_make_one_reversal_job() {
    let app = spawn_app_with(|s| s.api.sender_reversals_max = 3).await;
    let _listener = app.spawn_listener().await;
    let unkeyed = app.post(body(3_000, 300, "u")).job_id().await;
    let keyed = app.post(body(3_000, 300, "k")).job_id().await;
    wait_for_status(&app, &unkeyed, "completed", Duration::from_secs(120)).await;
    wait_for_status(&app, &keyed, "completed", Duration::from_secs(120)).await;

    let statuses = |responses: Vec<reqwest::Response>| {
        let mut s: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
        s.sort_unstable();
        s
    };
    let calls = futures_util::future::join_all((0..3).map(|_| reverse(&app, &unkeyed, None))).await;
    assert_eq!(statuses(calls), vec![202, 409, 409]);

    let calls =
        futures_util::future::join_all((0..3).map(|_| reverse(&app, &keyed, Some("once")))).await;
    let mut ids = HashSet::new();
    let mut codes = Vec::new();
    for response in calls {
        codes.push(response.status().as_u16());
        let answer: Value = response.json().await.unwrap();
        ids.insert(answer["job_id"].as_str().unwrap().to_owned());
    }
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 200, 202]);
    assert_eq!(ids.len(), 1, "{ids:?}");

    for original in [&unkeyed, &keyed] {
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs WHERE reverses = ?")
            .bind(uuid(original))
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
        assert_eq!(jobs, 1, "reversal jobs of {original}");
    }
    let keyed_reversal = ids.into_iter().next().unwrap();
    wait_for_status(&app, &keyed_reversal, "completed", Duration::from_secs(120)).await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM point_accruals WHERE reverses IS NOT NULL AND job_id = ?",
    )
    .bind(uuid(&keyed_reversal))
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(rows, 3_000);
}

/// A job with dead letters: only its written points are reversed (a dead-lettered point was
/// never credited); a job that wrote nothing has nothing to reverse (409).
#[tokio::test]
async fn a_job_with_dead_letters_reverses_only_its_written_points() {
    let app = spawn_app().await;
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(&app.env.pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;
    let mut items: Vec<String> = (0..200)
        .map(|i| item(&format!("m{}", i % 20), "WELFARE", i + 1))
        .collect();
    for i in [3, 77, 150] {
        items[i] = item(&format!("poison-{i}"), "WELFARE", 5);
    }
    let mixed = app.post(format!("[{}]", items.join(","))).job_id().await;
    let all_poison = app
        .post(format!(
            "[{},{}]",
            item("poison-a", "P", 1),
            item("poison-b", "P", 2)
        ))
        .job_id()
        .await;
    for job in [&mixed, &all_poison] {
        wait_for_status(&app, job, "completed_with_errors", Duration::from_secs(120)).await;
    }

    let reversal = accepted_reversal(reverse(&app, &mixed, None).await, 197, 20).await;
    wait_for_status(&app, &reversal, "completed", Duration::from_secs(60)).await;
    assert_eq!(
        reversed(&app.env.pool, &mixed, &reversal).await,
        Reversed {
            rows: 197,
            distinct_reversed: 197,
            matching: 197,
            members_not_zero: 0,
        }
    );
    let poisoned: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE member_id LIKE 'poison-%'")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(poisoned, 0);

    let nothing = problem(reverse(&app, &all_poison, None).await, 409).await;
    assert!(
        nothing["detail"]
            .as_str()
            .unwrap()
            .contains("nothing to reverse"),
        "{nothing}"
    );
}

/// A job whose points are not all accounted for, a reserved one and a cancelled one cannot be
/// reversed: 409 naming its status, and no reversal job.
#[tokio::test]
async fn a_job_that_is_not_completed_cannot_be_reversed() {
    // No dispatcher: an accepted job stays `dispatching`.
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let dispatching = app.post(body(10, 2, "m")).job_id().await;
    let reserve_at = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reserved = app
        .post(body(10, 2, "m"))
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;
    let cancelled = app
        .post(body(10, 2, "m"))
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;
    let cancel = app
        .http
        .delete(format!("{}/v1/jobs/{cancelled}", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);

    for (job, status) in [
        (&dispatching, "dispatching"),
        (&reserved, "reserved"),
        (&cancelled, "cancelled"),
    ] {
        let refused = problem(reverse(&app, job, None).await, 409).await;
        let detail = refused["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("is {status};")), "{detail}");
    }
    let jobs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs WHERE reverses IS NOT NULL")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(jobs, 0);
}

const POINTS: usize = 100_000;
const MEMBERS: usize = 10_000;
/// Points per SQS message, for the job and its reversal alike.
const PER_MESSAGE: u32 = 50;

/// The acceptance case: a 100,000-point job is reversed while one of two listener processes is
/// SIGKILLed mid-way: exactly 100,000 compensating rows, each original reversed once, every
/// member's sum over both jobs 0, and the reversal job completes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_of_a_100000_point_job_survives_a_sigkilled_listener() {
    let started = Instant::now();
    let say = |what: &str| println!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    let app = spawn_app_with(|s| s.dispatch.points_per_message = PER_MESSAGE).await;
    let env = &app.env;
    let mut doomed = spawn_listener_process(&app).await;
    let survivor = spawn_listener_process(&app).await;
    let doomed_url = format!("http://127.0.0.1:{}", doomed.port);
    let survivor_url = format!("http://127.0.0.1:{}", survivor.port);

    let original = app.post(body(POINTS, MEMBERS, "emp-")).job_id().await;
    wait_for_status(&app, &original, "completed", Duration::from_secs(600)).await;
    say(&format!("job {original} completed"));

    let posted = Instant::now();
    let response = reverse(&app, &original, None).await;
    let took = posted.elapsed();
    let reversal = accepted_reversal(response, POINTS as u64, MEMBERS as u64).await;
    say(&format!(
        "POST /v1/jobs/{{id}}/reversal of {POINTS} points answered in {:.2}s (debug build)",
        took.as_secs_f64()
    ));

    eventually(
        Duration::from_secs(600),
        "30% of the reversal in the ledger",
        || async { rows_of(&env.pool, &reversal).await >= (POINTS * 3 / 10) as i64 },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the doomed listener to hold messages",
        || async {
            let text = app.metrics_at(&doomed_url).await;
            metric(&text, "accrual_listener_messages_in_flight").unwrap_or(0.0) > 0.0
        },
    )
    .await;
    doomed.kill();
    let at_kill = rows_of(&env.pool, &reversal).await;
    say(&format!(
        "SIGKILLed listener {} at {at_kill} rows",
        doomed.pid()
    ));
    assert!(
        at_kill < POINTS as i64,
        "the reversal was written before the kill"
    );

    wait_for_status(&app, &reversal, "completed", Duration::from_secs(900)).await;
    let text = app.metrics_at(&survivor_url).await;
    say(&format!(
        "reversal job completed; the surviving listener wrote {:?} points and found {:?} already written",
        metric(&text, "accrual_listener_points_written_total"),
        metric(&text, "accrual_listener_points_duplicate_total"),
    ));
    assert_eq!(
        reversed(&env.pool, &original, &reversal).await,
        Reversed {
            rows: POINTS as i64,
            distinct_reversed: POINTS as i64,
            matching: POINTS as i64,
            members_not_zero: 0,
        }
    );
    let (members, net): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(DISTINCT member_id), CAST(SUM(amount) AS SIGNED) FROM point_accruals \
         WHERE job_id IN (?, ?)",
    )
    .bind(uuid(&original))
    .bind(uuid(&reversal))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((members, net), (MEMBERS as i64, 0));
    assert_eq!(rows_of(&env.pool, &original).await, POINTS as i64);
    let view = app.job_view(&reversal).await;
    assert_eq!(view["reverses"], original.as_str(), "{view}");
    assert_eq!(
        (view["written"].as_u64(), view["dead_lettered"].as_u64()),
        (Some(POINTS as u64), Some(0)),
        "{view}"
    );
    assert_eq!(
        app.job_view(&original).await["reversed_by"],
        reversal.as_str()
    );
}

async fn rows_of(pool: &MySqlPool, job_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE job_id = ?")
        .bind(uuid(job_id))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Starts an `accrual-listener` process on the app's queues and database (see chaos.rs for
/// where the binary is).
async fn spawn_listener_process(app: &TestApp) -> ServiceProcess {
    let port = free_port();
    let mut command = Command::new(crate::chaos::listener_binary());
    command
        .envs(app.env.service_env())
        .env("LISTENER_ADDR", format!("127.0.0.1:{port}"))
        .env("RECEIVE_TASKS", "4")
        .env("RECEIVE_WAIT_SECS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    ServiceProcess::start(command, port).await
}

/// Measurement, not evidence (run by hand with `--run-ignored only`): how long the POST takes
/// for a 100,000- and a 500,000-point job. The original's ledger rows are made with SQL (MariaDB's
/// sequence engine), and nothing dispatches the reversal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn measure_the_reversal_post() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    for points in [100_000u32, 500_000] {
        let job_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, completed_at, written, dead_lettered) \
             VALUES (?, 'client_a', REPEAT('x', 32), ?, 10000, 'completed', NOW(6), NOW(6), ?, 0)",
        )
        .bind(job_id)
        .bind(points)
        .bind(points)
        .execute(&app.env.pool)
        .await
        .unwrap();
        let seeded = format!(
            "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
             SELECT UNHEX(REPLACE(UUID(), '-', '')), ?, CONCAT('emp-', seq % 10000), 'WELFARE', seq % 1000 + 1, NOW(6) \
             FROM seq_1_to_{points}"
        );
        sqlx::query(sqlx::AssertSqlSafe(seeded))
            .bind(job_id)
            .execute(&app.env.pool)
            .await
            .unwrap();
        let posted = Instant::now();
        let response = reverse(&app, &job_id.to_string(), None).await;
        let took = posted.elapsed();
        accepted_reversal(response, u64::from(points), 10_000).await;
        println!(
            "POST /v1/jobs/{{id}}/reversal of {points} points: {:.2}s",
            took.as_secs_f64()
        );
    }
}

/// A reversed job stays reversed (issue 24, point 4): a `completed_with_errors` job is reversed,
/// then its dead letters are redriven (the documented remedy for what made them fail). Its
/// redriven points are refused as dead letters with the reason `job reversed before this point
/// was written`, back on the dead-letter queue, and every member of both jobs still nets to zero.
#[tokio::test]
async fn dead_letters_of_a_reversed_job_redriven_are_refused_and_every_member_still_nets_to_zero() {
    let app = spawn_app().await;
    let pool = &app.env.pool;
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;
    let mut items: Vec<String> = (0..50)
        .map(|i| item(&format!("m{}", i % 10), "WELFARE", 7))
        .collect();
    for i in 0..5 {
        items.push(item(&format!("poison-{i}"), "WELFARE", 7));
    }
    let original = app.post(format!("[{}]", items.join(","))).job_id().await;
    wait_for_status(
        &app,
        &original,
        "completed_with_errors",
        Duration::from_secs(120),
    )
    .await;
    let reversal = accepted_reversal(reverse(&app, &original, None).await, 50, 10).await;
    wait_for_status(&app, &reversal, "completed", Duration::from_secs(60)).await;

    // What failed is fixed, and the dead letters are redriven: all five, once the listener has
    // sent them to the dead-letter queue (it does after the write's commit, which the status may
    // reflect first).
    eventually(
        Duration::from_secs(30),
        "the five refused points in the dead-letter queue",
        || async { app.env.depth(&app.env.queues.dlq).await == 5 },
    )
    .await;
    sqlx::query("ALTER TABLE point_accruals DROP CONSTRAINT no_poison")
        .execute(pool)
        .await
        .unwrap();
    let moved = accrual_core::dlq::redrive(
        &app.env.client,
        &app.env.queues.dlq,
        &app.env.queues.main,
        100,
    )
    .await
    .unwrap();
    assert_eq!(moved.points, 5);

    // Each redriven point ends written or refused; wait for all five, then look at which.
    let reason = "job reversed before this point was written";
    let settled = || async {
        let (written, refused): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM point_accruals WHERE member_id LIKE 'poison-%'), \
                    (SELECT COUNT(*) FROM accrual_dead_letters WHERE job_id = ? AND reason = ?)",
        )
        .bind(uuid(&original))
        .bind(reason)
        .fetch_one(pool)
        .await
        .unwrap();
        (written, refused)
    };
    eventually(
        Duration::from_secs(60),
        "every redriven point written or refused",
        || async {
            let (written, refused) = settled().await;
            written + refused == 5
        },
    )
    .await;
    assert_eq!(
        settled().await,
        (0, 5),
        "(ledger rows, dead letters refused for the reversal) of the redriven points"
    );
    let members_not_zero: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT member_id FROM point_accruals WHERE job_id IN (?, ?) \
         GROUP BY member_id HAVING SUM(amount) <> 0) t",
    )
    .bind(uuid(&original))
    .bind(uuid(&reversal))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(members_not_zero, 0);
    assert_eq!(
        reversed(pool, &original, &reversal).await,
        Reversed {
            rows: 50,
            distinct_reversed: 50,
            matching: 50,
            members_not_zero: 0,
        }
    );

    // Back on the dead-letter queue with that reason; the original keeps its five dead letters.
    eventually(
        Duration::from_secs(30),
        "five dead letters back on the DLQ",
        || async {
            let letters = accrual_core::dlq::list(&app.env.client, &app.env.queues.dlq, 10)
                .await
                .unwrap();
            letters.len() == 5 && letters.iter().all(|l| l.reason.as_deref() == Some(reason))
        },
    )
    .await;
    let view = app.job_view(&original).await;
    assert_eq!(view["status"], "completed_with_errors", "{view}");
    assert_eq!(view["dead_lettered"].as_u64(), Some(5), "{view}");
    assert_eq!(view["written"].as_u64(), Some(50), "{view}");
}

/// A reversal made while a listener writes a late point of the original (its transaction holds
/// the job row share-locked and the row inserted, not yet committed) waits for that write and
/// reverses the late point too: the two serialize on the original's job row.
#[tokio::test]
async fn a_reversal_made_while_a_late_point_is_being_written_waits_and_reverses_it() {
    let app = spawn_app().await;
    let pool = &app.env.pool;
    let _listener = app.spawn_listener().await;
    let original = app.post(body(10, 2, "m")).job_id().await;
    wait_for_status(&app, &original, "completed", Duration::from_secs(60)).await;

    // What a listener's write transaction holds while it writes a late point of the job.
    let mut write = pool.begin().await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? LOCK IN SHARE MODE")
        .bind(uuid(&original))
        .execute(&mut *write)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
         VALUES (?, ?, 'm0', 'WELFARE', 5, NOW(6))",
    )
    .bind(Uuid::now_v7())
    .bind(uuid(&original))
    .execute(&mut *write)
    .await
    .unwrap();
    let waits = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let (response, ()) = tokio::join!(reverse(&app, &original, None), async {
        eventually(
            Duration::from_secs(10),
            "the reversal waits for the write",
            || async { waits().await >= 1 },
        )
        .await;
        write.commit().await.unwrap();
    });
    let reversal = accepted_reversal(response, 11, 2).await;
    wait_for_status(&app, &reversal, "completed", Duration::from_secs(60)).await;
    assert_eq!(
        reversed(pool, &original, &reversal).await,
        Reversed {
            rows: 11,
            distinct_reversed: 11,
            matching: 11,
            members_not_zero: 0,
        }
    );
}
