//! A PostgreSQL switchover under a streaming medflow. PostgreSQL 15 does not carry logical
//! slots over to a standby, so the promoted one has no slot: medflow must notice, recreate
//! it, publish the outbox's undelivered events again and re-snapshot the change topics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::cdc::{OwnBroker, app_slot, app_topic_prefix, consume_topics_until, wait_streaming};
use crate::helpers::{eventually, patient_body, spawn_app_on};
use crate::own_postgres::OwnPostgres;
use crate::resilience::{every_create_arrives, write_after_restart, write_patients};

/// A TCP forwarder standing in for a Kubernetes Service in front of the primary: clients
/// connect to it and reach the current backend; switching the backend cuts every open
/// connection (as the old primary's shutdown does).
struct Forwarder {
    port: u16,
    backend: Arc<AtomicU16>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Forwarder {
    async fn start(backend: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Arc::new(AtomicU16::new(backend));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let backend = backend.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = backend.load(Ordering::SeqCst);
                    let forward = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut open = connections.lock().unwrap();
                    open.retain(|connection| !connection.is_finished());
                    open.push(forward);
                }
            }
        });
        Self {
            port,
            backend,
            connections,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Points new connections at `backend` and cuts the open ones.
    fn switch_to(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.switch_to(0);
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_switchover_to_a_promoted_standby_recreates_the_slot_and_loses_no_event() {
    let primary = Arc::new(
        tokio::task::spawn_blocking(OwnPostgres::start)
            .await
            .unwrap(),
    );
    let service = Forwarder::start(primary.port()).await;
    let mut broker = OwnBroker::start();
    let app = spawn_app_on("postgres".into(), service.url(), |settings| {
        settings.cdc.enabled = true;
        settings.kafka.brokers = broker.address();
        settings.kafka.message_timeout_ms = 2_000;
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    let done = AtomicUsize::new(0);
    let delivered: HashSet<String> = write_patients(&app, 60_000, 40, &done)
        .await
        .into_iter()
        .collect();
    every_create_arrives(&app, &delivered).await;

    // Events committed while the broker is down stay in the outbox, undelivered.
    broker.stop();
    let undelivered: HashSet<String> = write_patients(&app, 61_000, 40, &done)
        .await
        .into_iter()
        .collect();

    // A streaming replica, caught up with everything the primary committed.
    let standby = Arc::new(
        tokio::task::spawn_blocking({
            let primary = primary.clone();
            move || primary.start_standby()
        })
        .await
        .unwrap(),
    );
    let primary_db = connect(&primary.url()).await;
    let standby_db = connect(&standby.url()).await;
    eventually(
        Duration::from_secs(30),
        "the standby to catch up",
        || async {
            let target: String = primary_db
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .ok()?
                .get(0);
            let replayed: bool = standby_db
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&target],
                )
                .await
                .ok()?
                .get(0);
            replayed.then_some(())
        },
    )
    .await;
    drop(primary_db);

    // The switchover: the old primary stops (fast, within 10 s with medflow connected) and
    // the service points at the standby, not yet promoted — writes answer 503, never 500.
    tokio::task::spawn_blocking({
        let primary = primary.clone();
        move || primary.pg_ctl_within("stop", 10)
    })
    .await
    .unwrap();
    service.switch_to(standby.port());
    for n in 0..10 {
        let response = app
            .post_json("/api/v1/patients", &patient_body(62_000 + n))
            .await;
        assert_eq!(
            response.status().as_u16(),
            503,
            "a write while the service points at a standby"
        );
    }
    let recreated_before = app.metric("medflow_cdc_slot_recreated_total").await;

    tokio::task::spawn_blocking({
        let standby = standby.clone();
        move || standby.promote()
    })
    .await
    .unwrap();
    broker.resume();
    let after: HashSet<String> = write_after_restart(&app, 63_000, 40)
        .await
        .into_iter()
        .collect();
    wait_streaming(&app, Duration::from_secs(60)).await;
    // Streaming on the new slot: later writes are changes again.
    let later: HashSet<String> = write_patients(&app, 64_000, 40, &done)
        .await
        .into_iter()
        .collect();

    // Business topics lose nothing: the events undelivered at the switchover were still in
    // the outbox, which the promoted standby holds, and are published again.
    let all: HashSet<String> = delivered
        .iter()
        .chain(&undelivered)
        .chain(&after)
        .chain(&later)
        .cloned()
        .collect();
    let arrived = every_create_arrives(&app, &all).await;

    // Change topics: a new snapshot (`op: "r"`, marked first … last) of every row the new
    // primary holds when the slot is recreated (rows written after the promotion but before
    // that are in it too), then the changes after it.
    let existing: HashSet<&String> = delivered.iter().chain(&undelivered).collect();
    let topics: Vec<String> = [
        "patients",
        "doctors",
        "appointments",
        "documents",
        "document_versions",
    ]
    .iter()
    .map(|table| format!("{}medflow.public.{table}", app_topic_prefix(&app)))
    .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let brokers = broker.address();
    let seen = consume_topics_until(
        &brokers,
        &topics,
        "the re-snapshot and later changes",
        |seen| {
            let rows = |op: &str| -> HashSet<&str> {
                seen.iter()
                    .filter(|(_, _, value)| value["op"] == op)
                    .filter_map(|(_, _, value)| value["after"]["id"].as_str())
                    .collect()
            };
            let (reads, creates) = (rows("r"), rows("c"));
            existing.iter().all(|id| reads.contains(id.as_str()))
            && after
                .iter()
                .all(|id| reads.contains(id.as_str()) || creates.contains(id.as_str()))
            && later.iter().all(|id| creates.contains(id.as_str()))
            // The snapshot's last record closes it (in whichever table comes last).
            && seen
                .iter()
                .any(|(_, _, value)| value["source"]["snapshot"] == "last")
        },
    )
    .await;
    let markers: Vec<&Value> = seen
        .iter()
        .filter(|(_, _, value)| value["op"] == "r")
        .map(|(_, _, value)| &value["source"]["snapshot"])
        .collect();
    assert!(
        markers
            .iter()
            .all(|marker| ["first", "true", "last"].contains(&marker.as_str().unwrap())),
        "{markers:?}"
    );

    // The new primary has the slot, confirmed, and the recreation is counted.
    let slot = app_slot(&app);
    let confirmed: Option<String> = standby_db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confirmed.is_some(), "the slot on the new primary");
    let recreated = app.metric("medflow_cdc_slot_recreated_total").await;
    assert!(
        recreated > recreated_before,
        "medflow_cdc_slot_recreated_total went from {recreated_before} to {recreated}"
    );
    println!(
        "switchover: {} events for {} writes, {} change records ({} snapshot reads)",
        arrived,
        all.len(),
        seen.len(),
        markers.len()
    );
    app.shutdown().await;
}
