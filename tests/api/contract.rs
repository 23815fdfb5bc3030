//! The OpenAPI document as a contract, checked from outside: schemathesis (PyPI, pinned in
//! `tests/schemathesis/requirements.txt`, installed by `scripts/test`) fuzzes every
//! operation and follows the document's links statefully, with the checks and statuses of
//! `tests/schemathesis/schemathesis.toml`, against the real application.

use std::time::Duration;

use medflow_http::policy::Role;

use crate::helpers::{run_tool, spawn_app_with};

#[tokio::test]
async fn schemathesis_finds_no_contract_violation() {
    let app = spawn_app_with(|settings| {
        // A fuzzer is one very fast client: the rate limit is tested elsewhere.
        settings.http.rate_limit_per_second = 100_000;
        settings.http.rate_limit_burst = 100_000;
        // `GET /search` answers 503 without an index.
        settings.search.enabled = true;
    })
    .await;
    let token = app.token(&[Role::Admin, Role::Registrar, Role::Doctor], None);
    let schemathesis = std::env::var("MEDFLOW_TEST_SCHEMATHESIS")
        .expect("MEDFLOW_TEST_SCHEMATHESIS is not set: run the tests through scripts/test");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let mut command = std::process::Command::new(schemathesis);
    command
        // Its caches (.hypothesis, .schemathesis) go under target/, not into the sources.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .arg("--config-file")
        .arg(format!("{dir}/schemathesis.toml"))
        .arg("run")
        .arg(app.url("/api/v1/openapi.json"))
        .arg("--url")
        .arg(&app.address)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .env("NO_COLOR", "1")
        // Rules a JSON Schema cannot state (tests/schemathesis/hooks.py).
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", dir);
    let stdout = run_tool(command, Duration::from_secs(900), "schemathesis").await;
    println!("{stdout}");
    app.shutdown().await;
}
