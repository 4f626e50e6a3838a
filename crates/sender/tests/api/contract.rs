//! The OpenAPI contract against the live sender: every route is described, and schemathesis
//! (property-based fuzzing from the contract) finds no 5xx and no answer outside the contract.

use std::process::Command;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn openapi_json_describes_every_route_and_needs_no_key() {
    let app = spawn_app_with(|s| s.dispatch_tasks = 0).await;
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
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path}");
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
        s.dispatch_tasks = 0;
        s.rate_limits = "client_a=1000000/1000000000".into();
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
