//! Members are in `members` before their points are queued, also when the sender remembers which
//! members exist (#17): a request whose members are partly known, partly new, and requests racing
//! over the same new members, leave no point referencing a missing member.

use std::time::Duration;

use accrual_testkit::eventually;

use crate::helpers::{TestApp, item, spawn_app, spawn_app_with};

fn body(members: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = members.map(|m| item(&m, "WELFARE", 2)).collect();
    format!("[{}]", items.join(","))
}

/// Members named in `point_accruals` that `members` does not hold.
async fn points_without_member(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM point_accruals p LEFT JOIN members m ON m.member_id = p.member_id \
         WHERE m.member_id IS NULL",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap()
}

async fn member_exists(app: &TestApp, member: &str) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM members WHERE member_id = ?")
        .bind(member)
        .fetch_one(&app.env.pool)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn known_and_new_members_are_all_in_members_before_the_202() {
    let app = spawn_app().await;
    // The first request makes 300 members known to the sender.
    app.post(body((0..300).map(|i| format!("km-{i:04}"))))
        .job_id()
        .await;
    assert_eq!(app.env.member_rows().await, 300);
    // The second names 200 of them again and 200 new ones; each new one is there at its 202.
    let second = app
        .post(body((100..500).map(|i| format!("km-{i:04}"))))
        .job_id()
        .await;
    assert_eq!(app.env.member_rows().await, 500);
    for i in [100, 299, 300, 499] {
        assert!(
            member_exists(&app, &format!("km-{i:04}")).await,
            "km-{i:04}"
        );
    }
    // Requests racing over the same new members all store them.
    let racing = (0..4).map(|r| {
        let members = (450 + r * 10..700 + r * 10).map(|i| format!("km-{i:04}"));
        app.post(body(members)).job_id()
    });
    let racing = futures_util::future::join_all(racing).await;
    assert_eq!(app.env.member_rows().await, 730);

    app.spawn_listener().await;
    for job_id in std::iter::once(&second).chain(&racing) {
        eventually(Duration::from_secs(60), "the job completed", || async {
            app.job_view(job_id).await["status"] == "completed"
        })
        .await;
    }
    assert_eq!(points_without_member(&app).await, 0);
}

/// The job's transaction keeps its connection until the job commits. Opened beside the member
/// look-ups and upserts (issue 24, point 6), it left them waiting for the same pool; with a pool of
/// one, for ever: the request got a 503 once DATABASE_ACQUIRE_TIMEOUT had passed.
#[tokio::test]
async fn a_sender_with_one_database_connection_accepts_a_job_of_new_members() {
    let app = spawn_app_with(|s| {
        s.database.database_max_connections = 1;
        s.database.database_acquire_timeout = Duration::from_secs(2);
    })
    .await;

    let response = app.post(body((0..50).map(|i| format!("one-{i:03}")))).await;

    let status = response.status().as_u16();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
    assert_eq!(app.env.member_rows().await, 50);
}
