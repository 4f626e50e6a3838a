//! The Grafana dashboard and the Prometheus alerts against live processes: Debian's Prometheus
//! scrapes a sender and a listener every second during a small run and loads
//! `infra/prometheus/alerts.yml`; then every dashboard expression and every rule expression is
//! evaluated through Prometheus's HTTP API and must return data. An expression on a metric we do
//! not export returns nothing, so a panel or an alert on a misspelt or removed metric fails here.
//!
//! Prometheus comes from `scripts/infra/install-prometheus` (found through `ACCRUAL_PROMETHEUS`,
//! or at that script's default path). `ACCRUAL_OBSERVABILITY_ROOT` points the test at another
//! copy of `infra/`, e.g. a deliberately broken one.

mod prometheus;
mod promql;

use std::path::{Path, PathBuf};
use std::time::Duration;

use accrual_listener::{Listener, ListenerSettings};
use accrual_testkit::eventually;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, item, spawn_app};
use prometheus::Prometheus;
use promql::{fill_in, metric_names, with_bool_comparisons};

/// Panels and alerts on SQS's own numbers (queue and DLQ depth, deletes), which only CloudWatch
/// has: our processes do not export them, so in production they come from
/// prometheus/cloudwatch_exporter (docs/observability.md) and here they cannot return data. Each
/// is still evaluated (it must parse), must name `aws_sqs_` metrics and none of ours, and every
/// expression on `aws_sqs_` metrics must be listed here.
const EXTERNAL: &[&str] = &[
    "Queue depth (CloudWatch)",
    "DLQ depth (CloudWatch)",
    "SqsDeadLetterQueueNotEmpty",
    "SqsQueueNotDraining",
];

/// Grafana's own variables as the test fills them in (`$__rate_interval` is at least four scrape
/// intervals; Prometheus scrapes every second here).
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

/// One expression to evaluate: the panel title or rule name it belongs to, and its PromQL.
struct Expression {
    owner: String,
    promql: String,
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_returns_data_from_a_live_sender_and_listener() {
    let root = std::env::var_os("ACCRUAL_OBSERVABILITY_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        PathBuf::from,
    );
    let dashboard = std::fs::read_to_string(root.join("infra/grafana/accrual.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let app = spawn_app().await;
    // MySQL refuses one member's points, so the run dead-letters a point as production would.
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(&app.env.pool)
    .await
    .unwrap();
    let (listener_port, _stop_listener) = spawn_listener(&app).await;
    // The sender's metrics are on its operations port (SENDER_OPS_ADDR), as Prometheus scrapes it.
    let sender_port: u16 = app.ops_address.rsplit(':').next().unwrap().parse().unwrap();
    let prometheus = Prometheus::start(
        &[
            ("accrual-sender", sender_port),
            ("accrual-listener", listener_port),
        ],
        &root.join("infra/prometheus/alerts.yml"),
    )
    .await;

    let items: Vec<String> = (0..300)
        .map(|i| match i {
            150 => item("poison-150", "WELFARE", 10),
            _ => item(&format!("member-{i}"), "WELFARE", 10),
        })
        .collect();
    let response = app.post(format!("[{}]", items.join(","))).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(120), "the job is final", || async {
        app.job_view(job_id).await["status"] == "completed_with_errors"
    })
    .await;
    // Every query is evaluated at one instant two seconds back: a scrape begun before it has
    // ended by then (the scrape timeout is a second), so a slow or failed scrape cannot make the
    // later queries find the targets' series gone stale. At that instant Prometheus has the whole
    // run and at least five scrapes of each process (a rate needs two in its window), both up;
    // and it has evaluated every rule.
    let at = std::cell::Cell::new(0.0);
    eventually(
        Duration::from_secs(30),
        "Prometheus to see the run",
        || async {
            at.set(unix_time() - 2.0);
            let seen = |q: &'static str| prometheus.scalar(q, at.get());
            seen("sum(accrual_listener_points_written_total)").await == Some(299.0)
                && seen("sum(accrual_listener_points_dead_lettered_total)").await == Some(1.0)
                && seen("min(count_over_time(up[1m]))").await >= Some(5.0)
                // A counter born late in the run (the job's completion) needs two samples for
                // `increase` to answer (CI run 11: "Jobs completed: no data").
                && seen("min(count_over_time(accrual_sender_jobs_completed_total[5m]))").await
                    >= Some(2.0)
                && seen("min(up)").await == Some(1.0)
                && prometheus
                    .rules()
                    .await
                    .iter()
                    .all(|r| r["health"] != "unknown")
        },
    )
    .await;
    let at = at.get();

    let mut problems = Vec::new();
    let rules = prometheus.rules().await;
    for rule in &rules {
        if rule["health"] != "ok" {
            problems.push(format!("rule {}: {}", rule["name"], rule["lastError"]));
        }
    }
    let mut expressions = dashboard_expressions(&dashboard, &mut problems);
    assert!(!expressions.is_empty() && !rules.is_empty());
    expressions.extend(rules.iter().map(|rule| Expression {
        owner: rule["name"].as_str().unwrap().to_owned(),
        // An alert returns nothing while it does not fire; its condition with `bool` returns 0
        // or 1 for every series it looks at, and nothing when a metric it names does not exist.
        promql: match rule["type"].as_str() {
            Some("alerting") => with_bool_comparisons(rule["query"].as_str().unwrap()),
            _ => rule["query"].as_str().unwrap().to_owned(),
        },
    }));
    let exported = prometheus.metric_names().await;
    for Expression { owner, promql } in &expressions {
        let external = EXTERNAL.contains(&owner.as_str());
        let names = metric_names(promql);
        for name in names.iter().filter(|n| n.starts_with("accrual_")) {
            if !exported.contains(name) {
                problems.push(format!("{owner}: no metric {name} on /metrics: {promql}"));
            }
        }
        let on_cloudwatch = names.iter().any(|n| n.starts_with("aws_sqs_"));
        if external != on_cloudwatch || (external && names.iter().any(|n| !n.starts_with("aws_"))) {
            problems.push(format!(
                "{owner}: EXTERNAL must list exactly the expressions on aws_sqs_ metrics alone: {promql}"
            ));
        }
        match prometheus.query(promql, at).await {
            Err(error) => problems.push(format!("{owner}: {error}: {promql}")),
            Ok(result) if result.is_empty() && !external => {
                problems.push(format!("{owner}: no data: {promql}"));
            }
            Ok(result) => println!("{owner}: {} series: {promql}", result.len()),
        }
    }
    for owner in EXTERNAL {
        if !expressions.iter().any(|e| e.owner == *owner) {
            problems.push(format!(
                "EXTERNAL names {owner}, which no panel or rule has"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {} expressions (Prometheus log: {}):\n{}",
        problems.len(),
        expressions.len(),
        prometheus.dir.join("prometheus.log").display(),
        problems.join("\n")
    );
}

/// Seconds since the Unix epoch, as Prometheus's API takes a time.
fn unix_time() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_secs_f64()
}

/// A listener on the app's queue and database; returns its HTTP port and a guard that stops it.
async fn spawn_listener(app: &TestApp) -> (u16, tokio_util::sync::DropGuard) {
    let mut settings =
        <ListenerSettings as clap::Parser>::try_parse_from(["accrual-listener"]).unwrap();
    settings.listener_addr = "127.0.0.1:0".parse().unwrap();
    settings.receive_wait_secs = 1;
    settings.batch_linger = Duration::from_millis(100);
    settings.shutdown_grace_secs = 5;
    settings.database = app.env.database.clone();
    settings.sqs = app.env.sqs.clone();
    settings.redis = app.env.redis.clone();
    let listener = Listener::build(settings).await.unwrap();
    let port = listener.port();
    let stop = CancellationToken::new();
    tokio::spawn(listener.run(stop.clone()));
    (port, stop.drop_guard())
}

/// Every query of every panel (rows' panels included), with Grafana's variables filled in: its
/// own as in [`GRAFANA_VARIABLES`], the dashboard's at their defaults.
fn dashboard_expressions(dashboard: &Value, problems: &mut Vec<String>) -> Vec<Expression> {
    let mut variables: Vec<(String, String)> = GRAFANA_VARIABLES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let value = v["current"]["value"].as_str().or(v["query"].as_str());
        variables.push((
            v["name"].as_str().unwrap().to_owned(),
            value.unwrap_or("").to_owned(),
        ));
    }
    let mut expressions = Vec::new();
    for panel in panels(&dashboard["panels"]) {
        let owner = panel["title"]
            .as_str()
            .unwrap_or("untitled panel")
            .to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                problems.push(format!("{owner}: a target without expr"));
                continue;
            };
            match fill_in(expr, &variables) {
                Ok(promql) => expressions.push(Expression {
                    owner: owner.clone(),
                    promql,
                }),
                Err(name) => problems.push(format!("{owner}: unknown variable ${name}: {expr}")),
            }
        }
    }
    expressions
}

/// Every panel in `list`, those inside rows included, in order.
fn panels(list: &Value) -> Vec<&Value> {
    let list = list.as_array().into_iter().flatten();
    list.flat_map(|p| std::iter::once(p).chain(panels(&p["panels"])))
        .collect()
}
