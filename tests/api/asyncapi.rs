//! The AsyncAPI document, checked two ways: `@asyncapi/parser` validates the document the
//! application serves, and every message the application really publishes for a clinic's
//! day — patients, appointments, documents through the registry, with transaction
//! metadata — must match a message its channel lists (`tests/asyncapi/validate.mjs`, ajv).

use std::collections::BTreeSet;
use std::time::Duration;

use medflow_actors::cdc::reader::{EVENT_TYPES, PUBLISHED_TABLES};
use rdkafka::Message;
use serde_json::{Value, json};

use crate::cdc::wait_streaming;
use crate::helpers::{hours_ahead, patient_body, run_tool, spawn_app_with};

/// Every business event a clinic's day publishes: all but `ErrorOccurred` (only an
/// unusable outbox row makes one; the reader's unit tests cover it).
fn events() -> impl Iterator<Item = &'static str> {
    EVENT_TYPES
        .into_iter()
        .filter(|event| *event != "ErrorOccurred")
}

#[tokio::test]
async fn the_asyncapi_document_is_valid_and_every_published_message_matches_it() {
    let app = spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.cdc.provide_transaction_metadata = true;
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;

    // Served without a token, like the OpenAPI document.
    let response = app
        .anonymous
        .get(app.url("/api/v1/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["asyncapi"], "3.0.0");

    // A day at the clinic: every business event but ErrorOccurred (only an unusable outbox
    // row makes one; the reader's unit tests cover it).
    let patient = app.create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let patient_path = format!("/api/v1/patients/{patient}");
    let response = app
        .client
        .patch(app.url(&patient_path))
        .json(&json!({"email": "new@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doctor = app.create_doctor().await;
    let booked = app.book(&patient, &doctor, &hours_ahead(30), 30).await;
    assert_eq!(booked.status(), 201);
    let appointment: Value = booked.json().await.unwrap();
    let cancel = app
        .client
        .post(app.url(&format!(
            "/api/v1/appointments/{}/cancel",
            appointment["id"].as_str().unwrap()
        )))
        .json(&json!({"reason": "пациент заболел"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let document_id = app.create_document(&patient, &doctor).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let edit = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{document_id}")))
        .json(&json!({"title": "Повторный осмотр"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 200);
    assert_eq!(app.sign(&document_id, &doctor).await.status(), 200);
    for outcome in [
        json!({"outcome": "sent"}),
        json!({"outcome": "rejected", "reason": "нет СНИЛС"}),
        json!({"outcome": "sent"}),
        json!({"outcome": "accepted", "registryId": "EGISZ-42"}),
    ] {
        let response = app
            .client
            .post(app.url(&format!("/api/v1/documents/{document_id}/registry")))
            .json(&outcome)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{outcome}");
    }
    let archived = app
        .client
        .delete(app.url(&patient_path))
        .send()
        .await
        .unwrap();
    assert!(archived.status().is_success(), "{}", archived.status());

    // Everything on the document's change, transaction and business channels.
    let addresses: Vec<String> = document["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter(|channel| {
            let description = channel["description"].as_str().unwrap_or_default();
            !description.contains("retry") && !description.contains("dead letters")
        })
        .map(|channel| channel["address"].as_str().unwrap().to_owned())
        .collect();
    let prefix = app.app().settings().kafka.topic_prefix.clone();
    let samples = consume(&app.app().settings().kafka.brokers, &addresses, |samples| {
        let types: BTreeSet<&str> = samples
            .iter()
            .filter_map(|sample| sample["value"]["eventType"].as_str())
            .collect();
        let tables: BTreeSet<&str> = samples
            .iter()
            .filter_map(|sample| sample["value"]["source"]["table"].as_str())
            .collect();
        let boundaries = samples
            .iter()
            .filter(|sample| sample["value"]["status"] == "END")
            .count();
        events().all(|event| types.contains(event))
            && PUBLISHED_TABLES
                .iter()
                .filter(|table| **table != "outbox")
                .all(|table| tables.contains(table))
            && boundaries > 0
    })
    .await;
    assert!(
        samples
            .iter()
            .all(|sample| sample["topic"].as_str().unwrap().starts_with(&prefix))
    );

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("asyncapi-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let document_path = dir.join("asyncapi.json");
    let samples_path = dir.join("samples.json");
    std::fs::write(
        &document_path,
        serde_json::to_vec_pretty(&document).unwrap(),
    )
    .unwrap();
    std::fs::write(&samples_path, serde_json::to_vec_pretty(&samples).unwrap()).unwrap();
    let mut node = std::process::Command::new("node");
    node.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/asyncapi/validate.mjs"
    ))
    .arg(&document_path)
    .arg(&samples_path);
    let report = run_tool(node, Duration::from_secs(120), "the AsyncAPI validation").await;
    println!("{report}");
    assert!(report.contains(", 0 failures"), "{report}");
    for event in events() {
        assert!(
            report.contains(&format!("\"{event}\":")),
            "{event} unmatched: {report}"
        );
    }
    for message in ["ChangeEvent", "TransactionBoundary"] {
        assert!(report.contains(&format!("\"{message}\":")), "{report}");
    }
    crate::cdc::shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn the_production_configurations_document_with_retry_and_dead_letter_channels_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/base/medflow.toml");
    let settings =
        medflow::config::Settings::load_without_env(Some(std::path::Path::new(path))).unwrap();
    let document = medflow::asyncapi::document(&settings);
    let channels = document["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 6 + 11 + 2 * 5, "{:?}", channels.keys());
    let dlq = channels["medflow.search-indexer.dlq"]["messages"]
        .as_object()
        .unwrap();
    for source in ["medflow.public.patients", "medflow.public.documents"] {
        let message = &dlq[&format!("deadLetter.{source}")];
        assert_eq!(message["name"], "DeadLetterChangeEvent");
        assert_eq!(
            message["headers"]["properties"]["x-original-topic"]["const"],
            source
        );
    }
    // `medflow asyncapi --config` prints the same document.
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_medflow"))
        .args(["asyncapi", "--config", path])
        .env_clear()
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, document);
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "asyncapi-k8s-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let mut node = std::process::Command::new("node");
    node.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/asyncapi/validate.mjs"
    ))
    .arg(&file);
    let report = run_tool(node, Duration::from_secs(60), "the AsyncAPI validation").await;
    assert!(report.contains("AsyncAPI 3.0.0: 27 channels"), "{report}");
}

/// Consumes `topics` from the beginning until `done` holds for the samples seen:
/// `{topic, key, headers, value}` (value null for a tombstone).
async fn consume(brokers: &str, topics: &[String], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let consumer = crate::cdc::reader_from_start(brokers, &names);
    let mut samples = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&samples) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; seen {samples:#?}"))
            .unwrap();
        let headers = crate::cdc::header_map(&message);
        samples.push(json!({
            "topic": message.topic(),
            "key": message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
            "headers": headers,
            "value": message
                .payload()
                .map(|payload| serde_json::from_slice::<Value>(payload).expect("a JSON value")),
        }));
    }
    samples
}
