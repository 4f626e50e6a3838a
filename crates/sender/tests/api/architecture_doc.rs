//! `docs/architecture.md` against the code, so the page a newcomer reads first stays true: every
//! route, setting (environment variable), metric and table it names exists, where and with the
//! default it says; and every public route, every setting, every metric and every table is named.
//!
//! The page states names in a form this test reads: in backticks outside fenced blocks, routes as
//! `METHOD /path`, settings as `UPPER_SNAKE` names, metrics as full `accrual_sender_…` or
//! `accrual_listener_…` names (a label set in braces allowed). Table rows carry the rest: a route's
//! row says where it is served (`API`, `ops`, `listener`), a setting's row its default, a table's
//! row the migration that creates it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use accrual_listener::ListenerSettings;
use accrual_listener::metrics::ListenerMetrics;
use accrual_sender::SenderSettings;
use accrual_sender::metrics::{JobLabels, RequestLabels, SenderMetrics, WebhookLabels};
use clap::CommandFactory;
use reqwest::{Method, StatusCode};

use crate::helpers::spawn_app_with;

/// The repository's root, where the page and the sources the checks read are.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The page, from the repository's root.
const PAGE: &str = "docs/architecture.md";

/// `accrualctl`'s arguments: a binary crate, so its clap command is read from its source.
const CTL_MAIN: &str = "crates/ctl/src/main.rs";

/// The methods a route on the page may have.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Settings read from the environment outside clap, with the source that reads them.
const READ_DIRECTLY: &[(&str, &str)] = &[
    ("RUST_LOG", "crates/core/src/telemetry.rs"),
    ("LOG_FORMAT", "crates/core/src/telemetry.rs"),
    ("AWS_ACCESS_KEY_ID", "crates/core/src/sqs.rs"),
];

#[tokio::test]
async fn routes_on_the_page_are_served_where_it_says_and_every_public_route_is_on_it() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let listener = app.spawn_listener_http().await;
    let contract = app.get_json("/openapi.json").await;
    let mut public = BTreeSet::new();
    for (path, item) in contract["paths"].as_object().unwrap() {
        // An operation is keyed by its method in lower case, beside keys such as `parameters`.
        let methods = item.as_object().unwrap().keys().map(|m| m.to_uppercase());
        for method in methods.filter(|m| METHODS.contains(&m.as_str())) {
            public.insert(format!("{method} {path}"));
        }
    }
    let page = read(PAGE);
    let rows: HashMap<String, String> = table_rows(&page)
        .filter_map(|cells| Some((route(single_span(&cells[0])?)?, cells.get(1)?.clone())))
        .collect();
    let mut problems = Vec::new();
    for named in spans(&page).filter_map(route) {
        if !rows.contains_key(&named) {
            problems.push(format!(
                "`{named}` is named but has no row in the routes table"
            ));
        }
    }
    for (named, served_on) in &rows {
        let (method, path) = named.split_once(' ').unwrap();
        for server in served_on.split(',').map(str::trim) {
            let served = match server {
                "API" => public.contains(named),
                "ops" => serves(&app.http, &app.ops_address, method, path).await,
                "listener" => serves(&app.http, &listener, method, path).await,
                other => {
                    problems.push(format!("`{named}`: `{other}` is not API, ops or listener"));
                    continue;
                }
            };
            if !served {
                problems.push(format!("`{named}` is not served on {server}"));
            }
        }
    }
    for route in public.iter().filter(|r| !rows.contains_key(*r)) {
        problems.push(format!(
            "`{route}` is in /openapi.json but not in the routes table"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn settings_on_the_page_exist_with_the_defaults_it_states_and_every_setting_is_on_it() {
    let settings = settings_in_code();
    let page = read(PAGE);
    let mut problems = Vec::new();
    let named: BTreeSet<&str> = spans(&page).filter(|s| is_setting(s)).collect();
    for name in &named {
        if !settings.contains_key(*name) {
            problems.push(format!(
                "`{name}` is not a setting of the sender, listener or accrualctl"
            ));
        }
    }
    for cells in table_rows(&page) {
        let Some(name) = single_span(&cells[0]).filter(|s| is_setting(s)) else {
            continue;
        };
        let stated = cells.get(1).map_or("", String::as_str);
        let (agrees, code) = match settings.get(name) {
            Some(CodeDefault::Value(d)) => (stated == format!("`{d}`"), format!("`{d}`")),
            // Words such as "none" or "empty", never a value in backticks.
            Some(CodeDefault::Nothing) => (!stated.starts_with('`'), "no default".into()),
            _ => continue,
        };
        if !agrees {
            problems.push(format!(
                "`{name}`: the page's default is {stated}, the code's {code}"
            ));
        }
    }
    for name in settings.keys().filter(|n| !named.contains(n.as_str())) {
        problems.push(format!("`{name}` is a setting the page does not name"));
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn metrics_on_the_page_are_registered_and_every_metric_is_on_it() {
    let registered: BTreeSet<String> = [sender_exposition(), ListenerMetrics::new().render()]
        .iter()
        .flat_map(|text| exposed_names(text))
        .collect();
    let page = read(PAGE);
    let named: BTreeSet<&str> = spans(&page).filter_map(metric).collect();
    let mut problems: Vec<String> = (named.iter())
        .filter(|n| !registered.contains(**n))
        .map(|n| format!("`{n}` is not a metric of the sender or the listener"))
        .collect();
    problems.extend(
        (registered.iter())
            .filter(|r| !named.contains(r.as_str()))
            .map(|r| format!("`{r}` is a metric the page does not name")),
    );
    assert!(
        problems.is_empty(),
        "docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn tables_on_the_page_are_created_by_the_migration_it_states_and_every_table_is_on_it() {
    let mut created = HashMap::new();
    let migrations = Path::new(ROOT).join("crates/core/migrations");
    for file in std::fs::read_dir(migrations).unwrap() {
        let file = file.unwrap().path();
        let number = file.file_name().unwrap().to_str().unwrap()[..4].to_owned();
        let sql = std::fs::read_to_string(&file).unwrap();
        for rest in sql.split("CREATE TABLE IF NOT EXISTS ").skip(1) {
            let table = rest.split_whitespace().next().unwrap().to_owned();
            created.insert(table, number.clone());
        }
    }
    let page = read(PAGE);
    let rows: HashMap<String, String> = table_rows(&page)
        .filter(|cells| {
            cells
                .get(1)
                .is_some_and(|c| c.len() == 4 && c.parse::<u16>().is_ok())
        })
        .filter_map(|cells| Some((single_span(&cells[0])?.to_owned(), cells[1].clone())))
        .collect();
    let mut problems = Vec::new();
    for (table, number) in &rows {
        match created.get(table) {
            Some(by) if by == number => {}
            Some(by) => problems.push(format!(
                "`{table}`: the page says {number}, created in {by}"
            )),
            None => problems.push(format!("`{table}` is created by no migration")),
        }
    }
    for table in created.keys().filter(|t| !rows.contains_key(*t)) {
        problems.push(format!("`{table}` has no row in the schema table"));
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

/// A file of the repository.
fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()
}

/// The lines of `page` outside fenced blocks (whose diagrams and examples name nothing checked).
fn prose(page: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    page.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// Every backticked span of the page's prose.
fn spans(page: &str) -> impl Iterator<Item = &str> {
    prose(page).flat_map(|line| line.split('`').skip(1).step_by(2))
}

/// The cells of every table row of the page's prose, trimmed.
fn table_rows(page: &str) -> impl Iterator<Item = Vec<String>> {
    prose(page)
        .map(str::trim)
        .filter(|line| line.starts_with('|') && !line.starts_with("|---"))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
}

/// The span a cell is made of, if it is exactly one backticked span.
fn single_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// `METHOD /path` (any query dropped), if the span is a route.
fn route(span: &str) -> Option<String> {
    let (method, path) = span.split_once(' ')?;
    let path = path.split('?').next()?;
    (METHODS.contains(&method) && path.starts_with('/') && !path.contains(' '))
        .then(|| format!("{method} {path}"))
}

/// Whether the span is an environment variable's name: `UPPER_SNAKE`, with at least one `_`.
fn is_setting(span: &str) -> bool {
    span.starts_with(|c: char| c.is_ascii_uppercase())
        && span.contains('_')
        && !span.ends_with('_')
        && span
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The metric a span names (its label set dropped), if it is one of ours.
fn metric(span: &str) -> Option<&str> {
    let name = span.split('{').next()?;
    let rest = ["accrual_sender_", "accrual_listener_"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let snake = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    (!rest.is_empty() && rest.chars().all(snake)).then_some(name)
}

/// Whether `base` answers `method path` with anything but "no such route" (404) or "no such
/// method" (405).
async fn serves(http: &reqwest::Client, base: &str, method: &str, path: &str) -> bool {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let response = http.request(method, format!("{base}{path}")).send().await;
    let status = response.unwrap().status();
    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED
}

/// The sender's registry as text, with one series in each labelled family: a family without any
/// is left out of the exposition altogether (a new family needs its series here, or the page
/// cannot name it).
fn sender_exposition() -> String {
    let metrics = SenderMetrics::for_clients(vec!["client_a".into()]);
    // Every configured client has its backlog series, and one that sent points its share.
    metrics.set_client_backlogs(&[]);
    let client = metrics.client_label("client_a");
    metrics
        .client_points_dispatched
        .get_or_create(&client)
        .inc();
    let request = RequestLabels {
        route: "/healthz".into(),
        method: "GET".into(),
        status: 200,
    };
    metrics.requests.get_or_create(&request).inc();
    let completed = JobLabels {
        status: "completed",
    };
    metrics.jobs_completed.get_or_create(&completed).inc();
    let delivered = WebhookLabels {
        result: "delivered",
    };
    metrics.webhook_attempts.get_or_create(&delivered).inc();
    metrics.render()
}

/// The names a registry's text exposition lets Prometheus query: a counter's with `_total`, the
/// others' as declared.
fn exposed_names(text: &str) -> Vec<String> {
    let declared = text.lines().filter_map(|line| line.strip_prefix("# TYPE "));
    (declared.filter_map(|d| d.split_once(' ')))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        })
        .collect()
}

/// A setting's default as the code states it.
#[derive(Debug, Clone, PartialEq)]
enum CodeDefault {
    Value(String),
    /// No default, or an empty one.
    Nothing,
    /// Read outside clap: no default to compare with.
    Unchecked,
}

/// Every setting of the three binaries, with its default.
fn settings_in_code() -> HashMap<String, CodeDefault> {
    let mut settings = HashMap::new();
    let mut add = |name: &str, default: Option<String>| {
        let default = default
            .filter(|d| !d.is_empty())
            .map_or(CodeDefault::Nothing, CodeDefault::Value);
        if let Some(other) = settings.insert(name.to_owned(), default.clone()) {
            assert_eq!(
                other, default,
                "{name} has two defaults: the page can state one"
            );
        }
    };
    for command in [SenderSettings::command(), ListenerSettings::command()] {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env() {
                let default = arg.get_default_values().iter().map(|d| d.to_string_lossy());
                add(
                    &name.to_string_lossy(),
                    Some(default.collect::<Vec<_>>().join(",")),
                );
            }
        }
    }
    for (name, default) in ctl_settings(&read(CTL_MAIN)) {
        add(&name, default);
    }
    for (name, source) in READ_DIRECTLY {
        assert!(
            read(source).contains(name),
            "{source} no longer reads {name}"
        );
        settings.insert((*name).to_owned(), CodeDefault::Unchecked);
    }
    settings
}

/// The `env = "…"` arguments of `accrualctl`'s source, with their defaults.
fn ctl_settings(source: &str) -> Vec<(String, Option<String>)> {
    let value_after = |line: &str, key: &str| {
        let rest = line.split_once(key)?.1;
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    };
    (source.lines())
        .filter_map(|line| {
            let name = line.split_once("env = \"")?.1.split('"').next()?.to_owned();
            let default = value_after(line, "default_value_t =")
                .or_else(|| value_after(line, "default_value ="));
            Some((name, default))
        })
        .collect()
}
