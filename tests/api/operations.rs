//! Health, readiness, metrics, request ids, a database outage and graceful shutdown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    admin_url, eventually, expect_problem, patient_body, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn probes_and_metrics_answer() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"database": "ok"}})
    );

    app.create_patient(&patient_body(50)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("medflow_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/api/v1/patients\""), "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn every_metric_the_readme_names_is_described_and_counters_exist_before_they_happen() {
    // With the search indexer running, so a consumer group registers its series.
    let app = spawn_app_with(|settings| settings.search.enabled = true).await;
    let created = app.create_patient(&patient_body(54)).await;
    let path = format!("/api/v1/patients/{}", created["id"].as_str().unwrap());
    assert_eq!(app.get(&path).await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    // Every `medflow_*` name the README, the alerts and the dashboard mention has its HELP
    // line (a histogram's series named by their suffix).
    let sources = [
        include_str!("../../README.md"),
        include_str!("../../k8s/components/monitoring/prometheus-rules.yaml"),
        include_str!("../../k8s/components/monitoring/medflow-dashboard.json"),
    ];
    let mut named: Vec<&str> = sources
        .iter()
        .flat_map(|text| text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("medflow_") && word.len() > "medflow_".len())
        .filter(|word| !matches!(*word, "medflow_actors" | "medflow_audit" | "medflow_cdc"))
        .map(|word| word.strip_suffix("_bucket").unwrap_or(word))
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 20, "{named:?}");
    for name in &named {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP line"
        );
    }
    // Counters that had nothing to count yet are there at zero.
    for series in [
        r#"medflow_entity_actor_passivations_total{kind="appointment"} 0"#,
        r#"medflow_entity_actor_crashes_total{kind="document"}"#,
        r#"medflow_supervisor_restarts_total{child="audit_sealer"}"#,
        r#"medflow_audit_tampering_seen_total{operation="delete"}"#,
        "medflow_cdc_slot_recreated_total",
        r#"medflow_consumer_dead_lettered_total{group="#,
        r#"medflow_consumer_retried_total{group="#,
        r#"medflow_consumer_restarts_total{group="#,
        r#"medflow_consumer_dead_letters_waiting{group="#,
        // Histograms too, with empty buckets, before their first observation.
        r#"medflow_search_seconds_bucket{type="document",le="0.001"}"#,
    ] {
        assert!(metrics.contains(series), "{series} is missing");
    }
    // The read-audit batch size is counted in rows, with buckets for rows.
    assert!(
        metrics.contains(r#"medflow_audit_batch_rows_bucket{le="1000"}"#),
        "row buckets"
    );
    assert!(!metrics.contains(r#"medflow_audit_batch_rows_bucket{le="0.001"}"#));
    app.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_assigned() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let response = app.get("/healthz").await;
    let assigned = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(assigned).is_ok(), "{assigned}");

    // The request id and the acting principal are what the audit row records.
    let response = app
        .client
        .post(app.url("/api/v1/patients"))
        .header("X-Request-Id", "create-1")
        .json(&patient_body(51))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT actor_id, request_id, client_addr FROM audit_log WHERE action = 'patient.create'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), app.staff_subject);
    assert_eq!(row.get::<_, String>(1), "create-1");
    assert_eq!(row.get::<_, String>(2), "127.0.0.1");
    app.shutdown().await;
}

#[tokio::test]
async fn a_database_outage_answers_503_and_readiness_turns_red() {
    // The audit sealer seals once at start, then not for an hour: its slot, which would
    // keep the database from being dropped, can be dropped first without a race.
    let app = spawn_app_with(|settings| settings.audit.seal_interval_ms = 3_600_000).await;
    let created = app.create_patient(&patient_body(52)).await;
    let path = format!("/api/v1/patients/{}", created["id"].as_str().unwrap());

    // Take the database away underneath the running application.
    let (admin, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let slot = app.app().settings().audit.slot.clone();
    eventually(Duration::from_secs(20), "the sealing slot", || async {
        let dropped = admin
            .query_one(
                "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
                  WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .ok()?
            .get::<_, i64>(0);
        (dropped == 1).then_some(())
    })
    .await;
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", app.db_name))
        .await
        .unwrap();

    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "failing");

    // Writes answer 503 with Retry-After, not 500; the live actor still serves reads it holds.
    let response = app
        .client
        .patch(app.url(&path))
        .json(&json!({"firstName": "Вера"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    expect_problem(response, 503).await;
    let response = app.post_json("/api/v1/patients", &patient_body(53)).await;
    expect_problem(response, 503).await;
    let response = app.get("/api/v1/patients").await;
    expect_problem(response, 503).await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_requests() {
    let app = spawn_app().await;
    let created = app.create_patient(&patient_body(54)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/patients/{id}");

    // Hold the patient's row lock so the next update blocks inside PostgreSQL.
    let mut blocker = app.db().await;
    let lock = blocker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM patients WHERE id = $1::text::uuid FOR UPDATE",
        &[&id],
    )
    .await
    .unwrap();

    let in_flight = tokio::spawn(
        app.client
            .patch(app.url(&path))
            .json(&json!({"firstName": "Зоя"}))
            .send(),
    );
    let observer = app.db().await;
    eventually(Duration::from_secs(10), "the update to wait on the row lock", || async {
        let waiting: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE patients%'", &[])
            .await
            .unwrap()
            .get(0);
        (waiting == 1).then_some(())
    })
    .await;

    let address = app.address.clone();
    let shutdown = tokio::spawn(app.shutdown());
    // New connections are refused once shutdown began.
    eventually(Duration::from_secs(10), "the listener to close", || {
        let address = address.clone();
        async move {
            let fresh = reqwest::Client::new();
            fresh
                .get(format!("{address}/healthz"))
                .send()
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight request"
    );

    lock.commit().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["firstName"], "Зоя");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
}
