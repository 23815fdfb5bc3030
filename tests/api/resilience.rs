//! The event bus under abrupt failures: the medflow process killed with SIGKILL mid-stream,
//! and the PostgreSQL server restarted mid-stream. In both, every committed write's event
//! reaches Kafka (duplicates are allowed: delivery is at-least-once).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::cdc::{app_slot, app_topic_prefix, consume_until, drop_slot, wait_streaming};
use crate::helpers::{TestApp, eventually, patient_body, spawn_app_on, spawn_app_with};
use crate::own_postgres::{OwnPostgres, free_port, test_work_dir};

/// The medflow binary running only the CDC pipeline for `app`'s database, slot and topics,
/// as a separate process that can be killed without warning.
pub(crate) struct MedflowProcess {
    child: Child,
    pub(crate) address: String,
}

impl MedflowProcess {
    pub(crate) async fn start(app: &TestApp, log: &Path) -> Self {
        Self::start_with(app, log, &[]).await
    }

    /// As [`MedflowProcess::start`], with `settings` (environment variables) on top.
    pub(crate) async fn start_with(
        app: &TestApp,
        log: &Path,
        settings_env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let settings = app.app().settings();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_medflow"))
            .arg("serve")
            .env("MEDFLOW__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("MEDFLOW__DATABASE__URL", &app.db_url)
            .env("MEDFLOW__DATABASE__POOL_SIZE", "4")
            .env("MEDFLOW__KAFKA__BROKERS", &settings.kafka.brokers)
            .env("MEDFLOW__KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
            .env("MEDFLOW__KAFKA__PARTITIONS", "3")
            .env("MEDFLOW__CDC__ENABLED", "true")
            .env("MEDFLOW__CDC__SLOT", &settings.cdc.slot)
            .env("MEDFLOW__CDC__BATCH_WAIT_MS", "10")
            .env("MEDFLOW__CDC__STATUS_INTERVAL_MS", "100")
            .env("MEDFLOW__CDC__BACKOFF_INITIAL_MS", "100")
            .env("MEDFLOW__CDC__BACKOFF_MAX_MS", "1000")
            .env("MEDFLOW__AUDIT__SLOT", &settings.audit.slot)
            .env("MEDFLOW__AUDIT__SEAL_INTERVAL_MS", "50")
            .env(
                "MEDFLOW__AUDIT__SIGNING_KEY",
                crate::helpers::TEST_AUDIT_SIGNING_KEY,
            )
            .env("MEDFLOW__LOG__LEVEL", "info")
            .envs(settings_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the medflow binary");
        let process = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        // The in-process app's staff token is valid here too: both use the default dev key.
        eventually(Duration::from_secs(60), "the process to stream", || async {
            let response = app
                .client
                .get(format!("{}/api/v1/admin/cdc", process.address))
                .send()
                .await
                .ok()?;
            let status: Value = response.json().await.ok()?;
            (status["state"] == "streaming").then_some(())
        })
        .await;
        process
    }

    /// SIGKILL: no shutdown hook runs, nothing queued is flushed.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for MedflowProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `count` patients through `app`, 8 at a time, counting completed writes in `done`.
pub(crate) async fn write_patients(
    app: &TestApp,
    from: u32,
    count: u32,
    done: &AtomicUsize,
) -> Vec<String> {
    futures::stream::iter(from..from + count)
        .map(|n| async move {
            let created = app.create_patient(&patient_body(n)).await;
            done.fetch_add(1, Ordering::Relaxed);
            created["id"].as_str().unwrap().to_owned()
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Consumes `PatientCreated` until every id in `ids` was seen; returns how many arrived.
pub(crate) async fn every_create_arrives(app: &TestApp, ids: &HashSet<String>) -> usize {
    let brokers = app.app().settings().kafka.brokers.clone();
    let topic = format!("{}PatientCreated", app_topic_prefix(app));
    let seen = consume_until(&brokers, &topic, "every create", |seen| {
        let keys: HashSet<&str> = seen.iter().map(|(key, _)| key.as_str()).collect();
        ids.iter().all(|id| keys.contains(id.as_str()))
    })
    .await;
    seen.len()
}

#[tokio::test]
async fn medflow_killed_abruptly_mid_stream_and_restarted_loses_no_event() {
    // The in-process app only writes; the pipeline runs in a separate medflow process.
    let app = spawn_app_with(|_| {}).await;
    let log = test_work_dir("killed").join(format!("{}.log", app.db_name));
    let first = MedflowProcess::start(&app, &log).await;

    const WRITES: u32 = 600;
    let done = Arc::new(AtomicUsize::new(0));
    let writer = write_patients(&app, 30_000, WRITES, &done);
    let crash = async {
        // Kill it while writes are streaming through it.
        eventually(Duration::from_secs(60), "writes under way", || async {
            (done.load(Ordering::Relaxed) >= 150).then_some(())
        })
        .await;
        first.kill();
        let written_at_kill = done.load(Ordering::Relaxed);
        let second = MedflowProcess::start(&app, &log).await;
        (written_at_kill, second)
    };
    let (ids, (written_at_kill, second)) = tokio::join!(writer, crash);
    let ids: HashSet<String> = ids.into_iter().collect();
    assert!(
        written_at_kill < WRITES as usize,
        "the kill came after every write ({written_at_kill})"
    );

    let arrived = every_create_arrives(&app, &ids).await;
    println!(
        "killed after {written_at_kill} of {WRITES} writes: {arrived} events arrived ({} duplicates)",
        arrived - ids.len()
    );
    drop(second);
    let db = app.db().await;
    let slot = app_slot(&app);
    app.shutdown().await;
    drop_slot(&db, &slot).await;
}

/// A cluster of the test's own and an application streaming its CDC (configured further by
/// `configure`).
async fn streaming_on_own_cluster(
    configure: impl FnOnce(&mut medflow::config::Settings),
) -> (Arc<OwnPostgres>, TestApp) {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(OwnPostgres::start)
            .await
            .unwrap(),
    );
    let app = spawn_app_on("postgres".into(), cluster.url(), |settings| {
        settings.cdc.enabled = true;
        configure(settings);
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    (cluster, app)
}

#[tokio::test]
async fn a_postgresql_restart_mid_stream_delays_events_but_loses_none() {
    let (cluster, app) = streaming_on_own_cluster(|_| {}).await;
    let done = AtomicUsize::new(0);
    let mut ids: HashSet<String> = write_patients(&app, 40_000, 100, &done)
        .await
        .into_iter()
        .collect();

    // A fast restart: every connection, the replication one included, is cut.
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.pg_ctl("restart"))
        .await
        .unwrap();

    // Writes answer again once the pool has reconnected (503 meanwhile, nothing written).
    ids.extend(write_after_restart(&app, 41_000, 100).await);
    let status = wait_streaming(&app, Duration::from_secs(30)).await;
    assert!(status["confirmedLsn"].is_string(), "{status}");

    let arrived = every_create_arrives(&app, &ids).await;
    println!(
        "PostgreSQL restarted after 100 of 200 writes: {arrived} events arrived ({} duplicates)",
        arrived - ids.len()
    );
    app.shutdown().await;
}

/// Creates `count` patients one by one after a PostgreSQL restart, each retried while the
/// pool reconnects (503, nothing written); returns their ids.
pub(crate) async fn write_after_restart(app: &TestApp, from: u32, count: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for n in from..from + count {
        let body = patient_body(n);
        let id = eventually(
            Duration::from_secs(30),
            "a write after the restart",
            || async {
                let response = app.post_json("/api/v1/patients", &body).await;
                match response.status().as_u16() {
                    201 => response.json::<Value>().await.ok()?["id"]
                        .as_str()
                        .map(str::to_owned),
                    503 => None,
                    other => panic!("a write after the restart answered {other}"),
                }
            },
        )
        .await;
        ids.push(id);
    }
    ids
}

/// The slot's confirmed position and the server's current WAL position.
async fn slot_positions(db: &tokio_postgres::Client, slot: &str) -> Option<(String, String, bool)> {
    let row = db
        .query_opt(
            "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text,
                    confirmed_flush_lsn >= pg_current_wal_lsn()
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1), row.get(2)))
}

/// Waits until `slot` has confirmed the server's current WAL position; returns both.
pub(crate) async fn slot_caught_up(db: &tokio_postgres::Client, slot: &str) -> (String, String) {
    let (confirmed, current, _) = eventually(
        Duration::from_secs(60),
        "the slot to confirm the WAL's end",
        || async {
            slot_positions(db, slot)
                .await
                .filter(|(_, _, caught_up)| *caught_up)
        },
    )
    .await;
    (confirmed, current)
}

#[tokio::test]
async fn a_fast_postgresql_shutdown_completes_in_seconds_while_medflow_streams() {
    let (cluster, app) = streaming_on_own_cluster(|settings| {
        // No heartbeat commit may move the slot: only keepalives can confirm the tail.
        settings.cdc.heartbeat_ms = 3_600_000;
        settings.cdc.status_interval_ms = 200;
    })
    .await;
    let done = AtomicUsize::new(0);
    let mut ids: HashSet<String> = write_patients(&app, 50_000, 20, &done)
        .await
        .into_iter()
        .collect();

    // WAL that is no commit ends the stream (as the shutdown checkpoint will): a
    // non-transactional logical message. Only a confirmed keepalive position covers it.
    let db = app.db().await;
    db.execute(
        "SELECT pg_logical_emit_message(false, 'medflow.test', 'tail')",
        &[],
    )
    .await
    .unwrap();
    // A checkpoint flushes it and adds records of its own: the walsender sends past the last
    // commit, and at a shutdown waits until the client confirms that far.
    db.batch_execute("CHECKPOINT").await.unwrap();
    let (confirmed, current) = slot_caught_up(&db, &app_slot(&app)).await;
    println!("idle: slot confirmed {confirmed}, WAL at {current}");
    drop(db);

    // A fast restart with the reader connected, under light write load (as an operator's
    // maintenance meets it), finishes within 10 s (pg_ctl -t 10).
    let restarting = cluster.clone();
    let started = std::time::Instant::now();
    let restart = tokio::task::spawn_blocking(move || restarting.pg_ctl_within("restart", 10));
    let load = async {
        let mut n = 0;
        while !restart.is_finished() {
            // Refused while the server goes down: only the restart's outcome matters here.
            let _ = app
                .post_json("/api/v1/patients", &patient_body(52_000 + n))
                .await;
            n += 1;
        }
    };
    load.await;
    restart.await.unwrap();
    println!("pg_ctl -m fast restart took {:?}", started.elapsed());

    // The reader reconnects and streams what is written afterwards.
    ids.extend(write_after_restart(&app, 51_000, 20).await);
    wait_streaming(&app, Duration::from_secs(30)).await;
    every_create_arrives(&app, &ids).await;
    app.shutdown().await;
}
