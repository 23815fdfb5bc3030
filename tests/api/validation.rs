//! Every validation rule and error status of the patient and doctor APIs: always RFC 7807,
//! naming the offending field, never 500, and nothing written.

use chrono::{Days, Utc};
use serde_json::{Value, json};

use crate::graphql::gql;
use crate::helpers::{
    TestApp, WRITE_AUDIT_ROWS, expect_problem, patient_body, problem_fields, spawn_app,
};

async fn assert_nothing_written(app: &TestApp) {
    for table in ["patients", "doctors", "audit_log", "outbox"] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} must stay empty"
        );
    }
}

#[tokio::test]
async fn each_invalid_patient_field_is_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let tomorrow = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap()
        .to_string();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("firstName", json!(""), "empty first name"),
        ("firstName", json!("   "), "blank first name"),
        (
            "firstName",
            json!("я".repeat(101)),
            "first name over 100 characters",
        ),
        ("lastName", json!(""), "empty last name"),
        (
            "lastName",
            json!("x".repeat(101)),
            "last name over 100 characters",
        ),
        ("middleName", json!(""), "empty middle name"),
        ("birthDate", json!(tomorrow), "birth date in the future"),
        (
            "birthDate",
            json!("1900-01-01"),
            "birth date not after 1900-01-01",
        ),
        ("birthDate", json!("1899-12-31"), "birth date before 1900"),
        ("birthDate", json!("14.03.1985"), "birth date not ISO"),
        ("email", json!("not-an-email"), "email without @"),
        (
            "email",
            json!("Anna <anna@example.org>"),
            "email with a display name",
        ),
        ("snils", json!("11223344596"), "SNILS with a wrong checksum"),
        ("snils", json!("1122334459"), "SNILS of 10 digits"),
        ("snils", json!("112-233-445 95"), "SNILS with separators"),
        (
            "omsPolicy",
            json!("123456789012345"),
            "OMS policy of 15 digits",
        ),
        (
            "omsPolicy",
            json!("12345678901234567"),
            "OMS policy of 17 digits",
        ),
        (
            "omsPolicy",
            json!("12345678901234x6"),
            "OMS policy with a letter",
        ),
        ("firstName", json!(42), "first name of the wrong type"),
        ("birthDate", json!(19850314), "birth date of the wrong type"),
    ];
    for (field, value, case) in cases {
        let mut body = patient_body(1);
        body[field] = value;
        let problem = expect_problem(app.post_json("/api/v1/patients", &body).await, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{case}: {problem}");
    }
    // Several invalid fields are reported together.
    let mut body = patient_body(1);
    body["firstName"] = json!("");
    body["snils"] = json!("00000000000x");
    let problem = expect_problem(app.post_json("/api/v1/patients", &body).await, 400).await;
    assert_eq!(problem_fields(&problem), ["firstName", "snils"]);
    assert_nothing_written(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_mistyped_unknown_and_oversized_bodies_are_refused() {
    let app = spawn_app().await;
    let post = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/api/v1/patients"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    // Malformed JSON.
    let problem = expect_problem(
        post(r#"{"firstName": "Анна""#, "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{problem}"
    );
    expect_problem(
        post(r#"{"firstName": "Анна"} trailing"#, "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    expect_problem(post("", "application/json").await.unwrap(), 400).await;
    expect_problem(post("[]", "application/json").await.unwrap(), 400).await;
    // Unknown field, named.
    let mut body = patient_body(1);
    body["nickname"] = json!("Аня");
    let problem = expect_problem(app.post_json("/api/v1/patients", &body).await, 400).await;
    assert_eq!(problem_fields(&problem), ["nickname"]);
    // Missing required field, named.
    let mut body = patient_body(1);
    body.as_object_mut().unwrap().remove("lastName");
    let problem = expect_problem(app.post_json("/api/v1/patients", &body).await, 400).await;
    assert_eq!(problem_fields(&problem), ["lastName"]);
    // Not JSON.
    expect_problem(
        post("firstName=Анна", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        415,
    )
    .await;
    expect_problem(
        app.client
            .post(app.url("/api/v1/patients"))
            .body("{}")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    // Over the size limit (2 MiB by default).
    let huge = format!(r#"{{"firstName": "{}"}}"#, "a".repeat(3 * 1024 * 1024));
    let response = app
        .client
        .post(app.url("/api/v1/patients"))
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_problem(response, 413).await;
    assert_nothing_written(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn patch_refuses_null_for_required_fields_and_invalid_values() {
    let app = spawn_app().await;
    let created = app.create_patient(&patient_body(3)).await;
    let path = format!("/api/v1/patients/{}", created["id"].as_str().unwrap());
    for (body, field) in [
        (json!({"firstName": null}), "firstName"),
        (json!({"birthDate": null}), "birthDate"),
        (json!({"lastName": ""}), "lastName"),
        (json!({"snils": "12345678901"}), "snils"),
        (json!({"unknown": 1}), "unknown"),
    ] {
        let response = app
            .client
            .patch(app.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{body}");
    }
    assert_eq!(app.count(WRITE_AUDIT_ROWS).await, 1, "only the create");
    app.shutdown().await;
}

#[tokio::test]
async fn ids_queries_and_routes_are_checked() {
    let app = spawn_app().await;
    let problem = expect_problem(app.get("/api/v1/patients/not-a-uuid").await, 400).await;
    assert_eq!(problem_fields(&problem), ["id"]);
    expect_problem(
        app.get(&format!("/api/v1/patients/{}", uuid::Uuid::new_v4()))
            .await,
        404,
    )
    .await;
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/patients/{}", uuid::Uuid::new_v4())))
        .json(&json!({"firstName": "A"}))
        .send()
        .await
        .unwrap();
    expect_problem(response, 404).await;
    expect_problem(
        app.client
            .delete(app.url(&format!("/api/v1/patients/{}", uuid::Uuid::new_v4())))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("birthDate=yesterday", "birthDate"),
        ("includeArchived=maybe", "includeArchived"),
        ("sort=name", "sort"),
        ("limit=5&limit=6", "limit"),
    ] {
        let problem =
            expect_problem(app.get(&format!("/api/v1/patients?{query}")).await, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{query}");
    }
    expect_problem(app.get("/api/v1/nowhere").await, 404).await;
    expect_problem(
        app.client
            .put(app.url("/api/v1/patients"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    assert_nothing_written(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn doctor_input_is_validated_too() {
    let app = spawn_app().await;
    let problem = expect_problem(
        app.post_json(
            "/api/v1/doctors",
            &json!({"firstName": "Иван", "lastName": "", "specialty": "терапевт"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(problem_fields(&problem), ["lastName"]);
    let problem = expect_problem(
        app.post_json(
            "/api/v1/doctors",
            &json!({"firstName": "Иван", "lastName": "Петров"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(problem_fields(&problem), ["specialty"]);
    let problem = expect_problem(
        app.post_json(
            "/api/v1/doctors",
            &json!({"firstName": "Иван", "lastName": "Петров", "specialty": "x".repeat(101)}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(problem_fields(&problem), ["specialty"]);
    assert_nothing_written(&app).await;
    app.shutdown().await;
}

/// U+0000 cannot be stored by PostgreSQL: wherever it comes in — a query parameter, a JSON
/// body on POST or PATCH, a GraphQL variable or literal — the answer is a 400 naming the
/// field (a GraphQL error with the same code), never a 500, and nothing is written.
#[tokio::test]
async fn a_nul_character_is_refused_naming_the_field_wherever_it_comes_in() {
    let app = spawn_app().await;
    for (path, field) in [
        ("/api/v1/patients?lastName=a%00b", "lastName"),
        ("/api/v1/doctors?specialty=a%00b", "specialty"),
        ("/api/v1/doctors?lastName=%00", "lastName"),
        ("/api/v1/search?q=a%00b", "q"),
    ] {
        let problem = expect_problem(app.get(path).await, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{path}: {problem}");
    }

    let patient = app.create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap();
    let doctor = app.create_doctor().await;
    let before = app.count("SELECT count(*) FROM documents").await;
    for (field, title, body) in [
        ("title", "Осмотр\u{0}", "Жалоб нет."),
        ("body", "Осмотр", "Жалоб\u{0} нет."),
    ] {
        let response = app
            .post_json(
                "/api/v1/documents",
                &json!({
                    "patientId": patient, "authorId": doctor, "type": "consultation",
                    "title": title, "body": body,
                }),
            )
            .await;
        let problem = expect_problem(response, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{problem}");
    }
    assert_eq!(app.count("SELECT count(*) FROM documents").await, before);

    let document = app.create_document(patient, &doctor).await;
    let id = document["id"].as_str().unwrap();
    for (field, edit) in [
        ("title", json!({"title": "\u{0}"})),
        ("body", json!({"body": "a\u{0}"})),
    ] {
        let response = app
            .client
            .patch(app.url(&format!("/api/v1/documents/{id}")))
            .json(&edit)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, 400).await;
        assert_eq!(problem_fields(&problem), [field], "{problem}");
    }
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/patients/{patient}")))
        .json(&json!({"middleName": "a\u{0}"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, 400).await;
    assert_eq!(problem_fields(&problem), ["middleName"], "{problem}");
    // An escaped backslash before "u0000" is text like any other.
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{id}")))
        .json(&json!({"body": "C:\\u0000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let versions = app.count("SELECT count(*) FROM document_versions").await;
    assert_eq!(versions, 2, "only the valid edit made a version");

    // GraphQL: a variable is refused before anything runs, naming its path; a literal in
    // the document reaches the same validation (or the store's own refusal), never a 500.
    let body = gql(
        &app,
        None,
        "query($p: String) { doctors(filter: {lastNamePrefix: $p}) { totalCount } }",
        json!({"p": "a\u{0}"}),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "validation-error",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["fields"][0]["field"], "variables.p",
        "{body}"
    );
    for query in [
        r#"{ doctors(filter: {lastNamePrefix: "a\u0000"}) { totalCount } }"#,
        r#"{ doctors(filter: {specialty: "a\u0000"}) { totalCount } }"#,
        r#"{ patients(filter: {lastNamePrefix: "a\u0000"}) { totalCount } }"#,
    ] {
        let body = gql(&app, None, query, json!({})).await;
        let code = body["errors"][0]["extensions"]["code"].clone();
        assert_eq!(code, "validation-error", "{query}: {body}");
    }
    let body = gql(
        &app,
        None,
        "mutation($input: PatientCreateInput!) { createPatient(input: $input) { patient { id } error { code } } }",
        json!({"input": {"firstName": "Анна", "lastName": "Ив\u{0}", "birthDate": "1990-01-01"}}),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "validation-error",
        "{body}"
    );
    app.shutdown().await;
}
