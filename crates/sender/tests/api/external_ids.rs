//! Client ids across jobs: `external_id` is unique per client, with `on_duplicate=reject|skip`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use accrual_testkit::eventually;
use serde_json::Value;

use crate::helpers::{KEY_A, TestApp, problem, spawn_app, spawn_app_with};

const KEY_B: &str = "key_b";

fn item_with_id(member: &str, amount: i64, external_id: &str) -> String {
    format!(
        r#"{{"member_id":"{member}","point_type":"CAMPAIGN","amount":{amount},"external_id":"{external_id}"}}"#
    )
}

fn body(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

impl TestApp {
    async fn results(&self, job_id: &str, query: &str) -> Vec<Value> {
        let url = format!("{}/v1/jobs/{job_id}/results{query}", self.address);
        let response = self.http.get(url).bearer_auth(KEY_A).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    async fn wait_final(&self, job_id: &str) -> Value {
        eventually(Duration::from_secs(180), "the job is final", || async {
            let view = self.job_view(job_id).await;
            matches!(
                view["status"].as_str(),
                Some("completed" | "completed_with_errors")
            )
        })
        .await;
        self.job_view(job_id).await
    }

    async fn external_id_counts(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT external_id, COUNT(*) FROM point_accruals \
             WHERE external_id IS NOT NULL GROUP BY external_id",
        )
        .fetch_all(&self.env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }
}

#[tokio::test]
async fn a_retry_with_ten_thousand_used_ids_is_refused_naming_them_or_skips_them() {
    // Packed messages: 50,000 points in seconds, not minutes, on LocalStack.
    let app = spawn_app_with(|s| s.dispatch.points_per_message = 100).await;
    app.spawn_listener().await;
    let first: Vec<String> = (0..25_000)
        .map(|i| item_with_id(&format!("m{}", i % 5_000), 1, &format!("txn-a-{i}")))
        .collect();
    let first_job = app.post(body(&first)).job_id().await;

    // The second request: 25,000 items, 10,000 of which (the indexes i with i % 5 < 2) carry the id
    // of the first request's item i.
    let reused: HashSet<usize> = (0..25_000).filter(|i| i % 5 < 2).collect();
    assert_eq!(reused.len(), 10_000);
    let second: Vec<String> = (0..25_000)
        .map(|i| {
            let id = if reused.contains(&i) {
                format!("txn-a-{i}")
            } else {
                format!("txn-b-{i}")
            };
            item_with_id(&format!("m{}", i % 7_000), 2, &id)
        })
        .collect();

    let refused = problem(app.post(body(&second)).await, 422).await;
    assert_eq!(refused["type"], "/problems/duplicate-external-id");
    let listed = refused["duplicates"].as_array().unwrap();
    let indexes: HashSet<usize> = listed
        .iter()
        .map(|d| d["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(indexes, reused, "exactly the reused indexes are named");
    for d in listed {
        let index = d["index"].as_u64().unwrap();
        assert_eq!(d["external_id"], format!("txn-a-{index}"));
        assert_eq!(d["existing_job_id"], first_job.as_str());
        assert!(d["existing_accrual_id"].is_string());
    }
    // Refused: nothing of the second request was stored.
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    let skipping = app.post(body(&second)).query("?on_duplicate=skip").await;
    assert_eq!(skipping.status().as_u16(), 202);
    let accepted: Value = skipping.json().await.unwrap();
    assert_eq!(accepted["accepted"], 15_000);
    assert_eq!(accepted["skipped"], 10_000);
    let second_job = accepted["job_id"].as_str().unwrap().to_owned();

    app.wait_final(&first_job).await;
    let view = app.wait_final(&second_job).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["total"], 15_000);
    assert_eq!(view["written"], 15_000);
    assert_eq!(view["skipped"], 10_000);

    // The ledger holds each of the 40,000 distinct ids once.
    let counts = app.external_id_counts().await;
    assert_eq!(counts.len(), 40_000);
    assert!(counts.values().all(|&n| n == 1));

    // The results list all 25,000 items in request order, the skipped ones where they were sent,
    // naming the point that holds their id.
    let results = app.results(&second_job, "").await;
    assert_eq!(results.len(), 25_000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
        if reused.contains(&i) {
            assert_eq!(r["outcome"], "skipped", "{r}");
            assert_eq!(r["external_id"], format!("txn-a-{i}"));
            assert_eq!(r["existing_job_id"], first_job.as_str());
            assert!(r["accrual_id"].is_null());
        } else {
            assert_eq!(r["outcome"], "written", "{r}");
            assert_eq!(r["external_id"], format!("txn-b-{i}"));
        }
    }
    let only_skipped = app.results(&second_job, "?outcome=skipped").await;
    assert_eq!(only_skipped.len(), 10_000);
}

#[tokio::test]
async fn two_concurrent_requests_sharing_ids_give_each_id_to_one_of_them() {
    let app = spawn_app().await;
    // 2,000 items each; ids 1,000..1,999 of the first are ids 0..999 of the second.
    let request = |prefix: &str, from: usize| {
        body(
            &(from..from + 2_000)
                .map(|i| item_with_id("m", 1, &format!("{prefix}-{i}")))
                .collect::<Vec<_>>(),
        )
    };
    for round in 0..3 {
        let (a, b) = tokio::join!(
            app.post(request("shared", round * 10_000)),
            app.post(request("shared", round * 10_000 + 1_000)),
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [202, 422],
            "round {round}: one wins, one is refused"
        );
    }
    // With skip, both are accepted and every id is taken once.
    let (a, b) = tokio::join!(
        app.post(request("skipped", 0)).query("?on_duplicate=skip"),
        app.post(request("skipped", 1_000))
            .query("?on_duplicate=skip"),
    );
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(
        a["accepted"].as_u64().unwrap() + b["accepted"].as_u64().unwrap(),
        3_000
    );
    assert_eq!(
        a["skipped"].as_u64().unwrap() + b["skipped"].as_u64().unwrap(),
        1_000
    );
    let claimed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT external_id, COUNT(*) FROM accrual_external_ids \
         WHERE external_id LIKE 'skipped-%' GROUP BY external_id",
    )
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(claimed.len(), 3_000);
    assert!(claimed.iter().all(|(_, n)| *n == 1));
}

#[tokio::test]
async fn an_id_twice_in_one_request_is_refused_or_kept_once() {
    let app = spawn_app().await;
    let items = body(&[
        item_with_id("m1", 1, "dup"),
        item_with_id("m2", 2, "other"),
        item_with_id("m3", 3, "dup"),
    ]);
    let refused = problem(app.post(items.clone()).await, 422).await;
    let listed = refused["duplicates"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["index"], 2);
    assert_eq!(listed[0]["first_index"], 0);
    assert!(listed[0]["existing_job_id"].is_null());

    let response = app.post(items).query("?on_duplicate=skip").await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        (accepted["accepted"].clone(), accepted["skipped"].clone()),
        (2.into(), 1.into())
    );
    let job_id = accepted["job_id"].as_str().unwrap();
    let results = app.results(job_id, "").await;
    let outcomes: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["external_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes[2], ("dup", "skipped"));
    // The skipped item names the point of its first use, in this very job.
    assert_eq!(results[2]["existing_accrual_id"], results[0]["accrual_id"]);
    assert_eq!(results[2]["existing_job_id"], job_id);
    assert_eq!(results[2]["member_id"], "m3");
}

#[tokio::test]
async fn ids_are_per_client_items_without_ids_cost_nothing_and_a_cancel_frees_them() {
    let app = spawn_app().await;
    let one = body(&[item_with_id("m", 1, "same-id")]);
    app.post(one.clone()).job_id().await;
    // Another client may use the same id.
    app.post(one.clone()).api_key(KEY_B).job_id().await;
    // Items without ids claim nothing.
    app.post(body(&[crate::helpers::item("m", "P", 1)]))
        .job_id()
        .await;
    let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_external_ids")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(claimed, 2);

    // A reserved job that is cancelled gives its ids back.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reserved = body(&[item_with_id("m", 1, "booked")]);
    let query = format!("?reserve_at={}", urlencode(&at));
    let job_id = app.post(reserved.clone()).query(&query).job_id().await;
    problem(app.post(reserved.clone()).await, 422).await;
    let cancel = app
        .http
        .delete(format!("{}/v1/jobs/{job_id}", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
    app.post(reserved).job_id().await;
}

#[tokio::test]
async fn every_item_skipped_makes_a_completed_job_and_bad_ids_or_modes_are_refused() {
    let app = spawn_app().await;
    let items = body(&[item_with_id("m", 1, "x1"), item_with_id("m", 1, "x2")]);
    app.post(items.clone()).job_id().await;
    let response = app.post(items).query("?on_duplicate=skip").await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["accepted"], 0);
    assert_eq!(accepted["status"], "completed");
    let job_id = accepted["job_id"].as_str().unwrap();
    let view = app.job_view(job_id).await;
    assert_eq!(
        (view["status"].clone(), view["skipped"].clone()),
        ("completed".into(), 2.into())
    );
    assert_eq!(app.results(job_id, "").await.len(), 2);

    let bad = problem(
        app.post(body(&[item_with_id("m", 1, "has space")])).await,
        422,
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "external_id");
    let mode = problem(
        app.post(body(&[item_with_id("m", 1, "y")]))
            .query("?on_duplicate=ignore")
            .await,
        400,
    )
    .await;
    assert!(mode["detail"].as_str().unwrap().contains("on_duplicate"));
}

/// A job whose every item is skipped is final as it is stored, so no settlement ever records its
/// event: the store records `job.completed` with the job (issue 24, point 6).
#[tokio::test]
async fn a_job_whose_every_item_is_skipped_records_its_job_completed_event() {
    let app = spawn_app().await;
    let pool = &app.env.pool;
    sqlx::query("INSERT INTO webhook_endpoints (client_id, url, secret) VALUES (?, ?, ?)")
        .bind("client_a")
        .bind("http://127.0.0.1:9/hook")
        .bind("whsec_test")
        .execute(pool)
        .await
        .unwrap();
    let items = body(&[item_with_id("m", 1, "x1"), item_with_id("m", 1, "x2")]);
    app.post(items.clone()).job_id().await;
    let response = app.post(items).query("?on_duplicate=skip").await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "completed");
    let job_id: uuid::Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();

    let event = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT event, body FROM webhook_events WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await
        .unwrap()
    };
    eventually(Duration::from_secs(10), "the job's event", || async {
        !event().await.is_empty()
    })
    .await;
    let events = event().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "job.completed");
    let body: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(body["job"]["status"], "completed", "{body}");
    assert_eq!(body["job"]["skipped"], 2, "{body}");
}

/// An id whose point was dead-lettered may be claimed again (issue 24, point 6), and the old dead
/// letter is then superseded: the redrive `accrualctl` makes drops it, and the listener refuses it
/// should it come back anyway, so the id is credited exactly once.
#[tokio::test]
async fn an_id_whose_point_was_dead_lettered_is_claimed_again_and_credited_once() {
    let app = spawn_app().await;
    let pool = &app.env.pool;
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;
    let first = app
        .post(body(&[
            item_with_id("poison-1", 5, "tx-1"),
            item_with_id("m1", 1, "tx-2"),
        ]))
        .job_id()
        .await;
    let view = app.wait_final(&first).await;
    assert_eq!(view["status"], "completed_with_errors", "{view}");
    sqlx::query("ALTER TABLE point_accruals DROP CONSTRAINT no_poison")
        .execute(pool)
        .await
        .unwrap();
    let letters = accrual_core::dlq::list(&app.env.client, &app.env.queues.dlq, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let old_body = letters[0].body.clone();

    // The item sent again with the same id: accepted (the dead-lettered point holds it no more),
    // and `tx-2`, whose point is written, is still refused.
    let again = app.post(body(&[item_with_id("poison-1", 5, "tx-1")])).await;
    assert_eq!(again.status().as_u16(), 202);
    let again: Value = again.json().await.unwrap();
    let second = again["job_id"].as_str().unwrap().to_owned();
    problem(app.post(body(&[item_with_id("m1", 1, "tx-2")])).await, 422).await;
    let view = app.wait_final(&second).await;
    assert_eq!(view["status"], "completed", "{view}");

    // The redrive drops the superseded dead letter instead of moving it back.
    let moved = accrual_core::dlq::redrive_except_superseded(
        &app.env.client,
        &app.env.queues.dlq,
        &app.env.queues.main,
        100,
        pool,
    )
    .await
    .unwrap();
    assert_eq!((moved.messages, moved.dropped), (0, 1));

    // Put back by hand anyway, the listener refuses it as superseded.
    app.env.send_raw(&old_body).await;
    let old_id = accrual_core::dead_letter::PointIds::of(&old_body)
        .unwrap()
        .accrual_id;
    eventually(Duration::from_secs(30), "the old point refused", || async {
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM accrual_dead_letters WHERE accrual_id = ?")
                .bind(old_id)
                .fetch_one(pool)
                .await
                .unwrap();
        reason.starts_with("superseded")
    })
    .await;
    assert_eq!(app.external_id_counts().await.get("tx-1"), Some(&1));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE accrual_id = ?")
        .bind(old_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_dry_run_checks_external_ids_as_a_real_request_would() {
    let app = spawn_app().await;
    app.post(body(&[item_with_id("m", 5, "used")]))
        .job_id()
        .await;
    let items = body(&[item_with_id("m", 5, "used"), item_with_id("m", 7, "new")]);
    let refused = problem(app.post(items.clone()).query("?dry_run=true").await, 422).await;
    assert_eq!(refused["duplicates"][0]["index"], 0);
    let response = app
        .post(items)
        .query("?dry_run=true&on_duplicate=skip")
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["points"], 1);
    assert_eq!(answer["skipped"], 1);
    assert_eq!(answer["amounts"]["CAMPAIGN"], 7);
    // Nothing was claimed by the dry run.
    let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_external_ids")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(claimed, 1);
}
