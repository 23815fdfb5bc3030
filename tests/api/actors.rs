//! The actor layer seen from outside: concurrent writes serialised by one patient's actor, a
//! killed actor replaced and reloaded, idle actors passivated.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{
    WRITE_AUDIT_ROWS, eventually, patient_body, quick_passivation, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn fifty_concurrent_updates_to_one_patient_are_serialised_without_a_lost_update() {
    let app = spawn_app().await;
    let created = app.create_patient(&patient_body(30)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/patients/{id}");

    // Each request changes a different value; none names a version, so all must succeed
    // one after another.
    let requests = (0..50).map(|n| {
        let request = app
            .client
            .patch(app.url(&path))
            .json(&json!({ "email": format!("n{n}@example.org") }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            (
                body["version"].as_i64().unwrap(),
                body["email"].as_str().unwrap().to_owned(),
            )
        }
    });
    let answers = join_all(requests).await;
    let versions: BTreeSet<i64> = answers.iter().map(|(version, _)| *version).collect();
    assert_eq!(
        versions,
        (2..=51).collect::<BTreeSet<_>>(),
        "every update got its own version"
    );

    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read["version"], 51);
    let last = answers.iter().find(|(version, _)| *version == 51).unwrap();
    assert_eq!(
        read["email"], last.1,
        "the last committed update is what is read"
    );

    // The database agrees: 51 audit rows and outbox events, with versions 1..=51.
    let outbox_versions: Vec<i64> = app
        .column(
            "SELECT version FROM outbox WHERE aggregate_id = $1::text::uuid ORDER BY version",
            &[&id],
        )
        .await;
    assert_eq!(outbox_versions, (1..=51).collect::<Vec<_>>());
    assert_eq!(app.count(WRITE_AUDIT_ROWS).await, 51);
    // Concurrent audited transactions are all sealed into one consistent tree.
    crate::audit::all_sealed(&app).await;
    let report = crate::audit::verify_with(&app, true).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(
        report["leavesChecked"],
        app.count("SELECT count(*) FROM audit_log").await
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_killed_patient_actor_is_replaced_and_serves_the_committed_state() {
    let app = spawn_app().await;
    let created = app.create_patient(&patient_body(31)).await;
    let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/api/v1/patients/{id}");
    let response = app
        .client
        .patch(app.url(&path))
        .json(&json!({"firstName": "Ирина"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let actor = app.app().patients().actor_of(id).await.unwrap();
    actor.kill();
    eventually(Duration::from_secs(5), "the killed actor to stop", || {
        let status = actor.get_status();
        async move { matches!(status, ractor::ActorStatus::Stopped).then_some(()) }
    })
    .await;

    // The next request gets a fresh actor, which reloads the committed row.
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read["firstName"], "Ирина");
    assert_eq!(read["version"], 2);
    let replacement = app.app().patients().actor_of(id).await.unwrap();
    assert_ne!(replacement.get_id(), actor.get_id());
    let response = app
        .client
        .patch(app.url(&path))
        .header("If-Match", "\"2\"")
        .json(&json!({"firstName": "Ольга"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn idle_patient_actors_are_passivated_and_reload_on_demand() {
    let app = spawn_app_with(quick_passivation).await;
    let mut paths = Vec::new();
    for n in 0..5 {
        let created = app.create_patient(&patient_body(40 + n)).await;
        paths.push(format!(
            "/api/v1/patients/{}",
            created["id"].as_str().unwrap()
        ));
    }
    // A create goes straight to the store; reading spawns each patient's actor.
    for path in &paths {
        assert_eq!(app.get(path).await.status(), 200);
    }
    let live = app.app().patients().stats().await.unwrap().live;
    assert!(live >= 1, "actors are live right after use (live = {live})");

    let stats = eventually(
        Duration::from_secs(10),
        "idle actors to be passivated",
        || async {
            let stats = app.app().patients().stats().await.unwrap();
            (stats.live == 0).then_some(stats)
        },
    )
    .await;
    assert!(stats.passivated_total >= 5, "{stats:?}");
    assert_eq!(stats.idle, 5, "their states are kept: {stats:?}");

    // A passivated patient answers again, its kept state moving into a new actor.
    for path in &paths {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
    }
    let stats = app.app().patients().stats().await.unwrap();
    assert_eq!((stats.live, stats.idle), (5, 0), "{stats:?}");

    // Probing unknown ids leaves no actors behind.
    for _ in 0..20 {
        assert_eq!(
            app.get(&format!("/api/v1/patients/{}", uuid::Uuid::new_v4()))
                .await
                .status(),
            404
        );
    }
    eventually(
        Duration::from_secs(5),
        "actors of unknown ids to stop",
        || async { (app.app().patients().stats().await.unwrap().live <= 5).then_some(()) },
    )
    .await;
    app.shutdown().await;
}
