//! Documents: versions, signing with the documented checksum, immutability, the registry
//! lifecycle.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, expect_problem, patient_body, spawn_app};

async fn setup(app: &TestApp) -> (String, String) {
    let patient = app.create_patient(&patient_body(1)).await;
    let doctor = app.create_doctor().await;
    (patient["id"].as_str().unwrap().to_owned(), doctor)
}

async fn patch(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/v1/documents/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn registry(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/documents/{id}/registry")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_edit_of_a_draft_is_a_version_and_the_history_is_complete_and_ordered() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let document = app.create_document(&patient, &doctor).await;
    let id = document["id"].as_str().unwrap();
    assert_eq!(document["status"], "draft");
    assert_eq!(document["contentVersion"], 1);

    let edited: Value = patch(&app, id, json!({"body": "Жалобы на кашель."}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(edited["contentVersion"], 2);
    let stale = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{id}")))
        .header("If-Match", "\"1\"")
        .json(&json!({"title": "Повторный осмотр"}))
        .send()
        .await
        .unwrap();
    expect_problem(stale, 412).await;
    let edited: Value = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{id}")))
        .header("If-Match", format!("\"{}\"", edited["version"]))
        .json(&json!({"title": "Повторный осмотр", "body": "Кашель прошёл."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edited["contentVersion"], 3);
    // An edit that changes nothing is not a version.
    let same: Value = patch(&app, id, json!({"body": "Кашель прошёл."}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["contentVersion"], 3);
    expect_problem(patch(&app, id, json!({})).await, 400).await;

    let history: Value = app
        .get(&format!("/api/v1/documents/{id}/versions"))
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<i64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["contentVersion"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(history["items"][0]["editedBy"], app.staff_subject.as_str());
    for (n, title, body) in [
        (1, "Осмотр терапевта", "Жалоб нет. АД 120/80."),
        (2, "Осмотр терапевта", "Жалобы на кашель."),
        (3, "Повторный осмотр", "Кашель прошёл."),
    ] {
        let version: Value = app
            .get(&format!("/api/v1/documents/{id}/versions/{n}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (version["title"].as_str(), version["body"].as_str()),
            (Some(title), Some(body))
        );
    }
    expect_problem(
        app.get(&format!("/api/v1/documents/{id}/versions/4")).await,
        404,
    )
    .await;
    expect_problem(
        app.get(&format!("/api/v1/documents/{id}/versions/zero"))
            .await,
        400,
    )
    .await;

    let events: Vec<String> = app
        .column(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1::text::uuid ORDER BY version",
            &[&id],
        )
        .await;
    assert_eq!(
        events,
        ["DocumentCreated", "DocumentUpdated", "DocumentUpdated"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn signing_stores_the_documented_checksum_and_makes_the_document_immutable() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let document = app.create_document(&patient, &doctor).await;
    let id = document["id"].as_str().unwrap();

    // The test vector: the canonical content, written out by hand.
    let canonical = format!(
        r#"{{"appointmentId":null,"authorId":"{doctor}","body":"Жалоб нет. АД 120/80.","contentVersion":1,"id":"{id}","patientId":"{patient}","title":"Осмотр терапевта","type":"consultation"}}"#
    );
    let expected = hex::encode(Sha256::digest(canonical.as_bytes()));

    // Only the doctor themself may sign, and only a doctor.
    let impostor = app.create_doctor().await;
    let response = app
        .anonymous
        .post(app.url(&format!("/api/v1/documents/{id}/sign")))
        .bearer_auth(app.doctor_token(&impostor))
        .json(&json!({"signerId": doctor, "signature": "MAIFAA==", "certificateThumbprint": "a".repeat(40)}))
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    let not_a_doctor = uuid::Uuid::new_v4().to_string();
    let problem = expect_problem(app.sign(id, &not_a_doctor).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "signerId");
    let response = app
        .anonymous
        .post(app.url(&format!("/api/v1/documents/{id}/sign")))
        .bearer_auth(app.doctor_token(&doctor))
        .json(&json!({"signerId": doctor, "signature": "not base64!", "certificateThumbprint": "xyz"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 400).await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["signature", "certificateThumbprint"]);
    let response = app
        .anonymous
        .post(app.url(&format!("/api/v1/documents/{id}/sign")))
        .bearer_auth(app.doctor_token(&doctor))
        .json(&json!({"signerId": doctor, "signature": "MAUFAA==", "certificateThumbprint": "a".repeat(64)}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_problem(response, 422).await["errors"][0]["field"],
        "signature"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM documents WHERE status = 'signed'")
            .await,
        0
    );

    let response = app.sign(id, &doctor).await;
    assert_eq!(response.status(), 200);
    let signed: Value = response.json().await.unwrap();
    assert_eq!(signed["status"], "signed");
    assert_eq!(signed["signature"]["checksum"], expected.as_str());
    assert_eq!(signed["signature"]["signerId"], doctor.as_str());
    assert_eq!(signed["signature"]["signature"], "MAIFAA==");
    assert!(signed["signature"]["signedAt"].is_string());

    // Immutable: edits and a second signature are refused with the current status.
    let problem = expect_problem(patch(&app, id, json!({"body": "подделка"})).await, 409).await;
    assert_eq!(problem["currentStatus"], "signed");
    let problem = expect_problem(app.sign(id, &doctor).await, 409).await;
    assert_eq!(problem["currentStatus"], "signed");
    // Even a direct write to PostgreSQL cannot change signed content.
    let error = app
        .db()
        .await
        .execute(
            "UPDATE documents SET body = 'подделка' WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap_err();
    assert!(format!("{error:?}").contains("immutable"), "{error:?}");
    let read: Value = app
        .get(&format!("/api/v1/documents/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["body"], "Жалоб нет. АД 120/80.");
    let signed_events = app
        .count("SELECT count(*) FROM outbox WHERE event_type = 'DocumentSigned'")
        .await;
    assert_eq!(signed_events, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn the_registry_lifecycle_allows_only_its_transitions() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let document = app.create_document(&patient, &doctor).await;
    let id = document["id"].as_str().unwrap();

    // Nothing is sent before signing.
    let problem = expect_problem(registry(&app, id, json!({"outcome": "sent"})).await, 409).await;
    assert_eq!(problem["currentStatus"], "draft");
    assert_eq!(app.sign(id, &doctor).await.status(), 200);
    let problem = expect_problem(
        registry(
            &app,
            id,
            json!({"outcome": "accepted", "registryId": "R-1"}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(problem["currentStatus"], "signed");

    let steps = [
        (json!({"outcome": "sent"}), "sent"),
        (
            json!({"outcome": "rejected", "reason": "нет СНИЛС"}),
            "rejected",
        ),
        (json!({"outcome": "sent"}), "sent"),
        (
            json!({"outcome": "accepted", "registryId": "EGISZ-42"}),
            "accepted",
        ),
    ];
    for (body, status) in steps {
        let response = registry(&app, id, body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["status"], status);
    }
    let read: Value = app
        .get(&format!("/api/v1/documents/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["registryId"], "EGISZ-42");
    for body in [
        json!({"outcome": "sent"}),
        json!({"outcome": "rejected", "reason": "поздно"}),
    ] {
        let problem = expect_problem(registry(&app, id, body).await, 409).await;
        assert_eq!(problem["currentStatus"], "accepted");
    }
    expect_problem(
        registry(&app, id, json!({"outcome": "accepted"})).await,
        400,
    )
    .await;
    expect_problem(registry(&app, id, json!({"outcome": "lost"})).await, 400).await;

    let events: Vec<String> = app
        .column(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1::text::uuid ORDER BY version",
            &[&id],
        )
        .await;
    assert_eq!(
        events,
        [
            "DocumentCreated",
            "DocumentSigned",
            "DocumentUpdated",
            "DocumentRegistryRejected",
            "DocumentUpdated",
            "DocumentRegistryAccepted"
        ]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn drafts_are_validated_and_their_references_checked() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let other = app.create_patient(&patient_body(2)).await;
    let other = other["id"].as_str().unwrap();
    let response = app
        .book(other, &doctor, &crate::helpers::hours_ahead(5), 30)
        .await;
    let others_appointment = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let draft = |changes: Value| {
        let mut body = json!({
            "patientId": patient, "authorId": doctor, "type": "referral",
            "title": "Направление", "body": "К кардиологу.",
        });
        for (key, value) in changes.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    for (changes, status, field) in [
        (json!({"type": "poem"}), 400, "type"),
        (json!({"title": ""}), 400, "title"),
        (json!({"body": "я".repeat(600_000)}), 400, "body"),
        (json!({"authorId": uuid::Uuid::new_v4()}), 422, "authorId"),
        (json!({"patientId": uuid::Uuid::new_v4()}), 422, "patientId"),
        (
            json!({"appointmentId": others_appointment}),
            422,
            "appointmentId",
        ),
    ] {
        let response = app
            .post_json("/api/v1/documents", &draft(changes.clone()))
            .await;
        let problem = expect_problem(response, status).await;
        assert_eq!(problem["errors"][0]["field"], field, "{changes}");
    }
    assert_eq!(app.count("SELECT count(*) FROM documents").await, 0);
    // A body of exactly 1 MiB is accepted.
    let response = app
        .post_json(
            "/api/v1/documents",
            &draft(json!({"body": "a".repeat(1024 * 1024)})),
        )
        .await;
    assert_eq!(response.status(), 201);

    // Lists filter and leave bodies out.
    app.create_document(other, &doctor).await;
    let page: Value = app
        .get(&format!(
            "/api/v1/documents?patientId={patient}&type=referral"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert!(page["items"][0].get("body").is_none());
    let page: Value = app
        .get(&format!("/api/v1/documents?authorId={doctor}&status=draft"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2);
    app.shutdown().await;
}
