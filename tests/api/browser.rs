//! medflow's pages in a real browser: `tests/browser/pages.mjs` drives Debian's headless
//! Chromium (through playwright-core) through GraphiQL — a query and a subscription run from
//! the page — and Swagger UI's "Try it out", and fails on any page error or CSP violation.
//! `scripts/test` installs Chromium and the script's npm packages where missing.

use std::time::Duration;

use medflow_http::policy::Role;

use crate::cdc::wait_streaming;
use crate::helpers::{patient_body, run_tool, spawn_app_with};
use crate::subscriptions::wait_hub;

#[tokio::test]
async fn graphiql_and_swagger_ui_work_in_a_real_browser() {
    // Subscriptions need the WAL's events on the broker.
    let app = spawn_app_with(|settings| settings.cdc.enabled = true).await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    wait_hub(&app, "the hub to consume", |stats| stats.consuming).await;
    let patient = app.create_patient(&patient_body(7)).await;
    let token = app.token(&[Role::Registrar], None);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/pages.mjs");
    let mut node = std::process::Command::new("node");
    node.arg(script)
        .env("MEDFLOW_URL", &app.address)
        .env("MEDFLOW_TOKEN", token)
        .env("MEDFLOW_PATIENT", patient["id"].as_str().unwrap())
        .env(
            "CHROMIUM",
            std::env::var("MEDFLOW_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        );
    // The script bounds each of its waits (30 s), so it ends on its own.
    let stdout = run_tool(node, Duration::from_secs(180), "the browser checks").await;
    for check in [
        "ok - GraphiQL runs a query and shows the answer",
        "ok - GraphiQL runs a subscription and shows its events",
        "ok - Swagger UI \"Try it out\" runs GET /api/v1/patients/{id}",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    app.shutdown().await;
}
