//! Patient CRUD round trips, ETags, archiving, lists, and the audit and outbox rows of writes.

use serde_json::{Value, json};

use crate::helpers::{WRITE_AUDIT_ROWS, expect_problem, patient_body, spawn_app};

#[tokio::test]
async fn a_patient_round_trips_through_create_read_replace_patch_and_archive() {
    let app = spawn_app().await;

    // Create.
    let response = app.post_json("/api/v1/patients", &patient_body(1)).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/patients/{id}"));
    assert_eq!(created["firstName"], "Анна");
    assert_eq!(created["middleName"], "Сергеевна");
    assert_eq!(created["birthDate"], "1985-03-14");
    assert_eq!(created["snils"], patient_body(1)["snils"]);
    assert_eq!(created["version"], 1);
    assert_eq!(created["archived"], false);

    // Read.
    let response = app.get(&location).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let read: Value = response.json().await.unwrap();
    assert_eq!(read, created);

    // Replace: optional fields left out are cleared.
    let replacement =
        json!({"firstName": "Мария", "lastName": "Петрова", "birthDate": "1990-01-02"});
    let response = app
        .client
        .put(app.url(&location))
        .header("If-Match", "\"1\"")
        .json(&replacement)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["firstName"], "Мария");
    assert_eq!(replaced["middleName"], Value::Null);
    assert_eq!(replaced["snils"], Value::Null);
    assert_eq!(replaced["version"], 2);

    // Patch: absent fields unchanged, null clears.
    let response = app
        .client
        .patch(app.url(&location))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"email": "maria@example.org", "middleName": "Ивановна"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["email"], "maria@example.org");
    assert_eq!(patched["middleName"], "Ивановна");
    assert_eq!(patched["firstName"], "Мария");
    assert_eq!(patched["version"], 3);
    let response = app
        .client
        .patch(app.url(&location))
        .json(&json!({"middleName": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["middleName"],
        Value::Null
    );

    // A patch that changes nothing writes nothing.
    let response = app
        .client
        .patch(app.url(&location))
        .json(&json!({"firstName": "Мария"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 4);

    // Archive: the record stays, read-only.
    let response = app.client.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let archived: Value = response.json().await.unwrap();
    assert_eq!(archived["archived"], true);
    assert!(archived["archivedAt"].is_string());
    assert_eq!(archived["version"], 5);
    let read: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(read["archived"], true);
    let body = expect_problem(
        app.client
            .patch(app.url(&location))
            .json(&json!({"firstName": "X"}))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(body["currentVersion"], 5);
    expect_problem(
        app.client.delete(app.url(&location)).send().await.unwrap(),
        409,
    )
    .await;

    // Every write left exactly one audit row and one outbox row.
    let db = app.db().await;
    let audit: Vec<(String, i64)> = db
        .query("SELECT action, (details->>'version')::bigint FROM audit_log WHERE object_id = $1::text::uuid AND action NOT LIKE '%.read' AND action NOT LIKE '%.list' ORDER BY id", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        audit,
        [
            ("patient.create".into(), 1),
            ("patient.update".into(), 2),
            ("patient.update".into(), 3),
            ("patient.update".into(), 4),
            ("patient.archive".into(), 5)
        ]
    );
    let events: Vec<(String, i64, Value)> = db
        .query("SELECT event_type, version, payload FROM outbox WHERE aggregate_id = $1::text::uuid ORDER BY created_at, version", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let types: Vec<&str> = events.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "PatientCreated",
            "PatientUpdated",
            "PatientUpdated",
            "PatientUpdated",
            "PatientDeleted"
        ]
    );
    assert_eq!(events[0].2["lastName"], created["lastName"]);
    assert_eq!(
        events[2].2,
        json!({"id": id, "updatedFields": {"email": "maria@example.org", "middleName": "Ивановна"}})
    );
    assert_eq!(events[4].2, json!({"id": id}));
    app.shutdown().await;
}

#[tokio::test]
async fn etags_guard_writes_and_reads() {
    let app = spawn_app().await;
    let created = app.create_patient(&patient_body(2)).await;
    let path = format!("/api/v1/patients/{}", created["id"].as_str().unwrap());

    // A stale If-Match is refused with the current version, and nothing is written.
    let response = app
        .client
        .patch(app.url(&path))
        .header("If-Match", "\"7\"")
        .json(&json!({"firstName": "Б"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 412).await;
    assert_eq!(problem["currentVersion"], 1);
    let response = app
        .client
        .put(app.url(&path))
        .header("If-Match", "W/\"2\"")
        .json(&patient_body(2))
        .send()
        .await
        .unwrap();
    expect_problem(response, 412).await;
    let response = app
        .client
        .delete(app.url(&path))
        .header("If-Match", "\"9\"")
        .send()
        .await
        .unwrap();
    expect_problem(response, 412).await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_log WHERE action NOT IN ('patient.create', 'patient.read')"
        )
        .await,
        0
    );

    // The current one, and `*`, are accepted.
    let response = app
        .client
        .patch(app.url(&path))
        .header("If-Match", "\"1\"")
        .json(&json!({"firstName": "Б"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["etag"], "\"2\"");
    let response = app
        .client
        .patch(app.url(&path))
        .header("If-Match", "*")
        .json(&json!({"firstName": "В"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["etag"], "\"3\"");

    // A malformed one is a 400 naming the header.
    let response = app
        .client
        .patch(app.url(&path))
        .header("If-Match", "3")
        .json(&json!({"firstName": "Г"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 400).await;
    assert_eq!(problem["errors"][0]["field"], "If-Match");

    // If-None-Match with the current tag answers 304.
    let response = app
        .client
        .get(app.url(&path))
        .header("If-None-Match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let response = app
        .client
        .get(app.url(&path))
        .header("If-None-Match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn lists_filter_paginate_and_hide_archived_patients() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (n, last_name, birth_date) in [
        (10, "Смирнова", "1970-05-01"),
        (11, "Смирнов", "1980-06-02"),
        (12, "Соколов", "1970-05-01"),
        (13, "Кузнецов", "1990-07-03"),
    ] {
        let mut body = patient_body(n);
        body["lastName"] = json!(last_name);
        body["birthDate"] = json!(birth_date);
        ids.push(
            app.create_patient(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let names = |page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["lastName"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let page: Value = app.get("/api/v1/patients").await.json().await.unwrap();
    assert_eq!(names(&page), ["Кузнецов", "Смирнов", "Смирнова", "Соколов"]);
    assert_eq!(
        (
            page["offset"].as_i64(),
            page["limit"].as_i64(),
            page["total"].as_i64()
        ),
        (Some(0), Some(20), Some(4))
    );

    let page: Value = app
        .get("/api/v1/patients?lastName=%D1%81%D0%BC%D0%B8%D1%80")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        names(&page),
        ["Смирнов", "Смирнова"],
        "prefix is case-insensitive"
    );
    let page: Value = app
        .get("/api/v1/patients?birthDate=1970-05-01")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&page), ["Смирнова", "Соколов"]);
    let page: Value = app
        .get("/api/v1/patients?offset=1&limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&page), ["Смирнов", "Смирнова"]);
    assert_eq!(page["total"], 4);
    let page: Value = app
        .get("/api/v1/patients?offset=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&page), Vec::<String>::new());
    assert_eq!(page["total"], 4);
    // LIKE wildcards in the filter match literally.
    let page: Value = app
        .get("/api/v1/patients?lastName=%25")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 0);

    app.client
        .delete(app.url(&format!("/api/v1/patients/{}", ids[0])))
        .send()
        .await
        .unwrap();
    let page: Value = app.get("/api/v1/patients").await.json().await.unwrap();
    assert_eq!(names(&page), ["Кузнецов", "Смирнов", "Соколов"]);
    let page: Value = app
        .get("/api/v1/patients?includeArchived=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 4);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_identifiers_conflict_and_write_nothing() {
    let app = spawn_app().await;
    app.create_patient(&patient_body(20)).await;
    let mut same_snils = patient_body(21);
    same_snils["snils"] = patient_body(20)["snils"].clone();
    let problem = expect_problem(app.post_json("/api/v1/patients", &same_snils).await, 409).await;
    assert_eq!(problem["errors"][0]["field"], "snils");
    let mut same_policy = patient_body(22);
    same_policy["omsPolicy"] = patient_body(20)["omsPolicy"].clone();
    let problem = expect_problem(app.post_json("/api/v1/patients", &same_policy).await, 409).await;
    assert_eq!(problem["errors"][0]["field"], "omsPolicy");

    // An update to a taken SNILS is refused and the patient is unchanged.
    let other = app.create_patient(&patient_body(23)).await;
    let path = format!("/api/v1/patients/{}", other["id"].as_str().unwrap());
    let response = app
        .client
        .patch(app.url(&path))
        .json(&json!({"snils": patient_body(20)["snils"]}))
        .send()
        .await
        .unwrap();
    expect_problem(response, 409).await;
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read, other);

    assert_eq!(app.count("SELECT count(*) FROM patients").await, 2);
    assert_eq!(app.count(WRITE_AUDIT_ROWS).await, 2);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 2);
    app.shutdown().await;
}
