//! Several instances on one database (as `k8s/` runs three pods): an entity actor's cached
//! state may be older than the committed row, and it never decides a refusal by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::graphql::gql;
use crate::helpers::{
    TestApp, eventually, hours_ahead, patient_body, quick_passivation, spawn_app, spawn_app_on,
    spawn_app_with,
};

/// A second application on `first`'s database (its own actors and caches).
async fn another_instance(first: &TestApp) -> TestApp {
    spawn_app_on(first.db_name.clone(), first.db_url.clone(), |_| {}).await
}

async fn patch(
    app: &TestApp,
    path: &str,
    body: &Value,
    if_match: Option<i64>,
) -> reqwest::Response {
    let mut request = app.client.patch(app.url(path)).json(body);
    if let Some(version) = if_match {
        request = request.header("If-Match", format!("\"{version}\""));
    }
    request.send().await.unwrap()
}

async fn version_of(response: reqwest::Response, what: &str) -> i64 {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{what}: {body}");
    body["version"].as_i64().unwrap()
}

#[tokio::test]
async fn writes_through_any_instance_are_decided_on_the_committed_row() {
    let a = spawn_app().await;
    let b = another_instance(&a).await;
    let instances = [&a, &b];
    let created = a.create_patient(&patient_body(1)).await;
    let path = format!("/api/v1/patients/{}", created["id"].as_str().unwrap());
    // Both instances now hold the patient at version 1 in an actor.
    for app in instances {
        assert_eq!(app.get(&path).await.status(), 200);
    }

    // Sequential unconditional writes alternating between instances never answer 409.
    let mut version = 1;
    for n in 0..10 {
        let app = instances[n % 2];
        let body = json!({"email": format!("n{n}@example.org")});
        let next = version_of(patch(app, &path, &body, None).await, "a plain PATCH").await;
        assert_eq!(next, version + 1, "write {n}");
        version = next;
    }
    // The version a client has just received is current on every instance.
    for (n, app) in [&b, &a, &b].into_iter().enumerate() {
        let body = json!({"firstName": format!("Анна{}", "я".repeat(n + 1))});
        let next = version_of(
            patch(app, &path, &body, Some(version)).await,
            "If-Match current",
        )
        .await;
        assert_eq!(next, version + 1);
        version = next;
    }
    // A stale one is refused by both, with the committed version.
    for app in instances {
        let response = patch(
            app,
            &path,
            &json!({"firstName": "Ольга"}),
            Some(version - 1),
        )
        .await;
        let problem = crate::helpers::expect_problem(response, 412).await;
        assert_eq!(problem["currentVersion"], version, "{problem}");
    }
    // Writing what another instance already wrote is a no-op only if it really is one.
    let body = json!({"firstName": "Вера"});
    let on_a = version_of(patch(&a, &path, &body, None).await, "write on a").await;
    let back = json!({"firstName": "Анна"});
    let on_b = version_of(patch(&b, &path, &back, None).await, "write back on b").await;
    let again = version_of(
        patch(&a, &path, &body, None).await,
        "the first value again on a",
    )
    .await;
    assert_eq!(
        (on_b, again),
        (on_a + 1, on_a + 2),
        "a stale cache skipped a real change"
    );

    // N concurrent conditional writes on different instances: exactly one wins.
    let attempts = (0..6).map(|n| {
        let app = instances[n % 2];
        let path = path.clone();
        async move {
            let body = json!({"middleName": format!("Гонка{n}")});
            patch(app, &path, &body, Some(again))
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let winners = statuses.iter().filter(|status| **status == 200).count();
    assert_eq!(winners, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|status| matches!(status, 200 | 409 | 412)),
        "{statuses:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn lifecycle_steps_taken_on_another_instance_are_seen_before_refusing() {
    let a = spawn_app().await;
    let b = another_instance(&a).await;
    let patient = a.create_patient(&patient_body(2)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let doctor = a.create_doctor().await;

    // An appointment started on one instance is completed on the other, whose actor last
    // saw it scheduled.
    let booked: Value = a
        .book(&patient, &doctor, &hours_ahead(3), 30)
        .await
        .json()
        .await
        .unwrap();
    let appointment = format!("/api/v1/appointments/{}", booked["id"].as_str().unwrap());
    assert_eq!(b.get(&appointment).await.status(), 200);
    let started = a
        .post_json(&format!("{appointment}/start"), &json!({}))
        .await;
    assert_eq!(started.status(), 200);
    let completed = b
        .post_json(&format!("{appointment}/complete"), &json!({}))
        .await;
    let body: Value = completed.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");

    // A draft edited on one instance is edited and signed on the other with the version
    // the client holds.
    let document = a.create_document(&patient, &doctor).await;
    let path = format!("/api/v1/documents/{}", document["id"].as_str().unwrap());
    assert_eq!(b.get(&path).await.status(), 200);
    let edited = version_of(
        patch(
            &a,
            &path,
            &json!({"body": "Жалоб нет. АД 130/85."}),
            Some(1),
        )
        .await,
        "an edit on a",
    )
    .await;
    let edited = version_of(
        patch(
            &b,
            &path,
            &json!({"title": "Повторный осмотр"}),
            Some(edited),
        )
        .await,
        "an edit on b with the current version",
    )
    .await;
    assert_eq!(edited, 3);
    let signed = b.sign(document["id"].as_str().unwrap(), &doctor).await;
    let body: Value = signed.json().await.unwrap();
    assert_eq!(body["status"], "signed", "{body}");
    assert_eq!(
        body["title"], "Повторный осмотр",
        "signed what was committed: {body}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_read_on_any_instance_reflects_every_write_acknowledged_before_it() {
    let a = spawn_app().await;
    let b = another_instance(&a).await;
    let c = another_instance(&a).await;
    let instances = [&a, &b, &c];
    let patient = a.create_patient(&patient_body(3)).await;
    let id = patient["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/patients/{id}");
    let doctor = a.create_doctor().await;
    let document = a.create_document(&id, &doctor).await;
    let document = format!("/api/v1/documents/{}", document["id"].as_str().unwrap());
    for app in instances {
        assert_eq!(app.get(&path).await.status(), 200);
        assert_eq!(app.get(&document).await.status(), 200);
    }

    // An interleaving of writes and reads spread over the three instances (a fixed
    // pseudo-random walk, so a failure can be replayed).
    let (mut acknowledged, mut document_version) = (1, 1);
    let mut step: usize = 7;
    for n in 0..90 {
        step = (step * 31 + 17) % 101;
        let app = instances[step % 3];
        match step % 4 {
            0 => {
                let body = json!({"email": format!("w{n}@example.org")});
                acknowledged = version_of(patch(app, &path, &body, None).await, "a write").await;
            }
            1 => {
                let body = json!({"body": format!("Запись {n}.")});
                let response = patch(app, &document, &body, None).await;
                document_version = version_of(response, "a document edit").await;
            }
            2 => {
                let read: Value = app.get(&document).await.json().await.unwrap();
                assert_eq!(read["version"], document_version, "step {n}: {read}");
            }
            _ => {
                let response = app.get(&path).await;
                let etag = response.headers()["etag"].to_str().unwrap().to_owned();
                let read: Value = response.json().await.unwrap();
                assert_eq!(read["version"], acknowledged, "step {n}: {read}");
                assert_eq!(etag, format!("\"{acknowledged}\""));
                // GraphQL answers the same on the same instance.
                let query = format!(r#"{{ patient(id: "{id}") {{ version email }} }}"#);
                let body = gql(app, None, &query, json!({})).await;
                assert_eq!(body["data"]["patient"]["version"], acknowledged, "{body}");
                assert_eq!(body["data"]["patient"]["email"], read["email"], "{body}");
            }
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// Waits until `app`'s one patient actor has stopped and its state is kept as idle.
async fn until_idle(app: &TestApp) {
    eventually(
        Duration::from_secs(10),
        "the patient actor to be passivated into an idle state",
        || async {
            let stats = app.app().patients().stats().await.unwrap();
            (stats.live == 0 && stats.idle == 1).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_idle_state_kept_by_one_instance_never_hides_a_write_through_another() {
    let a = spawn_app_with(quick_passivation).await;
    let b = another_instance(&a).await;
    let patient = a.create_patient(&patient_body(5)).await;
    let id = patient["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/patients/{id}");
    assert_eq!(a.get(&path).await.status(), 200);
    until_idle(&a).await;

    // Written through B while A keeps version 1 as an idle state: A reads the write.
    let body = json!({"email": "idle-1@example.org"});
    assert_eq!(
        version_of(patch(&b, &path, &body, None).await, "B's write").await,
        2
    );
    let read: Value = a.get(&path).await.json().await.unwrap();
    assert_eq!(
        (&read["version"], &read["email"]),
        (&json!(2), &json!("idle-1@example.org"))
    );
    let query = format!(r#"{{ patient(id: "{id}") {{ version email }} }}"#);
    let body = gql(&a, None, &query, json!({})).await;
    assert_eq!(body["data"]["patient"]["version"], 2, "{body}");

    // A write through A on a stale idle state: a current If-Match is accepted, and a plain
    // write never answers 409.
    until_idle(&a).await;
    let body = json!({"email": "idle-2@example.org"});
    assert_eq!(
        version_of(patch(&b, &path, &body, None).await, "B's write").await,
        3
    );
    let body = json!({"email": "idle-3@example.org"});
    let response = patch(&a, &path, &body, Some(3)).await;
    assert_eq!(version_of(response, "A's conditional write").await, 4);
    until_idle(&a).await;
    let body = json!({"email": "idle-4@example.org"});
    assert_eq!(
        version_of(patch(&b, &path, &body, None).await, "B's write").await,
        5
    );
    let body = json!({"email": "idle-5@example.org"});
    assert_eq!(
        version_of(patch(&a, &path, &body, None).await, "A's plain write").await,
        6
    );
    let read: Value = b.get(&path).await.json().await.unwrap();
    assert_eq!(
        (&read["version"], &read["email"]),
        (&json!(6), &json!("idle-5@example.org"))
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// What one patient's sequence of writes ended with: the last acknowledged version and
/// e-mail, and how many writes went unanswered (the instance died under them).
struct Outcome {
    path: String,
    version: i64,
    email: String,
}

#[tokio::test]
async fn an_instance_killed_mid_load_loses_no_acknowledged_write() {
    // Instance B runs in-process; instance A is the medflow binary, killed with SIGKILL
    // while both take writes.
    let b = spawn_app().await;
    let log = crate::own_postgres::test_work_dir("instances").join(format!("{}.log", b.db_name));
    let a = crate::resilience::MedflowProcess::start(&b, &log).await;
    let a_address = a.address.clone();
    let patients: Vec<String> = futures::future::join_all((0..16).map(|n| {
        let b = &b;
        async move { b.create_patient(&patient_body(70_000 + n)).await }
    }))
    .await
    .iter()
    .map(|created| format!("/api/v1/patients/{}", created["id"].as_str().unwrap()))
    .collect();

    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    // Each patient is written 12 times in turn through A and B (plain PATCHes); a write A
    // cannot answer is sent again through B. Different patients are written concurrently.
    let writers = patients.iter().map(|path| {
        let (b, a_address, acknowledged) = (&b, &a_address, &acknowledged);
        async move {
            let mut outcome = Outcome {
                path: path.clone(),
                version: 1,
                email: String::new(),
            };
            for n in 0..12 {
                let email = format!("w{n}@example.org");
                let body = json!({"email": email});
                let through_a = b.client.patch(format!("{a_address}{path}")).json(&body);
                let response = match (n % 2 == 0).then_some(through_a) {
                    Some(request) => match request.send().await {
                        Ok(response) if response.status() != 503 => response,
                        // A is gone (or its answer is): the client tries B.
                        _ => patch(b, path, &body, None).await,
                    },
                    None => patch(b, path, &body, None).await,
                };
                let version = version_of(response, "a plain PATCH").await;
                assert!(
                    version > outcome.version,
                    "{path}: {version} after {}",
                    outcome.version
                );
                outcome.version = version;
                outcome.email = email;
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcome
        }
    });
    let kill = async {
        crate::helpers::eventually(
            std::time::Duration::from_secs(60),
            "writes under way",
            || async {
                (acknowledged.load(std::sync::atomic::Ordering::Relaxed) >= 40).then_some(())
            },
        )
        .await;
        a.kill();
        acknowledged.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (outcomes, killed_at) = tokio::join!(futures::future::join_all(writers), kill);
    assert!(
        killed_at < 16 * 12,
        "the kill came after every write ({killed_at})"
    );
    assert_eq!(acknowledged.into_inner(), 16 * 12);
    println!("instance A killed after {killed_at} of 192 acknowledged writes");

    // Every acknowledged write stands: B reads each patient at its last acknowledged version
    // with its last acknowledged value.
    for outcome in outcomes {
        let read: Value = b.get(&outcome.path).await.json().await.unwrap();
        assert_eq!(read["version"], outcome.version, "{}", outcome.path);
        assert_eq!(read["email"], outcome.email.as_str(), "{}", outcome.path);
    }
    b.shutdown().await;
}
