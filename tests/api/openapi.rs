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

    // The lifecycle steps are operations of their own, with their bodies' schemas.
    for step in ["start", "complete", "cancel", "reschedule"] {
        let path = format!("/api/v1/appointments/{{id}}/{step}");
        assert!(document["paths"][&path]["post"].is_object(), "{path}");
    }
    for (step, schema) in [("cancel", "CancelInput"), ("reschedule", "RescheduleInput")] {
        let body = &document["paths"][format!("/api/v1/appointments/{{id}}/{step}")]["post"]["requestBody"]
            ["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, &format!("#/components/schemas/{schema}"), "{step}");
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
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

/// Every status an operation answers to bad input is one its OpenAPI operation lists (what
/// schemathesis's `status_code_conformance` checks): a malformed id, a body of the wrong media
/// type, an empty JSON object, a malformed `If-Match`, a malformed `limit`.
#[tokio::test]
async fn every_status_answered_to_bad_input_is_documented() {
    let app = spawn_app().await;
    let document: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut undocumented = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let documented = |status: u16| operation["responses"][status.to_string()].is_object();
            let method_value =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let has_body = operation["requestBody"].is_object();
            let mut probes: Vec<(&str, reqwest::RequestBuilder)> = Vec::new();
            let real = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
            if path.contains("{id}") {
                let url = app.url(&path.replace("{id}", "not-a-uuid"));
                let mut request = app.client.request(method_value.clone(), url);
                if has_body {
                    request = request
                        .header("Content-Type", "application/json")
                        .body("{}");
                }
                probes.push(("a malformed id", request));
            }
            if has_body {
                probes.push((
                    "a text/plain body",
                    app.client
                        .request(method_value.clone(), app.url(&real))
                        .header("Content-Type", "text/plain")
                        .body("hello"),
                ));
                probes.push((
                    "an empty JSON object",
                    app.client
                        .request(method_value.clone(), app.url(&real))
                        .header("Content-Type", "application/json")
                        .body("{}"),
                ));
            }
            let takes = |name: &str| {
                operation["parameters"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|p| p["name"] == name))
            };
            if takes("If-Match") {
                let mut request = app
                    .client
                    .request(method_value.clone(), app.url(&real))
                    .header("If-Match", "garbage");
                if has_body {
                    request = request
                        .header("Content-Type", "application/json")
                        .body("{}");
                }
                probes.push(("a malformed If-Match", request));
            }
            if takes("limit") {
                let mut request = app
                    .client
                    .request(method_value.clone(), app.url(&format!("{real}?limit=abc")));
                if has_body {
                    request = request
                        .header("Content-Type", "application/json")
                        .body("{}");
                }
                probes.push(("a malformed limit", request));
            }
            for (what, request) in probes {
                let status = request.send().await.unwrap().status().as_u16();
                if !documented(status) {
                    undocumented.push(format!(
                        "{} {path} with {what}: {status}",
                        method.to_uppercase()
                    ));
                }
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "answered but not documented:\n{}",
        undocumented.join("\n")
    );
    app.shutdown().await;
}
