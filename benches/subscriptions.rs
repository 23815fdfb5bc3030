//! Subscription benchmark (issue "GraphQL"), run by `scripts/bench` against its private
//! PostgreSQL and tansu. Prints, on this machine:
//!
//! (a) memory per idle subscription with 10 000 subscriptions on one instance (100 WebSocket
//!     connections × 100 subscriptions, 100 subscribers per patient) — the process's RSS
//!     growth, clients' sockets included, so an upper bound (target < 20 KiB);
//! (b) latency from a REST write's event time (set in its transaction) to delivery at each
//!     subscriber of that patient, and to the last of them, p50/p99 (target p99 < 250 ms).

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;
#[path = "support/resident.rs"]
mod resident;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use medflow_actors::bus::hub::{HubMessage, HubStats};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use resident::resident_bytes;

const CONNECTIONS: usize = 100;
const PATIENTS: usize = 100;
const WRITES: usize = 200;
const WRITE_RATE: u64 = 20;

fn main() {
    if std::env::var("MEDFLOW_TEST_DATABASE_URL").is_err() {
        eprintln!("the benchmark needs the private stack: run scripts/bench");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn stats(app: &helpers::TestApp) -> HubStats {
    match app
        .app()
        .hub()
        .unwrap()
        .call(HubMessage::Stats, Some(Duration::from_secs(5)))
        .await
        .unwrap()
    {
        ractor::rpc::CallResult::Success(stats) => stats,
        other => panic!("{other:?}"),
    }
}

async fn run() {
    let app = helpers::spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.graphql.max_subscriptions_per_connection = PATIENTS;
    })
    .await;
    helpers::eventually(
        Duration::from_secs(60),
        "the pipeline and the hub",
        || async {
            let cdc: Value = app.get("/api/v1/admin/cdc").await.json().await.ok()?;
            (cdc["state"] == "streaming" && stats(&app).await.consuming).then_some(())
        },
    )
    .await;
    println!(
        "medflow subscription benchmark — {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut patients = Vec::with_capacity(PATIENTS);
    for n in 0..PATIENTS {
        let patient = app
            .create_patient(&helpers::patient_body(70_000 + n as u32))
            .await;
        patients.push(patient["id"].as_str().unwrap().to_owned());
    }
    let token = app.token(
        &[
            medflow_http::policy::Role::Admin,
            medflow_http::policy::Role::Doctor,
        ],
        None,
    );
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    // Per write (event id): the last delivery's latency.
    let last = Arc::new(Mutex::new(
        std::collections::HashMap::<String, (u64, usize)>::new(),
    ));
    let before = resident_bytes();
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut readers = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut request = format!("ws://{address}/graphql/ws")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        socket
            .send(Message::Text(
                json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
                    .to_string(),
            ))
            .await
            .unwrap();
        let _ack = socket.next().await;
        for (n, patient) in patients.iter().enumerate() {
            let query = format!(
                r#"subscription {{ patientChanged(id: "{patient}") {{ eventId eventType eventTimestamp }} }}"#
            );
            socket
                .send(Message::Text(
                    json!({"id": n.to_string(), "type": "subscribe", "payload": {"query": query}})
                        .to_string(),
                ))
                .await
                .unwrap();
        }
        let latencies = latencies.clone();
        let last = last.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let event = &value["payload"]["data"]["patientChanged"];
                // Only the measured writes: a creation's event may still arrive late.
                if event["eventType"] != "PatientUpdated" {
                    continue;
                }
                let (Some(id), Some(at)) =
                    (event["eventId"].as_str(), event["eventTimestamp"].as_str())
                else {
                    continue;
                };
                let Ok(at) = chrono::DateTime::parse_from_rfc3339(at) else {
                    continue;
                };
                let ms = (chrono::Utc::now().timestamp_micros() - at.timestamp_micros()).max(0)
                    as u64
                    / 1000;
                latencies.lock().await.record(ms).unwrap();
                let mut last = last.lock().await;
                let entry = last.entry(id.to_owned()).or_insert((0, 0));
                entry.0 = entry.0.max(ms);
                entry.1 += 1;
            }
        }));
    }
    let total = CONNECTIONS * PATIENTS;
    helpers::eventually(Duration::from_secs(120), "every subscription", || async {
        (stats(&app).await.subscriptions == total).then_some(())
    })
    .await;
    // Let allocations settle before reading the figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = resident_bytes();
    println!(
        "(a) {total} subscriptions on {CONNECTIONS} connections: RSS +{:.1} MiB, {:.1} KiB per subscription (target < 20 KiB; clients included)",
        (after.saturating_sub(before)) as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / total as f64
    );

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / WRITE_RATE));
    for n in 0..WRITES {
        ticker.tick().await;
        let patient = &patients[n % PATIENTS];
        let response = app
            .client
            .patch(app.url(&format!("/api/v1/patients/{patient}")))
            .header("content-type", "application/merge-patch+json")
            .json(&json!({"middleName": format!("Правка{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let expected = WRITES * CONNECTIONS;
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().await.len() < expected as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let latencies = latencies.lock().await;
    let mut to_all = Histogram::<u64>::new(3).unwrap();
    for (max, count) in last.lock().await.values() {
        if *count == CONNECTIONS {
            to_all.record(*max).unwrap();
        }
    }
    println!(
        "(b) {WRITES} writes at {WRITE_RATE}/s over {:.1} s, {} of {expected} deliveries: per subscriber p50 {} ms p99 {} ms; to all {CONNECTIONS} subscribers of the patient p50 {} ms p99 {} ms (target p99 < 250 ms)",
        started.elapsed().as_secs_f64(),
        latencies.len(),
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        to_all.value_at_quantile(0.5),
        to_all.value_at_quantile(0.99),
    );
    for reader in readers {
        reader.abort();
    }
    app.shutdown().await;
}
