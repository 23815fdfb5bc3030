//! W3C trace context end to end: a request's `traceparent` is continued by its server
//! span, carried through the outbox into the Kafka event's headers, and continued by the
//! consumer that reads the event (the registry submitter) and by the subscription hub;
//! spans reach an OTLP/HTTP collector (the stand-in in `standins.rs`). A request without a
//! `traceparent` starts a trace, and its event carries it.

use std::time::Duration;

use medflow::telemetry;
use serde_json::Value;

use crate::cdc::{consume_until, shutdown_dropping_slot, wait_streaming};
use crate::helpers::collector::collector;
use crate::helpers::{eventually, patient_body, spawn_app_with};
use crate::standins::RegistryStandIn;
use crate::subscriptions::wait_hub;

fn random_hex(bytes: usize) -> String {
    let mut text = String::new();
    while text.len() < bytes * 2 {
        text.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    text.truncate(bytes * 2);
    text
}

/// Waits for the trace `trace_id` to hold a span named `name`, flushing the exporter.
async fn span_named(trace_id: &str, name: &str) -> Value {
    eventually(Duration::from_secs(30), name, || async {
        telemetry::flush_traces();
        collector()
            .trace(trace_id)
            .into_iter()
            .find(|span| span["name"] == name)
    })
    .await
}

#[tokio::test]
async fn a_requests_trace_is_continued_through_kafka_by_consumers_and_subscriptions() {
    let registry = RegistryStandIn::start(Vec::new()).await;
    let url = registry.url();
    let app = spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.registry.url = url;
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    wait_hub(&app, "the hub to consume", |stats| stats.consuming).await;

    // A registrar's client sends a sampled trace context.
    let trace_id = random_hex(16);
    let client_span = random_hex(8);
    let response = app
        .client
        .post(app.url("/api/v1/patients"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&patient_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let patient: Value = response.json().await.unwrap();
    let patient = patient["id"].as_str().unwrap().to_owned();

    // The server span is the client span's child.
    let server = span_named(&trace_id, "POST /api/v1/patients").await;
    assert_eq!(server["parentSpanId"], client_span.as_str(), "{server}");
    assert_eq!(server["service"], "medflow");
    // The event on Kafka carries a traceparent naming the server span.
    let kafka = app.app().settings().kafka();
    let events = consume_until(
        &kafka.brokers,
        &kafka.topic("PatientCreated"),
        "PatientCreated",
        |seen| seen.iter().any(|(key, _)| key == &patient),
    )
    .await;
    assert!(!events.is_empty());
    let headers =
        crate::cdc::headers_of(&kafka.brokers, &kafka.topic("PatientCreated"), &patient).await;
    let carried = headers.get("traceparent").expect("a traceparent header");
    assert_eq!(
        carried,
        &format!("00-{trace_id}-{}-01", server["spanId"].as_str().unwrap())
    );
    // The subscription hub continues it.
    let delivered = span_named(&trace_id, "deliver PatientCreated").await;
    assert_eq!(delivered["parentSpanId"], server["spanId"], "{delivered}");

    // A signature's event is consumed by the registry submitter within the same trace.
    let doctor = app.create_doctor().await;
    let document = app.create_document(&patient, &doctor).await;
    let document = document["id"].as_str().unwrap();
    let sign_trace = random_hex(16);
    let response = app
        .anonymous
        .post(app.url(&format!("/api/v1/documents/{document}/sign")))
        .bearer_auth(app.doctor_token(&doctor))
        .header(
            "traceparent",
            format!("00-{sign_trace}-{}-01", random_hex(8)),
        )
        .json(&serde_json::json!({
            "signerId": doctor,
            "signature": crate::helpers::TEST_SIGNATURE,
            "certificateThumbprint": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let signed = span_named(&sign_trace, "POST /api/v1/documents/{id}/sign").await;
    let group = kafka.topic(medflow_actors::registry_submitter::GROUP);
    let consumed = span_named(&sign_trace, &format!("process {group}")).await;
    assert_eq!(consumed["parentSpanId"], signed["spanId"], "{consumed}");
    eventually(
        Duration::from_secs(30),
        "the registry to receive it",
        || async { (!registry.requests().is_empty()).then_some(()) },
    )
    .await;

    // Without a traceparent, a trace starts: the event carries one (not sampled: the
    // parent-based sampler records what callers sample).
    let plain = app.create_patient(&patient_body(2)).await;
    let plain = plain["id"].as_str().unwrap().to_owned();
    let headers =
        crate::cdc::headers_of(&kafka.brokers, &kafka.topic("PatientCreated"), &plain).await;
    let started = headers.get("traceparent").expect("a trace was started");
    let parts: Vec<&str> = started.split('-').collect();
    assert_eq!(parts.len(), 4, "{started}");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], trace_id);
    shutdown_dropping_slot(app).await;
}
