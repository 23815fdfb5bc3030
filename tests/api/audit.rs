//! The audit trail of reads and writes, and the application role's grants on it.

use serde_json::Value;
use tokio_postgres::NoTls;

use crate::helpers::{expect_problem, fresh_database, patient_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn reads_and_writes_of_clinical_data_are_audited_and_refusals_are_not() {
    let app = spawn_app().await;
    let patient = app.create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let doctor = app.create_doctor().await;
    let booked = app
        .book(&patient, &doctor, &crate::helpers::hours_ahead(3), 30)
        .await;
    let appointment = booked.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let document = app.create_document(&patient, &doctor).await;
    let document = document["id"].as_str().unwrap().to_owned();
    let rows = app.count("SELECT count(*) FROM audit_log").await;

    for path in [
        format!("/api/v1/patients/{patient}"),
        "/api/v1/patients".to_owned(),
        format!("/api/v1/appointments/{appointment}"),
        format!("/api/v1/appointments?patientId={patient}"),
        format!("/api/v1/documents/{document}"),
        format!("/api/v1/documents?patientId={patient}"),
        format!("/api/v1/documents/{document}/versions"),
        format!("/api/v1/documents/{document}/versions/1"),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .header("X-Request-Id", format!("read-{}", path.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let actions: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT action FROM audit_log WHERE chain_seq > $1 ORDER BY chain_seq",
            &[&rows],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "patient.read",
            "patient.list",
            "appointment.read",
            "appointment.list",
            "document.read",
            "document.list",
            "document.versions",
            "document.version.read",
        ]
    );
    let by_staff = app.count(&format!(
        "SELECT count(*) FROM audit_log WHERE chain_seq > {rows} AND actor_id = '{}' AND request_id LIKE 'read-%' AND client_addr = '127.0.0.1'",
        app.staff_subject
    ))
    .await;
    assert_eq!(by_staff, 8);

    // Refused requests leave nothing: unknown ids, bad ids, forbidden, unauthenticated.
    let before = app.count("SELECT count(*) FROM audit_log").await;
    let unknown = uuid::Uuid::new_v4();
    expect_problem(app.get(&format!("/api/v1/patients/{unknown}")).await, 404).await;
    expect_problem(app.get(&format!("/api/v1/documents/{unknown}")).await, 404).await;
    expect_problem(app.get("/api/v1/appointments/not-a-uuid").await, 400).await;
    let management = app.token(&[medflow_http::policy::Role::Management], None);
    let response = app
        .anonymous
        .get(app.url(&format!("/api/v1/documents/{document}")))
        .bearer_auth(management)
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    let response = app
        .anonymous
        .get(app.url(&format!("/api/v1/patients/{patient}")))
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, before);

    // The audit listing answers "who touched this object".
    let listing: Value = app
        .get(&format!("/api/v1/audit?objectId={document}"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "document.version.read",
            "document.versions",
            "document.list",
            "document.read",
            "document.create",
        ]
    );
    let verify: Value = app
        .get("/api/v1/admin/audit/verify")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verify["valid"], true);
    app.shutdown().await;
}

#[tokio::test]
async fn the_application_role_cannot_update_or_delete_audit_rows() {
    // A database owned by an ordinary role, as in production: the migrations run as that
    // role, and revoke its UPDATE and DELETE on the audit log.
    let (name, admin_url) = fresh_database().await;
    let role = format!("app_{name}");
    let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {name} OWNER TO {role}; \
             ALTER SCHEMA public OWNER TO {role};"
        ))
        .await
        .unwrap();
    let role_url = admin_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        role_url, admin_url,
        "the test cluster URL names the postgres user"
    );
    let app = spawn_app_with(|settings| settings.database.url = role_url.clone().into()).await;
    app.create_patient(&patient_body(1)).await;

    let (client, connection) = tokio_postgres::connect(&role_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    for sql in [
        "UPDATE audit_log SET actor_id = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let error = client.batch_execute(sql).await.unwrap_err();
        let error = format!("{error:?}");
        assert!(error.contains("permission denied"), "{sql}: {error}");
    }
    // Appending still works (the application's own writes above did).
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM audit_log", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    app.shutdown().await;
}
