//! Doctors: create, read, list, replace with version checks, audited.

use serde_json::{Value, json};

use crate::helpers::{expect_problem, spawn_app};

#[tokio::test]
async fn doctors_round_trip_with_versions_and_audit() {
    let app = spawn_app().await;
    let response = app.post_json("/api/v1/doctors", &json!({"firstName": "Иван", "middleName": "Ильич", "lastName": "Петров", "specialty": "терапевт"})).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["version"], 1);
    app.post_json(
        "/api/v1/doctors",
        &json!({"firstName": "Ольга", "lastName": "Белова", "specialty": "кардиолог"}),
    )
    .await;

    let read = app.get(&location).await;
    assert_eq!(read.headers()["etag"], "\"1\"");
    assert_eq!(read.json::<Value>().await.unwrap(), created);

    let page: Value = app
        .get("/api/v1/doctors?specialty=%D0%BA%D0%B0%D1%80%D0%B4%D0%B8%D0%BE%D0%BB%D0%BE%D0%B3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["lastName"], "Белова");
    let page: Value = app
        .get("/api/v1/doctors?limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            page["total"].as_i64()
        ),
        (1, Some(2))
    );

    let update = json!({"firstName": "Иван", "lastName": "Петров", "specialty": "хирург"});
    let response = app
        .client
        .put(app.url(&location))
        .header("If-Match", "\"1\"")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 2);
    let response = app
        .client
        .put(app.url(&location))
        .header("If-Match", "\"1\"")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 412).await["currentVersion"], 2);
    let response = app
        .client
        .put(app.url(&format!("/api/v1/doctors/{}", uuid::Uuid::new_v4())))
        .json(&update)
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;

    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE object_type = 'doctor'")
            .await,
        3
    );
    app.shutdown().await;
}
