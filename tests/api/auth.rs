//! Authentication, the role table, per-client rate limits, CORS and security headers.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use medflow_http::policy::Role;
use serde_json::{Value, json};
use uuid::Uuid;
use warp::Filter;

use crate::helpers::{
    TestApp, eventually, expect_problem, hours_ahead, patient_body, spawn_app_on, spawn_app_with,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims the default test configuration accepts, for `roles`.
fn claims(roles: &[&str]) -> Value {
    json!({
        "iss": "medflow-dev",
        "aud": "medflow",
        "sub": Uuid::new_v4().to_string(),
        "iat": now(),
        "exp": now() + 600,
        "roles": roles,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-test-key.pem")).unwrap()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-test-key.pem")).unwrap()).unwrap()
}

fn dev_key(app: &TestApp) -> EncodingKey {
    use secrecy::ExposeSecret;
    EncodingKey::from_secret(
        app.auth
            .dev_secret
            .as_ref()
            .unwrap()
            .expose_secret()
            .as_bytes(),
    )
}

async fn get_with(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.anonymous
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Sends `token`'s requests to `app` until one is refused, at most `tries`: the statuses
/// (the refusal's last) and the refusal.
async fn until_refused(app: &TestApp, token: &str, tries: usize) -> (Vec<u16>, reqwest::Response) {
    let mut statuses = Vec::new();
    for _ in 0..tries {
        let response = get_with(app, "/api/v1/doctors", token).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            return (statuses, response);
        }
    }
    panic!("never limited: {statuses:?}");
}

/// Checks that a refusal is a 429 problem; returns its `Retry-After` in seconds.
async fn retry_after(refusal: reqwest::Response) -> u64 {
    let seconds = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    expect_problem(refusal, 429).await;
    seconds
}

async fn spawn_with_jwks_file() -> TestApp {
    spawn_app_with(|settings| {
        settings.auth.jwks_file = Some(fixture("jwks.json"));
    })
    .await
}

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bearer_challenge_and_writes_nothing() {
    let app = spawn_with_jwks_file().await;
    let response = app
        .anonymous
        .post(app.url("/api/v1/patients"))
        .json(&patient_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="medflow""#
    );
    expect_problem(response, 401).await;
    for path in [
        "/api/v1/patients",
        "/api/v1/doctors",
        "/api/v1/audit",
        "/api/v1/admin/audit/verify",
    ] {
        let response = app.anonymous.get(app.url(path)).send().await.unwrap();
        expect_problem(response, 401).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM patients").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    // Probes and metrics stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn tokens_from_every_configured_key_are_accepted() {
    let app = spawn_with_jwks_file().await;
    let claims = claims(&["registrar"]);
    for token in [
        sign(Algorithm::RS256, Some("test-rsa"), &claims, &rsa_key()),
        sign(Algorithm::ES256, Some("test-ec"), &claims, &ec_key()),
        // Without a kid the key is chosen by algorithm.
        sign(Algorithm::ES256, None, &claims, &ec_key()),
        sign(Algorithm::HS256, None, &claims, &dev_key(&app)),
    ] {
        let response = get_with(&app, "/api/v1/patients", &token).await;
        assert_eq!(response.status(), 200);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn expired_early_foreign_confused_and_tampered_tokens_are_rejected_alike() {
    let app = spawn_with_jwks_file().await;
    let rsa = rsa_key();
    let with = |changes: Value| {
        let mut claims = claims(&["admin"]);
        for (key, value) in changes.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };
    let valid = sign(Algorithm::RS256, Some("test-rsa"), &with(json!({})), &rsa);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&with(json!({"roles": ["admin"], "sub": "someone-else"}))).unwrap(),
    );
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with(json!({}))).unwrap());
    // HS256 "signed" with the RSA public key: the classic algorithm confusion.
    let public_pem = std::fs::read(fixture("rsa-test-pub.pem")).unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired beyond the leeway",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &with(json!({"exp": now() - 120})),
                &rsa,
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &with(json!({"nbf": now() + 600})),
                &rsa,
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &with(json!({"iss": "https://evil.example"})),
                &rsa,
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &with(json!({"aud": "another-service"})),
                &rsa,
            ),
        ),
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "HS256 with the RSA public key as secret",
            sign(
                Algorithm::HS256,
                Some("test-rsa"),
                &with(json!({})),
                &EncodingKey::from_secret(&public_pem),
            ),
        ),
        (
            "HS256 with another secret",
            sign(
                Algorithm::HS256,
                None,
                &with(json!({})),
                &EncodingKey::from_secret(b"an-attacker-secret-of-32-bytes-or-more"),
            ),
        ),
        (
            "RS256 declared, signed by an unknown kid",
            sign(Algorithm::RS256, Some("unknown"), &with(json!({})), &rsa),
        ),
        (
            "tampered payload",
            format!("{head}.{tampered_payload}.{signature}"),
        ),
        (
            "no subject",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &{
                    let mut claims = with(json!({}));
                    claims.as_object_mut().unwrap().remove("sub");
                    claims
                },
                &rsa,
            ),
        ),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    let mut details = std::collections::HashSet::new();
    for (case, token) in cases {
        let response = get_with(&app, "/api/v1/audit", &token).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="medflow", error="invalid_token""#,
            "{case}"
        );
        let problem = expect_problem(response, 401).await;
        details.insert(problem["detail"].as_str().unwrap().to_owned());
    }
    assert_eq!(details.len(), 1, "failures must not say which check failed");
    // Another scheme is not a bearer token.
    let response = app
        .anonymous
        .get(app.url("/api/v1/patients"))
        .header("Authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_key_set_can_come_from_a_jwks_url() {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let route = warp::path!("certs").map(move || warp::reply::json(&jwks));
    let (address, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    let app = spawn_app_with(|settings| {
        settings.auth.jwks_url = Some(format!("http://{address}/certs"));
    })
    .await;
    let token = sign(
        Algorithm::ES256,
        Some("test-ec"),
        &claims(&["doctor"]),
        &ec_key(),
    );
    assert_eq!(
        get_with(&app, "/api/v1/doctors", &token).await.status(),
        200
    );
    app.shutdown().await;
}

/// What the table in the README promises, written out independently of the code's table:
/// (operation, columns doctor, registrar, admin, accountant, quality_control, management,
/// patient); `O` means "own record only".
const EXPECTED: [(&str, [char; 7]); 23] = [
    ("list patients", ['Y', 'Y', 'Y', 'Y', 'Y', '-', '-']),
    ("read a patient", ['Y', 'Y', 'Y', 'Y', 'Y', '-', 'O']),
    ("create a patient", ['-', 'Y', 'Y', '-', '-', '-', '-']),
    ("update a patient", ['-', 'Y', 'Y', '-', '-', '-', '-']),
    ("archive a patient", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("list doctors", ['Y', 'Y', 'Y', 'Y', 'Y', 'Y', 'Y']),
    ("read a doctor", ['Y', 'Y', 'Y', 'Y', 'Y', 'Y', 'Y']),
    ("create a doctor", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("update a doctor", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("list appointments", ['Y', 'Y', 'Y', 'Y', 'Y', '-', 'O']),
    ("read an appointment", ['Y', 'Y', 'Y', 'Y', 'Y', '-', 'O']),
    ("book an appointment", ['Y', 'Y', 'Y', '-', '-', '-', '-']),
    ("start an appointment", ['Y', 'Y', 'Y', '-', '-', '-', '-']),
    ("list documents", ['Y', '-', '-', '-', 'Y', '-', 'O']),
    ("read a document", ['Y', '-', '-', '-', 'Y', '-', 'O']),
    (
        "create a draft document",
        ['Y', '-', '-', '-', '-', '-', '-'],
    ),
    ("edit a draft document", ['Y', '-', '-', '-', '-', '-', '-']),
    ("sign a document", ['Y', '-', '-', '-', '-', '-', '-']),
    (
        "record a registry outcome",
        ['-', '-', 'Y', '-', '-', '-', '-'],
    ),
    ("list the audit log", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("verify the audit log", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("read the CDC status", ['-', '-', 'Y', '-', '-', '-', '-']),
    ("inspect consumers", ['-', '-', 'Y', '-', '-', '-', '-']),
];

fn doctor_body() -> Value {
    json!({"firstName": "Пётр", "lastName": "Сидоров", "specialty": "терапевт"})
}

/// Performs `operation` as a fresh principal with `role` (and `patient_id` for the patient
/// role) on fresh objects of patient `target`, and returns the status.
async fn perform(
    app: &TestApp,
    operation: &str,
    role: Role,
    patient_id: Option<Uuid>,
    target: Uuid,
    serial: u32,
) -> u16 {
    // A doctor signs as themself: their token's subject is their doctor id.
    let subject_doctor = app.create_doctor().await;
    let token = crate::helpers::mint(&app.auth, &subject_doctor, &[role], patient_id);
    let client = &app.anonymous;
    let patient = app.url(&format!("/api/v1/patients/{target}"));
    let target = target.to_string();
    let doctor = || async {
        let id = app.create_doctor().await;
        app.url(&format!("/api/v1/doctors/{id}"))
    };
    let appointment = || async {
        let doctor = app.create_doctor().await;
        let response = app.book(&target, &doctor, &hours_ahead(10), 30).await;
        let body: Value = response.json().await.unwrap();
        app.url(&format!(
            "/api/v1/appointments/{}",
            body["id"].as_str().unwrap()
        ))
    };
    let document = || async {
        let doctor = app.create_doctor().await;
        let body = app.create_document(&target, &doctor).await;
        (doctor, body["id"].as_str().unwrap().to_owned())
    };
    let request = match operation {
        "list patients" => client.get(app.url("/api/v1/patients")),
        "read a patient" => client.get(&patient),
        "create a patient" => client
            .post(app.url("/api/v1/patients"))
            .json(&patient_body(1000 + serial)),
        "update a patient" => client
            .patch(&patient)
            .header("Content-Type", "application/merge-patch+json")
            .body(json!({"firstName": "Мария"}).to_string()),
        "archive a patient" => client.delete(&patient),
        "list doctors" => client.get(app.url("/api/v1/doctors")),
        "read a doctor" => client.get(doctor().await),
        "create a doctor" => client.post(app.url("/api/v1/doctors")).json(&doctor_body()),
        "update a doctor" => client.put(doctor().await).json(&doctor_body()),
        "list appointments" => {
            client.get(app.url(&format!("/api/v1/appointments?patientId={target}")))
        }
        "read an appointment" => client.get(appointment().await),
        "book an appointment" => {
            let doctor = app.create_doctor().await;
            client.post(app.url("/api/v1/appointments")).json(&json!({
                "patientId": target, "doctorId": doctor, "startsAt": hours_ahead(10),
                "durationMinutes": 30, "payment": "paid", "visit": "repeat",
            }))
        }
        "start an appointment" => client.post(format!("{}/start", appointment().await)),
        "list documents" => client.get(app.url(&format!("/api/v1/documents?patientId={target}"))),
        "read a document" => {
            let (_, id) = document().await;
            client.get(app.url(&format!("/api/v1/documents/{id}")))
        }
        "create a draft document" => client.post(app.url("/api/v1/documents")).json(&json!({
            "patientId": target, "authorId": subject_doctor, "type": "prescription",
            "title": "Рецепт", "body": "…",
        })),
        "edit a draft document" => {
            let (_, id) = document().await;
            client
                .patch(app.url(&format!("/api/v1/documents/{id}")))
                .json(&json!({"title": "Рецепт №2"}))
        }
        "sign a document" => {
            let (_, id) = document().await;
            client
                .post(app.url(&format!("/api/v1/documents/{id}/sign")))
                .json(&json!({
                    "signerId": subject_doctor, "signature": crate::helpers::TEST_SIGNATURE,
                    "certificateThumbprint": "a".repeat(40),
                }))
        }
        "record a registry outcome" => {
            let (author, id) = document().await;
            assert_eq!(app.sign(&id, &author).await.status(), 200);
            client
                .post(app.url(&format!("/api/v1/documents/{id}/registry")))
                .json(&json!({"outcome": "sent"}))
        }
        "list the audit log" => client.get(app.url("/api/v1/audit")),
        "verify the audit log" => client.get(app.url("/api/v1/admin/audit/verify")),
        "read the CDC status" => client.get(app.url("/api/v1/admin/cdc")),
        "inspect consumers" => client.get(app.url("/api/v1/admin/consumers")),
        other => panic!("no request for {other}"),
    };
    request
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_role_is_allowed_exactly_the_cells_of_the_table() {
    let app = spawn_app_with(|_| {}).await;
    let mut serial = 0;
    for (operation, cells) in EXPECTED {
        for (role, cell) in Role::ALL.into_iter().zip(cells) {
            // A fresh patient per cell, so archiving or updating one never affects another.
            serial += 1;
            let own = app.create_patient(&patient_body(serial)).await;
            let own_id = Uuid::parse_str(own["id"].as_str().unwrap()).unwrap();
            let patient_id = (role == Role::Patient).then_some(own_id);
            let status = perform(&app, operation, role, patient_id, own_id, serial).await;
            let allowed = matches!(cell, 'Y' | 'O');
            if allowed {
                assert!(
                    (200..300).contains(&status),
                    "{role} may {operation}, got {status}"
                );
            } else {
                assert_eq!(status, 403, "{role} may not {operation}");
            }
            if cell == 'O' {
                // The same operation on somebody else's record is forbidden.
                serial += 1;
                let other = app.create_patient(&patient_body(serial)).await;
                let other_id = Uuid::parse_str(other["id"].as_str().unwrap()).unwrap();
                let status = perform(&app, operation, role, patient_id, other_id, serial).await;
                assert_eq!(
                    status, 403,
                    "{role} may {operation} only on their own record"
                );
            }
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_patient_token_reads_only_its_own_record_and_learns_nothing_of_others() {
    let app = spawn_app_with(|_| {}).await;
    let own = app.create_patient(&patient_body(1)).await;
    let own_id = Uuid::parse_str(own["id"].as_str().unwrap()).unwrap();
    let other = app.create_patient(&patient_body(2)).await;
    let token = app.token(&[Role::Patient], Some(own_id));
    let response = get_with(&app, &format!("/api/v1/patients/{own_id}"), &token).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], own["id"]);
    for path in [
        format!("/api/v1/patients/{}", other["id"].as_str().unwrap()),
        // An id that does not exist answers like one that does: no existence oracle.
        format!("/api/v1/patients/{}", Uuid::new_v4()),
        "/api/v1/patients".to_owned(),
        format!("/api/v1/audit?objectId={own_id}"),
    ] {
        let response = get_with(&app, &path, &token).await;
        let problem = expect_problem(response, 403).await;
        assert!(
            !problem.to_string().contains("Иванов"),
            "no personal data in errors"
        );
    }
    // A patient token without its patient_id claim sees nothing.
    let token = app.token(&[Role::Patient], None);
    let response = get_with(&app, &format!("/api/v1/patients/{own_id}"), &token).await;
    expect_problem(response, 403).await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_audit_log_refuses_update_and_delete_to_the_application() {
    let app = spawn_app_with(|_| {}).await;
    app.create_patient(&patient_body(1)).await;
    let db = app.db().await;
    for sql in [
        "UPDATE audit_log SET actor_id = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let error = db.batch_execute(sql).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only")
                || format!("{error:?}").contains("append-only"),
            "{sql}: {error:?}"
        );
    }
    let report = crate::audit::verify(&app).await;
    assert_eq!(report["valid"], true, "{report}");
    app.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_recovers() {
    let app = spawn_app_with(|settings| {
        settings.http.rate_limit_per_second = 2;
        settings.http.rate_limit_burst = 3;
    })
    .await;
    let token = app.token(&[Role::Doctor], None);
    let (statuses, refusal) = until_refused(&app, &token, 10).await;
    assert!(statuses.len() >= 3, "the burst is served: {statuses:?}");
    let retry_after = retry_after(refusal).await;
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    // Another client is not affected.
    let other = app.token(&[Role::Doctor], None);
    assert_eq!(
        get_with(&app, "/api/v1/doctors", &other).await.status(),
        200
    );

    // The bucket refills.
    eventually(
        Duration::from_secs(5),
        "the rate limit to recover",
        || async {
            (get_with(&app, "/api/v1/doctors", &token).await.status() == 200).then_some(())
        },
    )
    .await;
    app.shutdown().await;
}

/// 10 requests per 10 s per client (burst 10, 1 per second), counts shared every 50 ms.
fn ten_per_ten_seconds(settings: &mut medflow::config::Settings) {
    settings.http.rate_limit_per_second = 1;
    settings.http.rate_limit_burst = 10;
    settings.http.rate_limit_sync_ms = 50;
}

/// Waits until `app` has completed two more rounds of sharing its rate-limit counts (so one
/// of them started after everything it admitted so far).
async fn until_shared(app: &TestApp) {
    let cluster = app.app().rate_limits().cluster();
    let target = cluster.syncs() + 2;
    eventually(
        Duration::from_secs(10),
        "the rate-limit counts to be shared",
        || async { (cluster.syncs() >= target).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_rate_limit_holds_across_instances() {
    let a = spawn_app_with(ten_per_ten_seconds).await;
    let b = spawn_app_on(a.db_name.clone(), a.db_url.clone(), ten_per_ten_seconds).await;
    let token = a.token(&[Role::Doctor], None);
    for n in 0..10 {
        let response = get_with(&a, "/api/v1/doctors", &token).await;
        assert_eq!(response.status(), 200, "request {n} through A");
    }
    assert_eq!(get_with(&a, "/api/v1/doctors", &token).await.status(), 429);
    until_shared(&a).await;

    // B's own bucket is full, but the client spent its limit through A. B learns that at its
    // first sync after the client's first request there: at most what reaches B before it
    // is admitted above the limit (one request here), not another burst.
    // (The sliding window also frees one request per second as A's burst ages: a slow run
    // may see one or two more admitted, never B's own burst of ten.)
    get_with(&b, "/api/v1/doctors", &token).await;
    until_shared(&b).await;
    let (_, refusal) = until_refused(&b, &token, 5).await;
    let retry_after = retry_after(refusal).await;
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    // Another client is served by both.
    let other = b.token(&[Role::Doctor], None);
    assert_eq!(get_with(&b, "/api/v1/doctors", &other).await.status(), 200);
    assert_eq!(get_with(&a, "/api/v1/doctors", &other).await.status(), 200);
    // Only digests of the clients are stored.
    until_shared(&a).await;
    let db = a.db().await;
    let stored: Vec<Vec<u8>> = db
        .query("SELECT client FROM http_rate_usage", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(stored.len() >= 2 && stored.iter().all(|client| client.len() == 16));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn counts_that_cannot_be_shared_leave_each_instance_its_own_buckets_until_they_can() {
    let app = spawn_app_with(ten_per_ten_seconds).await;
    let db = app.db().await;
    let failures = "medflow_http_rate_limit_sync_failures_total";
    let failed_before = app.metric(failures).await;
    // The shared table is gone (as if PostgreSQL refused the statement).
    db.batch_execute("ALTER TABLE http_rate_usage RENAME TO http_rate_usage_away")
        .await
        .unwrap();
    let token = app.token(&[Role::Doctor], None);
    for n in 0..5 {
        let response = get_with(&app, "/api/v1/doctors", &token).await;
        assert_eq!(
            response.status(),
            200,
            "request {n} while counts are not shared"
        );
    }
    eventually(
        Duration::from_secs(10),
        "a failed round of sharing to be counted",
        || async { (app.metric(failures).await > failed_before).then_some(()) },
    )
    .await;
    // The instance's own limit still holds meanwhile (its bucket also refills one request
    // per second, so a slow run may serve one or two more than the ten).
    until_refused(&app, &token, 8).await;

    // Back: the counts kept in memory reach the table.
    db.batch_execute("ALTER TABLE http_rate_usage_away RENAME TO http_rate_usage")
        .await
        .unwrap();
    until_shared(&app).await;
    let shared: i64 = db
        .query_one(
            "SELECT coalesce(sum(requests), 0)::bigint FROM http_rate_usage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        shared >= 10,
        "the ten admitted requests were shared: {shared}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn cors_follows_the_configuration_and_security_headers_are_set() {
    let app = spawn_app_with(|settings| {
        settings.http.cors_allowed_origins = vec!["https://emr.clinic.example".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        app.anonymous
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/patients"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://emr.clinic.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://emr.clinic.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    expect_problem(refused, 403).await;

    let response = app
        .client
        .get(app.url("/api/v1/patients"))
        .header("Origin", "https://emr.clinic.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://emr.clinic.example"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    app.shutdown().await;
}
