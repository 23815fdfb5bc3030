//! GraphQL against the real application: filters and cursor pagination, nested loading in a
//! constant number of queries, limits, permissions per field, mutations with payload errors.

use medflow_http::policy::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, hours_ahead, patient_body, spawn_app, spawn_app_with};

/// Runs `query` with the staff token (or `token`) and returns the whole response body.
pub(crate) async fn gql(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let request = match token {
        Some(token) => app.anonymous.post(app.url("/graphql")).bearer_auth(token),
        None => app.client.post(app.url("/graphql")),
    };
    let response = request
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn messages(body: &Value) -> String {
    body["errors"].to_string()
}

#[tokio::test]
async fn lists_filter_and_page_with_cursors_at_the_boundaries() {
    let app = spawn_app().await;
    for n in 0..5u32 {
        let mut body = patient_body(50_000 + n);
        body["lastName"] = json!(format!("Граф{n}"));
        body["birthDate"] = json!(format!("198{n}-01-01"));
        app.create_patient(&body).await;
    }
    app.create_patient(&patient_body(50_100)).await;
    let query = r#"query($after: String) {
        patients(filter: {lastNamePrefix: "граф"}, first: 2, after: $after) {
            totalCount
            pageInfo { hasNextPage hasPreviousPage endCursor }
            edges { cursor node { lastName } }
        }
    }"#;
    let mut names = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let body = gql(&app, None, query, json!({"after": after})).await;
        let page = &body["data"]["patients"];
        assert_eq!(page["totalCount"], 5, "{body}");
        assert_eq!(page["pageInfo"]["hasPreviousPage"], pages > 0);
        for edge in page["edges"].as_array().unwrap() {
            names.push(edge["node"]["lastName"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["Граф0", "Граф1", "Граф2", "Граф3", "Граф4"]);

    let body = gql(
        &app,
        None,
        r#"{ patients(filter: {lastNamePrefix: "граф", bornFrom: "1981-01-01", bornTo: "1983-01-01"}) {
                totalCount edges { node { lastName } } } }"#,
        json!({}),
    )
    .await;
    let found: Vec<&str> = body["data"]["patients"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["lastName"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["Граф1", "Граф2", "Граф3"]);

    // Orders, paged across a boundary: birth date descending, two per page.
    let ordered = r#"query($after: String) {
        patients(filter: {lastNamePrefix: "граф"}, orderBy: BIRTH_DATE_DESC, first: 2, after: $after) {
            pageInfo { hasNextPage endCursor } edges { node { lastName } } } }"#;
    let first_page = gql(&app, None, ordered, json!({"after": null})).await;
    let cursor = first_page["data"]["patients"]["pageInfo"]["endCursor"].clone();
    let second_page = gql(&app, None, ordered, json!({"after": cursor})).await;
    let names = |page: &Value| -> Vec<String> {
        page["data"]["patients"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["lastName"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first_page), ["Граф4", "Граф3"], "{first_page}");
    assert_eq!(names(&second_page), ["Граф2", "Граф1"], "{second_page}");
    let by_name = gql(
        &app,
        None,
        r#"{ patients(filter: {lastNamePrefix: "граф"}, orderBy: NAME_DESC, first: 1) {
                edges { node { lastName } } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(names(&by_name), ["Граф4"]);

    // Appointments by start time, either way.
    let doctor = app.create_doctor().await;
    let patient = app.create_patient(&patient_body(50_200)).await;
    let patient = patient["id"].as_str().unwrap();
    for hours in [50, 26] {
        assert_eq!(
            app.book(patient, &doctor, &hours_ahead(hours), 30)
                .await
                .status(),
            201
        );
    }
    let starts = |order: &str| {
        let query = format!(
            r#"{{ appointments(orderBy: {order}, filter: {{doctorId: "{doctor}"}}) {{
                    edges {{ node {{ startsAt }} }} }} }}"#
        );
        let app = &app;
        async move {
            let body = gql(app, None, &query, json!({})).await;
            body["data"]["appointments"]["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .iter()
                .map(|e| e["node"]["startsAt"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let ascending = starts("ASC").await;
    assert_eq!(ascending.len(), 2);
    assert!(ascending[0] < ascending[1], "{ascending:?}");
    let mut descending = starts("DESC").await;
    descending.reverse();
    assert_eq!(descending, ascending);

    let body = gql(
        &app,
        None,
        "{ patients(first: 101) { totalCount } }",
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&body), ["validation-error"], "{body}");
    let body = gql(
        &app,
        None,
        r#"{ appointments(filter: {status: "lost"}) { totalCount } }"#,
        json!({}),
    )
    .await;
    assert_eq!(error_codes(&body), ["validation-error"], "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_page_of_fifty_patients_with_their_children_costs_a_constant_number_of_queries() {
    let app = spawn_app().await;
    let doctor = app.create_doctor().await;
    for n in 0..50u32 {
        let mut body = patient_body(51_000 + n);
        body["lastName"] = json!(format!("Пакет{}", 100 + n));
        let patient = app.create_patient(&body).await;
        let patient = patient["id"].as_str().unwrap();
        let booked = app
            .book(patient, &doctor, &hours_ahead(24 + i64::from(n)), 30)
            .await;
        assert_eq!(booked.status(), 201);
        app.create_document(patient, &doctor).await;
    }
    let query = r#"query($first: Int) {
        patients(filter: {lastNamePrefix: "Пакет"}, first: $first) {
            edges { node {
                id lastName
                appointments { id status doctor { lastName } patient { id } documents { id } }
                documents { id title author { lastName } patient { id } }
            } }
        }
    }"#;
    let store = app.app().store();
    let mut costs = Vec::new();
    for first in [5, 50] {
        // The store's counter also counts what runs beside the request (the consumers
        // indexing what was just written): the least of three runs is the request's cost.
        let mut cost = u64::MAX;
        let mut body = Value::Null;
        for _ in 0..3 {
            let before = store.operations();
            body = gql(&app, None, query, json!({"first": first})).await;
            cost = cost.min(store.operations() - before);
        }
        assert!(body["errors"].is_null(), "{body}");
        let edges = body["data"]["patients"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), first);
        for edge in edges {
            let node = &edge["node"];
            assert_eq!(node["appointments"].as_array().unwrap().len(), 1);
            assert_eq!(node["appointments"][0]["doctor"]["lastName"], "Сидоров");
            assert_eq!(node["appointments"][0]["patient"]["id"], node["id"]);
            assert_eq!(node["documents"][0]["author"]["lastName"], "Сидоров");
        }
        costs.push(cost);
    }
    println!(
        "store operations: 5 patients {}, 50 patients {}",
        costs[0], costs[1]
    );
    // A list, its count and one batch per nested kind, plus the audit of what was read:
    // without batching, 50 patients would take hundreds.
    // (A batch can split in two when its loads do not all arrive within the loader's delay
    // on a loaded machine; per-item loading would take over 250.)
    assert!(
        costs[1] <= 24,
        "50 patients took {} store operations",
        costs[1]
    );
    assert!(
        costs[1] <= costs[0] * 2,
        "the cost grew with the page: {costs:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn abusive_queries_are_refused_by_depth_and_complexity_limits() {
    let app = spawn_app().await;
    let deep = r#"{ patients(first: 1) { edges { node { appointments(first: 1) { patient {
        appointments(first: 1) { patient { appointments(first: 1) { patient {
        appointments(first: 1) { patient { id } } } } } } } } } } } }"#;
    let body = gql(&app, None, deep, json!({})).await;
    assert!(body["data"].is_null(), "{body}");
    assert!(messages(&body).contains("nested too deep"), "{body}");
    assert_eq!(error_codes(&body), ["query-too-deep"]);

    let costly = r#"{ patients(first: 100) { edges { node {
        appointments(first: 100) { documents { id title } } } } } }"#;
    let body = gql(&app, None, costly, json!({})).await;
    assert!(body["data"].is_null(), "{body}");
    assert!(messages(&body).contains("too complex"), "{body}");
    assert_eq!(error_codes(&body), ["query-too-complex"]);
    let body = gql(&app, None, "{ patients { nonsense } }", json!({})).await;
    assert_eq!(error_codes(&body), ["invalid-query"], "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn tokens_and_permissions_apply_to_every_field() {
    let app = spawn_app().await;
    // No token: 401 like the REST API.
    let response = app
        .anonymous
        .post(app.url("/graphql"))
        .json(&json!({"query": "{ patients { totalCount } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));

    let doctor = app.create_doctor().await;
    let own = app.create_patient(&patient_body(52_000)).await;
    let other = app.create_patient(&patient_body(52_001)).await;
    let own_id = own["id"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(
        app.book(other_id, &doctor, &hours_ahead(30), 30)
            .await
            .status(),
        201
    );
    let patient_token = app.token(&[Role::Patient], Some(own_id.parse().unwrap()));

    let query = "query($id: UUID!) { patient(id: $id) { id lastName } }";
    let body = gql(&app, Some(&patient_token), query, json!({"id": own_id})).await;
    assert_eq!(body["data"]["patient"]["id"], own_id, "{body}");
    let body = gql(&app, Some(&patient_token), query, json!({"id": other_id})).await;
    assert_eq!(body["data"]["patient"], Value::Null);
    assert_eq!(error_codes(&body), ["forbidden"], "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["patient"]));

    // Not through lists, cards or another patient's appointments either.
    for query in [
        "{ patients { totalCount } }".to_owned(),
        format!(r#"{{ patientCard(id: "{other_id}") {{ patient {{ id }} }} }}"#),
        format!(r#"{{ appointments(filter: {{patientId: "{other_id}"}}) {{ totalCount }} }}"#),
        format!(r#"{{ documents(filter: {{patientId: "{other_id}"}}) {{ totalCount }} }}"#),
    ] {
        let body = gql(&app, Some(&patient_token), &query, json!({})).await;
        assert_eq!(error_codes(&body), ["forbidden"], "{query}: {body}");
    }
    // A registrar may list appointments but not the clinical documents nested in one: the
    // error is on that field, the rest of the answer stands.
    let registrar = app.token(&[Role::Registrar], None);
    let body = gql(
        &app,
        Some(&registrar),
        "{ appointments { edges { node { id patient { lastName } documents { id } } } } }",
        json!({}),
    )
    .await;
    let node = &body["data"]["appointments"]["edges"][0]["node"];
    assert!(node["id"].is_string(), "{body}");
    assert!(node["patient"]["lastName"].is_string(), "{body}");
    // Spec-correct: the refused field is present as `null` (it is nullable).
    assert!(
        node.as_object().unwrap().contains_key("documents") && node["documents"].is_null(),
        "{body}"
    );
    assert_eq!(error_codes(&body), ["forbidden"], "{body}");
    assert_eq!(
        body["errors"][0]["path"],
        json!(["appointments", "edges", 0, "node", "documents"])
    );

    // Reads through GraphQL are audited with the token's subject.
    let reads = app
        .count(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'patient.read' AND object_id = '{own_id}'"
        ))
        .await;
    assert!(reads >= 1);
    app.shutdown().await;
}

#[tokio::test]
async fn mutations_write_through_the_actors_and_report_refusals_in_the_payload() {
    let app = spawn_app().await;
    // The integration profile's names: PatientCreateInput, PatientUpdateInput, ID.
    let create = r#"mutation($input: PatientCreateInput!) {
        createPatient(input: $input) { patient { id version lastName } error { code message fields } }
    }"#;
    let body = gql(&app, None, create, json!({"input": patient_body(53_000)})).await;
    let patient = &body["data"]["createPatient"]["patient"];
    assert!(patient["id"].is_string(), "{body}");
    assert_eq!(body["data"]["createPatient"]["error"], Value::Null);
    let id = patient["id"].as_str().unwrap().to_owned();

    let mut bad = patient_body(53_001);
    bad["snils"] = json!("12345678900");
    let body = gql(&app, None, create, json!({"input": bad})).await;
    let error = &body["data"]["createPatient"]["error"];
    assert_eq!(error["code"], "validation-error", "{body}");
    assert_eq!(error["fields"], json!(["snils"]));
    assert_eq!(
        app.count("SELECT count(*) FROM patients").await,
        1,
        "nothing half-written"
    );

    let update = r#"mutation($id: ID!, $input: PatientUpdateInput!, $v: Int) {
        updatePatient(id: $id, input: $input, expectedVersion: $v) {
            patient { version lastName firstName email } error { code currentVersion fields } } }"#;
    // A partial update: only the fields given change.
    let changed = json!({"lastName": "Новикова"});
    let body = gql(
        &app,
        None,
        update,
        json!({"id": id, "input": changed, "v": 7}),
    )
    .await;
    assert_eq!(
        body["data"]["updatePatient"]["error"]["code"], "precondition-failed",
        "{body}"
    );
    assert_eq!(body["data"]["updatePatient"]["error"]["currentVersion"], 1);
    let body = gql(
        &app,
        None,
        update,
        json!({"id": id, "input": changed, "v": 1}),
    )
    .await;
    assert_eq!(
        body["data"]["updatePatient"]["patient"]["version"], 2,
        "{body}"
    );
    assert_eq!(
        body["data"]["updatePatient"]["patient"]["lastName"],
        "Новикова"
    );
    assert_eq!(
        body["data"]["updatePatient"]["patient"]["firstName"],
        patient_body(53_000)["firstName"]
    );
    // `null` clears an optional field and is refused for a required one.
    let body = gql(
        &app,
        None,
        update,
        json!({"id": id, "input": {"email": null}}),
    )
    .await;
    assert_eq!(
        body["data"]["updatePatient"]["patient"]["email"],
        Value::Null,
        "{body}"
    );
    let body = gql(
        &app,
        None,
        update,
        json!({"id": id, "input": {"lastName": null}}),
    )
    .await;
    let error = &body["data"]["updatePatient"]["error"];
    assert_eq!(error["code"], "validation-error", "{body}");
    assert_eq!(error["fields"], json!(["lastName"]), "{body}");
    let body = gql(&app, None, update, json!({"id": "no-such-id", "input": {}})).await;
    let error = &body["data"]["updatePatient"]["error"];
    assert_eq!(error["code"], "validation-error", "{body}");
    assert_eq!(error["fields"], json!(["id"]), "{body}");

    let doctor = app.create_doctor().await;
    let book = r#"mutation($input: AppointmentInput!) {
        bookAppointment(input: $input) { appointment { id status version } error { code } } }"#;
    let input = json!({"patientId": id, "doctorId": doctor, "startsAt": hours_ahead(48),
                       "durationMinutes": 30, "payment": "oms", "visit": "primary"});
    let body = gql(&app, None, book, json!({"input": input})).await;
    let appointment = body["data"]["bookAppointment"]["appointment"].clone();
    assert_eq!(appointment["status"], "scheduled", "{body}");
    let body = gql(&app, None, book, json!({"input": input})).await;
    assert_eq!(
        body["data"]["bookAppointment"]["error"]["code"], "conflict",
        "{body}"
    );

    let cancel = r#"mutation($id: UUID!) {
        cancelAppointment(id: $id, reason: "Пациент заболел") { appointment { status } error { code } } }"#;
    let body = gql(&app, None, cancel, json!({"id": appointment["id"]})).await;
    assert_eq!(
        body["data"]["cancelAppointment"]["appointment"]["status"], "cancelled",
        "{body}"
    );

    let delete = r#"mutation($id: ID!) { deletePatient(id: $id) { success patient { archived } error { code message } } }"#;
    let body = gql(&app, None, delete, json!({"id": id})).await;
    assert_eq!(body["data"]["deletePatient"]["success"], true, "{body}");
    assert_eq!(
        body["data"]["deletePatient"]["patient"]["archived"], true,
        "{body}"
    );
    // Archiving twice is a business refusal: `success: false` and the error.
    let body = gql(&app, None, delete, json!({"id": id})).await;
    assert_eq!(body["data"]["deletePatient"]["success"], false, "{body}");
    assert_eq!(
        body["data"]["deletePatient"]["error"]["code"], "conflict",
        "{body}"
    );

    // An accountant may not archive: an error on the field, not a payload.
    let accountant = app.token(&[Role::Accountant], None);
    let body = gql(&app, Some(&accountant), delete, json!({"id": id})).await;
    assert_eq!(error_codes(&body), ["forbidden"], "{body}");

    // Every GraphQL write is in the outbox and audit like a REST one (two updates took).
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE event_type = 'PatientUpdated'")
            .await
            + app
                .count("SELECT count(*) FROM audit_log WHERE action = 'patient.update'")
                .await,
        4
    );
    app.shutdown().await;
}

#[tokio::test]
async fn introspection_and_graphiql_follow_the_configuration() {
    let app = spawn_app().await;
    let body = gql(&app, None, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "QueryRoot");
    let page = app.anonymous.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    // Self-hosted: the page loads only its own bundle, under a CSP allowing exactly that.
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"src="/graphql/assets/graphiql.js""#),
        "{html}"
    );
    for (asset, content_type) in [
        (
            "/graphql/assets/graphiql.js",
            "text/javascript; charset=utf-8",
        ),
        ("/graphql/assets/graphiql.css", "text/css; charset=utf-8"),
        ("/graphql/assets/licenses.txt", "text/plain; charset=utf-8"),
    ] {
        let response = app.anonymous.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type, "{asset}");
    }
    let missing = app
        .anonymous
        .get(app.url("/graphql/assets/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The served SDL is the one committed in the repository.
    let served = app
        .anonymous
        .get(app.url("/graphql/schema.graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();
    assert_eq!(
        served,
        include_str!("../../http/schema.graphql"),
        "the served schema differs from http/schema.graphql"
    );
    assert!(served.contains("createPatient(input: PatientCreateInput!): PatientPayload!"));
    assert!(served.contains("deletePatient(id: ID!, expectedVersion: Int): DeletePatientPayload!"));
    app.shutdown().await;

    let app = spawn_app_with(|settings| {
        settings.graphql.introspection = false;
        settings.graphql.graphiql = false;
    })
    .await;
    let body = gql(&app, None, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(body["data"]["__schema"], Value::Null, "{body}");
    // Only POST is left on /graphql.
    let page = app.anonymous.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 405);
    let bundle = app
        .anonymous
        .get(app.url("/graphql/assets/graphiql.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 404);
    let served = app
        .anonymous
        .get(app.url("/graphql/schema.graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 404, "no SDL without introspection");
    app.shutdown().await;
}

#[tokio::test]
async fn document_versions_and_the_audit_log_are_typed_and_guarded() {
    let app = spawn_app().await;
    let patient = app.create_patient(&patient_body(50_500)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let doctor = app.create_doctor().await;
    let document = app.create_document(&patient, &doctor).await;
    let id = document["id"].as_str().unwrap().to_owned();
    let edited = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{id}")))
        .json(&json!({"title": "Осмотр терапевта, дополнено"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);

    let query = r#"query($id: UUID!) { document(id: $id) {
        versions { contentVersion title bodyBytes editedBy } } }"#;
    let body = gql(&app, None, query, json!({"id": id})).await;
    let versions = body["data"]["document"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{body}");
    assert_eq!(versions[0]["contentVersion"], 1);
    assert_eq!(versions[1]["title"], "Осмотр терапевта, дополнено");
    assert_eq!(versions[1]["editedBy"], app.staff_subject.as_str());

    let query = r#"query($id: UUID!) { auditLog(filter: {objectId: $id}, first: 10) {
        totalCount edges { node { id action actorId objectType objectId contentHash leafIndex details } } } }"#;
    let body = gql(&app, None, query, json!({"id": id})).await;
    let log = &body["data"]["auditLog"];
    let actions: Vec<&str> = log["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"document.create"), "{body}");
    assert!(actions.contains(&"document.update"), "{body}");
    assert!(
        actions.contains(&"document.versions"),
        "reading versions is audited: {body}"
    );
    assert_eq!(
        log["edges"][0]["node"]["contentHash"]
            .as_str()
            .unwrap()
            .len(),
        64,
        "{body}"
    );

    // Only an admin reads the audit log; a doctor reads versions, a registrar does not.
    let doctor_token = app.token(&[Role::Doctor], None);
    let refused = gql(&app, Some(&doctor_token), query, json!({"id": id})).await;
    assert_eq!(error_codes(&refused), ["forbidden"], "{refused}");
    let registrar = app.token(&[Role::Registrar], None);
    let query = r#"query($id: UUID!) { document(id: $id) { versions { contentVersion } } }"#;
    let refused = gql(&app, Some(&registrar), query, json!({"id": id})).await;
    assert_eq!(error_codes(&refused), ["forbidden"], "{refused}");
    app.shutdown().await;
}
