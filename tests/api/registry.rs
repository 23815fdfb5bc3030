//! The registry submitter, end to end: sign → CDC → `DocumentSigned` → RegistrySubmitter →
//! the registry stand-in → sent → accepted | rejected, every attempt logged.

use std::time::Duration;

use medflow::config::Settings;
use serde_json::Value;

use crate::cdc::shutdown_dropping_slot;
use crate::helpers::{TestApp, eventually, patient_body, spawn_app_with};
use crate::standins::{RegistryAnswer, RegistryStandIn, registry_fixtures};

const DEADLINE: Duration = Duration::from_secs(30);

/// An application submitting to `registry`, adjusted by `configure`.
async fn app_for(registry: &RegistryStandIn, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let url = registry.url();
    spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.registry.url = url;
        configure(settings);
    })
    .await
}

async fn registry_app(registry: &RegistryStandIn) -> TestApp {
    app_for(registry, |settings| {
        settings.registry.timeout_ms = 500;
        settings.consumers.retry_schedule_ms = vec![200, 200, 200, 200];
    })
    .await
}

/// Creates and signs a document; returns its id.
async fn signed_document(app: &TestApp, n: u32) -> String {
    let patient = app.create_patient(&patient_body(n)).await;
    let doctor = app.create_doctor().await;
    let document = app
        .create_document(patient["id"].as_str().unwrap(), &doctor)
        .await;
    let id = document["id"].as_str().unwrap().to_owned();
    assert_eq!(app.sign(&id, &doctor).await.status(), 200);
    id
}

async fn document_when(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(
        DEADLINE,
        &format!("the document to be {status}"),
        || async {
            let document: Value = app
                .get(&format!("/api/v1/documents/{id}"))
                .await
                .json()
                .await
                .ok()?;
            (document["status"] == status).then_some(document)
        },
    )
    .await
}

/// (attempt, outcome, http status) of the document's exchange log.
async fn exchange_log(app: &TestApp, id: &str) -> Vec<(i32, String, Option<i32>)> {
    let id: uuid::Uuid = id.parse().unwrap();
    app.db()
        .await
        .query(
            "SELECT attempt, outcome, http_status FROM document_exchange_events \
              WHERE document_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

async fn registry_group(app: &TestApp) -> Value {
    crate::consumers::consumer_group(app, "medflow.registry-submitter")
        .await
        .expect("the registry submitter runs")
}

#[tokio::test]
async fn a_registry_outage_is_retried_until_accepted() {
    // A stall past the client's timeout, then a 503, then the registry accepts.
    let registry = RegistryStandIn::start(vec![
        RegistryAnswer::Stall(Duration::from_millis(1500)),
        RegistryAnswer::Unavailable,
    ])
    .await;
    let app = registry_app(&registry).await;
    let id = signed_document(&app, 1).await;

    let document = document_when(&app, &id, "accepted").await;
    assert_eq!(document["registryId"], "REMD-000001");
    let log = exchange_log(&app, &id).await;
    assert_eq!(
        log,
        [
            (1, "failed".to_owned(), None),
            (2, "failed".to_owned(), Some(503)),
            (3, "accepted".to_owned(), Some(201)),
        ]
    );
    let requests = registry.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.idempotency_key.as_deref(), Some(id.as_str()));
        assert_eq!(request.body["documentId"], id.as_str());
        assert_eq!(request.body["signature"], crate::helpers::TEST_SIGNATURE);
        assert_eq!(request.body["checksum"].as_str().unwrap().len(), 64);
    }
    let group = registry_group(&app).await;
    assert_eq!(crate::consumers::retried(&group), 2, "{group}");
    assert_eq!(group["deadLettered"], 0, "{group}");

    // The registry's answer became a business event.
    let events = app
        .count(&format!(
            "SELECT count(*) FROM audit_log WHERE object_id = '{id}' AND actor_id = 'system:registry-submitter'"
        ))
        .await;
    assert!(
        events >= 2,
        "sent and accepted are audited as the submitter: {events}"
    );
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn a_registry_rejection_is_final_and_not_retried() {
    let registry = RegistryStandIn::start(vec![RegistryAnswer::Reject(
        "СНИЛС пациента не найден".into(),
    )])
    .await;
    let app = registry_app(&registry).await;
    let id = signed_document(&app, 2).await;

    let document = document_when(&app, &id, "rejected").await;
    assert_eq!(document["registryReason"], "СНИЛС пациента не найден");
    let group = eventually(DEADLINE, "the rejection to be committed", || async {
        let group = registry_group(&app).await;
        (group["succeeded"] == 1).then_some(group)
    })
    .await;
    assert_eq!(crate::consumers::retried(&group), 0, "{group}");
    assert_eq!(group["deadLettered"], 0, "{group}");
    assert_eq!(registry.requests().len(), 1);
    assert_eq!(
        exchange_log(&app, &id).await,
        [(1, "rejected".to_owned(), Some(422))]
    );
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn the_registry_is_reached_over_mutual_tls_with_the_configured_certificate() {
    let registry = RegistryStandIn::start_mutual_tls(vec![]).await;
    let fixtures = registry_fixtures();
    let app = app_for(&registry, |settings| {
        settings.registry.client_identity_file = fixtures.join("client-identity.pem");
        settings.registry.ca_file = fixtures.join("ca.pem");
    })
    .await;
    let id = signed_document(&app, 4).await;
    let document = document_when(&app, &id, "accepted").await;
    assert_eq!(document["registryId"], "REMD-000001");
    assert_eq!(registry.requests().len(), 1);
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn without_a_client_certificate_the_registry_is_unreachable_and_the_document_waits() {
    let registry = RegistryStandIn::start_mutual_tls(vec![]).await;
    let fixtures = registry_fixtures();
    let app = app_for(&registry, |settings| {
        // The server is trusted, but medflow presents no certificate of its own.
        settings.registry.ca_file = fixtures.join("ca.pem");
        settings.consumers.retry_schedule_ms = vec![200, 200];
    })
    .await;
    let id = signed_document(&app, 5).await;
    let log = eventually(DEADLINE, "the refused attempts to be logged", || async {
        let log = exchange_log(&app, &id).await;
        (log.len() == 3).then_some(log)
    })
    .await;
    assert!(
        log.iter()
            .all(|(_, outcome, status)| outcome == "failed" && status.is_none()),
        "{log:?}"
    );
    let group = eventually(DEADLINE, "the dead letter", || async {
        let group = registry_group(&app).await;
        (group["deadLettered"] == 1).then_some(group)
    })
    .await;
    assert_eq!(crate::consumers::retried(&group), 2, "{group}");
    assert!(registry.requests().is_empty(), "no request got through");
    let document: Value = app
        .get(&format!("/api/v1/documents/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        document["status"], "sent",
        "it waits for a replay: {document}"
    );
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn an_unusable_client_certificate_stops_start_up_with_the_key_named() {
    let (_, db_url) = crate::helpers::fresh_database().await;
    let mut settings = crate::helpers::test_settings(&db_url);
    settings.registry.url = "https://127.0.0.1:9/remd/v1/documents".into();
    // A certificate without its private key.
    settings.registry.client_identity_file = registry_fixtures().join("ca.pem");
    let error = match medflow::startup::Application::build(settings).await {
        Ok(_) => panic!("start-up must refuse the identity"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("registry.client_identity_file"),
        "the error names the key: {error}"
    );
    let mut settings = crate::helpers::test_settings(&db_url);
    settings.registry.url = "https://127.0.0.1:9/remd/v1/documents".into();
    settings.registry.ca_file = "/nonexistent/ca.pem".into();
    let error = match medflow::startup::Application::build(settings).await {
        Ok(_) => panic!("start-up must refuse a missing file"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("registry.ca_file"), "{error}");
}
