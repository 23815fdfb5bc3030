//! The OpenAPI document is valid OpenAPI 3.1 and describes what the server does: every
//! documented operation is routed, and real answers match their documented schemas.

use serde_json::{Value, json};

use crate::helpers::{patient_body, spawn_app};

/// Validates `instance` against the schema of `status` of `method path` in `document`.
fn assert_matches_schema(
    document: &Value,
    path: &str,
    method: &str,
    status: u16,
    instance: &Value,
) {
    let responses = &document["paths"][path][method]["responses"];
    let response = &responses[status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} does not document {status}"
    );
    let content = &response["content"];
    let media = content
        .as_object()
        .and_then(|c| c.values().next())
        .expect("documented content");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/$defs/subject",
        "$defs": { "subject": media["schema"] },
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the documented schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match its schema: {errors:?}\n{instance}"
    );
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_matches_the_server() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let document: Value = serde_json::from_str(&text).unwrap();

    // Every documented operation is routed (no 404/405 from the router).
    let sample_id = uuid::Uuid::new_v4();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{id}", &sample_id.to_string()));
            let method_value =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method_value, url)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && !(status == 404 && body["detail"] == "no such resource"),
                "{method} {path} is documented but not routed"
            );
        }
    }

    // Real answers match the documented schemas.
    let response = app.post_json("/api/v1/patients", &patient_body(60)).await;
    let created: Value = response.json().await.unwrap();
    assert_matches_schema(&document, "/api/v1/patients", "post", 201, &created);
    let id = created["id"].as_str().unwrap();
    let read: Value = app
        .get(&format!("/api/v1/patients/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_matches_schema(&document, "/api/v1/patients/{id}", "get", 200, &read);
    let page: Value = app.get("/api/v1/patients").await.json().await.unwrap();
    assert_matches_schema(&document, "/api/v1/patients", "get", 200, &page);
    let problem: Value = app
        .post_json("/api/v1/patients", &json!({"firstName": ""}))
        .await
        .json()
        .await
        .unwrap();
    assert_matches_schema(&document, "/api/v1/patients", "post", 400, &problem);
    let missing: Value = app
        .get(&format!("/api/v1/patients/{sample_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_matches_schema(&document, "/api/v1/patients/{id}", "get", 404, &missing);
    let doctor: Value = app
        .post_json(
            "/api/v1/doctors",
            &json!({"firstName": "Иван", "lastName": "Петров", "specialty": "терапевт"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_matches_schema(&document, "/api/v1/doctors", "post", 201, &doctor);

    // Swagger UI is served.
    let response = app.get("/docs/").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
    assert_eq!(app.get("/docs").await.status(), 301);
    app.shutdown().await;
}
