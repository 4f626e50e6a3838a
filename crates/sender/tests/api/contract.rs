//! The OpenAPI contract against the live sender: every route is described, schemathesis
//! (property-based fuzzing from the contract) finds no 5xx and no answer outside the contract, and
//! a Python client generated from it by openapi-python-client runs a whole campaign.

use std::process::Command;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn openapi_json_describes_every_public_route_and_needs_no_key() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let doc = app.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/accruals", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}", "delete"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/healthz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path}");
    }
    // Served on the operations port only, for Prometheus and the orchestrator: not the clients'.
    for path in ["/readyz", "/metrics"] {
        assert!(!paths.contains_key(path), "{path} in the public contract");
    }
    for status in ["400", "401", "413", "415", "422", "429"] {
        let response = &paths["/v1/accruals"]["post"]["responses"][status];
        assert!(
            response["content"]["application/problem+json"].is_object(),
            "{status}: {response}"
        );
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_contract() {
    // Nothing is sent to SQS (no dispatchers), and the fuzzer is not slowed down by rate limits.
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.rate.rate_limits = "client_a=1000000/1000000000".into();
    })
    .await;
    let schema = format!("{}/openapi.json", app.address);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemathesis");
    // The test's runtime keeps serving while schemathesis runs on a blocking thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .args([
                "run",
                &schema,
                "--header",
                "Authorization: Bearer key_a",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
                "--max-examples",
                "30",
                "--seed",
                "20261122",
                "--max-time",
                "150",
                "--request-timeout",
                "10",
            ])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_client_generated_from_the_contract_runs_a_campaign_post_follow_results_reversal_balance()
{
    let app = spawn_app().await;
    app.spawn_listener().await;
    let doc = app.get_json("/openapi.json").await;
    let dir =
        std::env::temp_dir().join(format!("accrual-generated-client-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("openapi.json");
    std::fs::write(&spec, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(&config, "package_name_override: accrual_client\n").unwrap();
    let package = dir.join("accrual_client");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/python-client");
    let campaign = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/generated_client/campaign.py"
    );
    let address = app.address.clone();
    // The test's runtime keeps serving while the generator and the campaign run on a blocking thread.
    let (generated, ran) = tokio::task::spawn_blocking(move || {
        let generated = Command::new(script)
            .arg("openapi-python-client")
            .args(["generate", "--meta", "none", "--path"])
            .arg(&spec)
            .arg("--config")
            .arg(&config)
            .arg("--output-path")
            .arg(&package)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let ran = Command::new(script)
            .args(["python", campaign, &address, "key_a"])
            .env("PYTHONPATH", &dir)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (generated, ran)
    })
    .await
    .unwrap();
    let generator_output = format!(
        "{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    assert!(
        generated.status.success(),
        "the generator failed:\n{generator_output}"
    );
    assert!(
        !generator_output.contains("Warning"),
        "the generator warned about the contract:\n{generator_output}"
    );
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the campaign failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["accepted"], 3, "{seen}");
    assert_eq!(seen["job_status"], "completed", "{seen}");
    assert_eq!(
        seen["outcomes"],
        serde_json::json!(["written", "written", "written"])
    );
    assert_eq!(seen["balance_credited"], 15, "{seen}");
    assert_eq!(seen["reversal_status"], "completed", "{seen}");
    assert_eq!(seen["balance_after_reversal"], 0, "{seen}");
}
