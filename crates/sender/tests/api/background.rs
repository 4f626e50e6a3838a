//! The background runtime (#17): dispatch, completion, retention and webhooks run on threads of
//! their own at `DISPATCH_NICE`, so requests win the CPU; the work still gets done.

use std::time::Duration;

use accrual_sender::workers::runtime::THREAD_NAME;
use accrual_testkit::eventually;

use crate::helpers::{item, spawn_app_with};

/// `(thread id, nice)` of this process's threads named `name`, read from `/proc`.
fn threads_named(name: &str) -> Vec<(String, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread has just ended
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        found.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            nice_of(&stat),
        ));
    }
    found
}

/// Field 19 of `/proc/…/stat`, counted after the command name in parentheses (which may hold
/// spaces): the state is field 3.
fn nice_of(stat: &str) -> i32 {
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(19 - 3).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn background_threads_run_at_dispatch_nice_and_still_send_every_point() {
    // The test may itself run under `nice` (its threads inherit it); the background's goes above.
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    assert!(
        own < 15,
        "the test runs at nice {own}: it cannot see a lower priority"
    );
    let app = spawn_app_with(|s| s.dispatch.dispatch_nice = 15).await;
    app.spawn_listener().await;
    let body = format!(
        "[{}]",
        (0..50)
            .map(|i| item(&format!("nice-{i}"), "WELFARE", 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let job_id = app.post(body).job_id().await;

    let threads = threads_named(THREAD_NAME);
    assert!(
        !threads.is_empty(),
        "no thread named {THREAD_NAME}: the background tasks share the request threads"
    );
    // Other tests' senders in the same process (under `cargo test`) run at the default 10 (or
    // the test's own nice, if higher).
    assert!(
        threads.iter().any(|(_, nice)| *nice == 15)
            && threads.iter().all(|(_, nice)| *nice >= own.clamp(10, 15)),
        "background threads and their nice values: {threads:?} (the test's own: {own})"
    );
    // The request path keeps the process's priority.
    let now = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    assert_eq!(now, own);

    eventually(Duration::from_secs(30), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, 50);
}
