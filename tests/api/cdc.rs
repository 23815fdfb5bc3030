//! Change data capture against the real PostgreSQL and broker: snapshot, streaming of
//! domain writes as Debezium envelopes and business events, confirmation after acks.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use medflow_actors::bus::KafkaSettings;
use medflow_actors::bus::producer::KafkaProducer;
use medflow_actors::bus::topics::ensure_topics;
use medflow_actors::cdc::reader::{CdcReader, CdcSettings, EVENT_TYPES, PUBLISHED_TABLES};
use ractor::Actor;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

use crate::helpers::{TestApp, patient_body, spawn_app};

/// One consumed message: topic, key, value (None for a tombstone), headers.
#[derive(Debug, Clone)]
struct Consumed {
    topic: String,
    key: Option<String>,
    value: Option<Value>,
    headers: HashMap<String, String>,
}

struct Pipeline {
    kafka: KafkaSettings,
    cdc: CdcSettings,
    consumer: StreamConsumer,
    seen: Vec<Consumed>,
    reader: ractor::ActorRef<medflow_actors::cdc::reader::CdcMessage>,
    producer: ractor::ActorRef<medflow_actors::bus::producer::ProducerMessage>,
}

impl Pipeline {
    async fn start(app: &TestApp) -> Self {
        let brokers = std::env::var("MEDFLOW_TEST_KAFKA_BROKERS").unwrap();
        let kafka = KafkaSettings {
            brokers: brokers.clone(),
            topic_prefix: format!("t{}.", uuid::Uuid::new_v4().simple()),
            partitions: 3,
            replication_factor: 1,
            linger: Duration::from_millis(5),
            message_timeout: Duration::from_secs(10),
            max_in_flight: 5,
        };
        let cdc = CdcSettings {
            database_url: app.db_url.clone().into(),
            slot: app_slot(app),
            publication: "medflow_cdc".into(),
            server_name: "medflow".into(),
            batch_max: 500,
            batch_wait: Duration::from_millis(50),
            status_interval: Duration::from_millis(200),
            heartbeat: Duration::from_secs(1),
            transaction_metadata: false,
        };
        let mut topics: Vec<String> = PUBLISHED_TABLES
            .iter()
            .map(|table| cdc.change_topic(&kafka, table))
            .collect();
        topics.extend(EVENT_TYPES.iter().map(|name| kafka.topic(name)));
        // The reader creates its topics too; creating them first lets the consumer subscribe.
        ensure_topics(&kafka, &topics).await.unwrap();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("g{}", uuid::Uuid::new_v4().simple()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).unwrap();
        let (producer, _) = Actor::spawn(
            None,
            KafkaProducer {
                settings: kafka.clone(),
            },
            (),
        )
        .await
        .unwrap();
        let (reader, _) = Actor::spawn(
            None,
            CdcReader {
                settings: cdc.clone(),
                kafka: kafka.clone(),
                producer: producer.clone(),
                status: medflow_actors::cdc::CdcStatusCell::new(&cdc.slot),
            },
            (),
        )
        .await
        .expect("the CDC reader starts");
        Self {
            kafka,
            cdc,
            consumer,
            seen: Vec::new(),
            reader,
            producer,
        }
    }

    fn topic(&self, table: &str) -> String {
        self.cdc.change_topic(&self.kafka, table)
    }

    /// Consumes until `done` holds for what was seen, or panics at the deadline.
    async fn until(&mut self, what: &str, done: impl Fn(&[Consumed]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = tokio::time::timeout(left, self.consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen {:#?}", self.seen))
                .unwrap();
            let headers = header_map(&message);
            self.seen.push(Consumed {
                topic: message.topic().to_owned(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message
                    .payload()
                    .map(|p| serde_json::from_slice(p).unwrap()),
                headers,
            });
        }
    }

    async fn stop(self, app: &TestApp) {
        self.reader.stop(None);
        self.producer.stop(None);
        drop_slot(&app.db().await, &self.cdc.slot).await;
    }
}

fn ops<'a>(seen: &'a [Consumed], topic: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|m| m.topic == topic)
        .filter_map(|m| m.value.as_ref())
        .collect()
}

#[tokio::test]
async fn existing_rows_are_snapshotted_and_writes_stream_as_envelopes_and_events() {
    let app = spawn_app().await;
    let before_one = app.create_patient(&patient_body(1)).await;
    app.create_patient(&patient_body(2)).await;
    let mut pipeline = Pipeline::start(&app).await;
    let patients = pipeline.topic("patients");

    // The snapshot: one `r` per existing row, keyed by id.
    pipeline
        .until("the snapshot", |seen| ops(seen, &patients).len() >= 2)
        .await;
    let snapshot = ops(&pipeline.seen, &patients);
    assert!(snapshot.iter().all(|v| v["op"] == "r"), "{snapshot:?}");
    // Debezium's markers and positions: the first row `first`, the last `last` (only the two
    // patients exist), every row at the slot's consistent point, with a `sequence`.
    // The rows land in different partitions, so they are read in no set order.
    let mut markers: Vec<&str> = snapshot
        .iter()
        .map(|v| v["source"]["snapshot"].as_str().unwrap())
        .collect();
    markers.sort_unstable();
    assert_eq!(markers, ["first", "last"], "{snapshot:?}");
    let lsn = &snapshot[0]["source"]["lsn"];
    assert!(lsn.as_u64().is_some_and(|lsn| lsn > 0), "{snapshot:?}");
    assert!(
        snapshot.iter().all(|v| &v["source"]["lsn"] == lsn),
        "{snapshot:?}"
    );
    assert!(snapshot.iter().all(|v| v["source"]["sequence"].is_string()));
    let keyed = pipeline
        .seen
        .iter()
        .find(|m| {
            m.value
                .as_ref()
                .is_some_and(|v| v["after"]["id"] == before_one["id"])
        })
        .unwrap();
    assert_eq!(
        keyed.key.as_deref(),
        Some(json!({"id": before_one["id"]}).to_string().as_str())
    );
    // Events still undelivered in the outbox (written before the slot existed) are
    // delivered with the snapshot.
    let created_topic = pipeline.kafka.topic("PatientCreated");
    let first_id = before_one["id"].as_str().unwrap().to_owned();
    pipeline
        .until("the undelivered PatientCreated", |seen| {
            seen.iter()
                .any(|m| m.topic == created_topic && m.key.as_deref() == Some(first_id.as_str()))
        })
        .await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);

    // A create and an update stream as `c` and `u` (with the before image) and as events.
    let created = app.create_patient(&patient_body(3)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/patients/{id}")))
        .header("Content-Type", "application/merge-patch+json")
        .body(json!({"firstName": "Ольга"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let updated_topic = pipeline.kafka.topic("PatientUpdated");
    pipeline
        .until(
            "the envelopes and events of the create and the update",
            |seen| {
                let mine: Vec<&Value> = ops(seen, &patients)
                    .into_iter()
                    .filter(|v| v["after"]["id"] == id.as_str())
                    .collect();
                mine.iter().any(|v| v["op"] == "c")
                    && mine.iter().any(|v| v["op"] == "u")
                    && seen.iter().any(|m| m.topic == updated_topic)
                    && seen
                        .iter()
                        .any(|m| m.topic == created_topic && m.key.as_deref() == Some(id.as_str()))
            },
        )
        .await;
    let changes: Vec<&Value> = ops(&pipeline.seen, &patients)
        .into_iter()
        .filter(|v| v["after"]["id"] == id.as_str())
        .collect();
    let summary: Vec<(String, Option<String>, Option<Value>)> = pipeline
        .seen
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                m.key.clone(),
                m.value.as_ref().map(|v| v["op"].clone()),
            )
        })
        .collect();
    assert_eq!(changes.len(), 2, "{summary:#?}");
    assert_eq!(changes[0]["op"], "c");
    assert_eq!(changes[0]["before"], Value::Null);
    assert_eq!(changes[1]["op"], "u");
    assert_eq!(changes[1]["before"]["first_name"], created["firstName"]);
    assert_eq!(changes[1]["after"]["first_name"], "Ольга");
    // Keyed by the primary key only, so every change of a row lands in one partition.
    let keys: Vec<Option<String>> = pipeline
        .seen
        .iter()
        .filter(|m| m.topic == patients)
        .filter(|m| {
            m.value
                .as_ref()
                .is_some_and(|v| v["after"]["id"] == id.as_str())
        })
        .map(|m| m.key.clone())
        .collect();
    assert_eq!(keys, vec![Some(json!({"id": id}).to_string()); 2]);
    let source = &changes[1]["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["table"], "patients");
    assert_eq!(source["snapshot"], "false");
    assert!(source["lsn"].as_u64().unwrap() > 0);
    // `sequence`: the previous commit's end (the create's) and this change's position.
    let sequence: Vec<Option<String>> =
        serde_json::from_str(source["sequence"].as_str().unwrap()).unwrap();
    assert_eq!(
        sequence[1].as_deref(),
        Some(source["lsn"].as_u64().unwrap().to_string().as_str())
    );
    assert!(sequence[0].is_some(), "{source}");
    assert!(source["version"].as_str().unwrap().ends_with(".Final"));
    assert_eq!(source["xmin"], Value::Null);
    let source = source.clone();
    // Dates as days since the epoch, like Debezium.
    assert!(changes[0]["after"]["birth_date"].is_i64());

    let event = pipeline
        .seen
        .iter()
        .find(|m| m.topic == created_topic && m.key.as_deref() == Some(id.as_str()))
        .expect("PatientCreated keyed by the patient id");
    let value = event.value.as_ref().unwrap();
    assert_eq!(value["eventType"], "PatientCreated");
    assert_eq!(value["aggregateId"], id.as_str());
    assert_eq!(value["patientId"], id.as_str());
    assert_eq!(value["version"], 1);
    assert_eq!(value["payload"]["firstName"], created["firstName"]);
    assert!(value["eventTimestamp"].is_string());
    assert_eq!(event.headers["eventType"], "PatientCreated");
    assert_eq!(event.headers["eventId"], value["eventId"].as_str().unwrap());
    let update = pipeline
        .seen
        .iter()
        .find(|m| m.topic == updated_topic)
        .unwrap();
    assert_eq!(
        update.value.as_ref().unwrap()["payload"]["updatedFields"]["firstName"],
        "Ольга"
    );

    // The slot's confirmed position moves past the writes once they were acknowledged.
    let db = app.db().await;
    let lsn = source["lsn"].as_u64().unwrap();
    let written = format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff);
    let slot = pipeline.cdc.slot.clone();
    crate::helpers::eventually(Duration::from_secs(10), "the slot to confirm", || {
        let db = &db;
        let slot = slot.clone();
        let written = written.clone();
        async move {
            db.query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &written],
            )
            .await
            .ok()
            .and_then(|row| row.get::<_, bool>(0).then_some(()))
        }
    })
    .await;
    pipeline.stop(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_application_runs_the_pipeline_reports_it_and_stays_ready() {
    let app = crate::helpers::spawn_app_with(|settings| settings.cdc.enabled = true).await;
    let status = wait_streaming(&app, Duration::from_secs(20)).await;
    assert_eq!(status["enabled"], true);
    assert_eq!(status["slotActive"], true);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert!(ready.to_string().contains("cdc"), "{ready}");

    let created = app.create_patient(&patient_body(9)).await;
    assert!(created["id"].is_string());
    wait_confirmed(&app).await;
    // Published outbox rows are pruned: the outbox does not accumulate.
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the outbox to be pruned",
        || async { (app.count("SELECT count(*) FROM outbox").await == 0).then_some(()) },
    )
    .await;

    // The database drops the replication connection: the pipeline reconnects and resumes.
    let slot = app_slot(&app);
    app.db()
        .await
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    app.create_patient(&patient_body(10)).await;
    wait_confirmed(&app).await;
    let status: Value = app.get("/api/v1/admin/cdc").await.json().await.unwrap();
    assert!(status["restarts"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["state"], "streaming");

    shutdown_dropping_slot(app).await;
}

/// Waits until the slot's confirmed position passes everything written so far.
async fn wait_confirmed(app: &TestApp) {
    let lsn = crate::helpers::emit_mark(&app.db().await).await;
    crate::helpers::eventually(
        Duration::from_secs(20),
        "the writes to be confirmed",
        || {
            let lsn = lsn.clone();
            async move {
                let status: Value = app.get("/api/v1/admin/cdc").await.json().await.ok()?;
                let confirmed = status["confirmedLsn"].as_str()?.to_owned();
                let db = app.db().await;
                db.query_one(
                    "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
                    &[&confirmed, &lsn],
                )
                .await
                .ok()?
                .get::<_, bool>(0)
                .then_some(())
            }
        },
    )
    .await;
}

/// Waits until the application's pipeline streams and returns its status.
pub(crate) async fn wait_streaming(app: &TestApp, deadline: Duration) -> Value {
    crate::helpers::eventually(deadline, "cdc to stream", || async {
        let status: Value = app.get("/api/v1/admin/cdc").await.json().await.ok()?;
        (status["state"] == "streaming").then_some(status)
    })
    .await
}

/// `/readyz`'s verdict on the CDC pipeline (`ok` or `degraded`); panics if the probe is
/// not 200 — a CDC outage must never make the pod unready.
pub(crate) async fn cdc_readiness(app: &TestApp) -> String {
    let response = app.get("/readyz").await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "a cdc outage made the pod unready: {body}");
    let verdict = body["checks"]["cdc"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let expected = if verdict == "ok" { "ready" } else { "degraded" };
    assert_eq!(body["status"], expected, "{body}");
    verdict
}

/// The replication slot the application's pipeline uses.
pub(crate) fn app_slot(app: &TestApp) -> String {
    app.app().settings().cdc.slot.clone()
}

/// Shuts `app` down, then drops its slot, which would otherwise keep WAL for ever.
pub(crate) async fn shutdown_dropping_slot(app: TestApp) {
    let slot = app_slot(&app);
    let db = app.db().await;
    app.shutdown().await;
    drop_slot(&db, &slot).await;
}

/// Drops a slot once its reader has let go of it (a slot keeps WAL for ever).
pub(crate) async fn drop_slot(db: &tokio_postgres::Client, slot: &str) {
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the slot to be released",
        || async {
            db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// A tansu broker of the test's own, which it may stop and start again on the same port and
/// storage.
pub(crate) struct OwnBroker {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let work = std::env::var("MEDFLOW_TEST_WORK").expect("run through scripts/test");
        let dir = std::path::Path::new(&work).join(format!("broker-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            dir,
            port,
            child: None,
        };
        broker.resume();
        broker
    }

    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn resume(&mut self) {
        let tansu = std::env::var("MEDFLOW_TEST_TANSU").expect("run through scripts/test");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Appended across restarts, so a panic before a restart is still found.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = std::process::Command::new(tansu)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.join("broker.log")
    }

    /// The broker's own panic, if it had one (tansu 0.6.0 can panic after a restart under
    /// load and then fail every request): a fault test must not blame medflow for it.
    pub(crate) fn panic(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let at = lines.iter().position(|line| line.contains("panicked at"))?;
        Some(lines[at.saturating_sub(8)..(at + 3).min(lines.len())].join("\n"))
    }

    /// Stops the broker process (SIGSTOP): connections stay open and nothing answers.
    #[cfg_attr(not(feature = "chaos"), allow(dead_code))]
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run on (SIGCONT).
    #[cfg_attr(not(feature = "chaos"), allow(dead_code))]
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker runs");
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// The last `lines` lines of the broker's log (colour codes removed).
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|line| {
                let mut plain = String::with_capacity(line.len());
                let mut escape = false;
                for c in line.chars() {
                    match (escape, c) {
                        (false, '\u{1b}') => escape = true,
                        (true, 'm') => escape = false,
                        (true, _) => {}
                        (false, c) => plain.push(c),
                    }
                }
                plain
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.stop();
    }
}

#[tokio::test]
async fn a_broker_outage_during_a_thousand_writes_delays_events_but_loses_none() {
    let mut broker = OwnBroker::start();
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.kafka.brokers = broker.address();
        settings.kafka.message_timeout_ms = 2_000;
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;

    broker.stop();
    let db = app.db().await;
    let slot = app_slot(&app);
    // A write during the outage, then a mark after it: the slot cannot confirm the mark
    // without Kafka acknowledging that write.
    let during = app.create_patient(&patient_body(9_999)).await;
    let mark = crate::helpers::emit_mark(&db).await;
    let writes = futures::stream::iter(0..1000u32)
        .map(|n| {
            let app = &app;
            async move {
                let created = app.create_patient(&patient_body(10_000 + n)).await;
                created["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(8);
    let mut ids: std::collections::HashSet<String> = writes.collect().await;
    assert_eq!(ids.len(), 1000);
    ids.insert(during["id"].as_str().unwrap().to_owned());
    // The outage shows: the pipeline restarts and readiness reports it degraded — the pod
    // stays ready (every pod shares the broker), REST keeps working.
    crate::helpers::eventually(
        Duration::from_secs(30),
        "readiness to report cdc",
        || async { (cdc_readiness(&app).await == "degraded").then_some(()) },
    )
    .await;
    // And it does not flap: probed like a kubelet (here every 100 ms for 3 s) while the
    // broker stays down and the pipeline restarts, every answer is 200.
    let mut probe = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..30 {
        probe.tick().await;
        let status = app
            .anonymous
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "readiness flapped during a broker outage");
    }

    // Nothing unacknowledged was confirmed: the slot still holds the WAL of the outage.
    let held: bool = db
        .query_one(
            "SELECT confirmed_flush_lsn < $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &mark],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        held,
        "the slot confirmed past writes Kafka never acknowledged"
    );

    broker.resume();
    crate::helpers::eventually(Duration::from_secs(60), "cdc to recover", || async {
        (cdc_readiness(&app).await == "ok").then_some(())
    })
    .await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", format!("g{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topic = format!("{}PatientCreated", app_topic_prefix(&app));
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut received = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !ids.is_subset(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                // A broker that panicked after its restart is a broker fault, said as such.
                if let Some(panic) = broker.panic() {
                    panic!("BROKER FAULT (tansu panicked; not a medflow failure): {panic}");
                }
                panic!(
                    "{} of 1000 events missing after the outage",
                    ids.difference(&seen).count()
                )
            })
            .unwrap();
        received += 1;
        if let Some(key) = message.key() {
            seen.insert(String::from_utf8_lossy(key).into_owned());
        }
    }
    // At-least-once: duplicates are allowed and reported, losses are not.
    println!(
        "events received: {received} for 1001 writes ({} duplicates)",
        received - seen.len().min(received)
    );
    shutdown_dropping_slot(app).await;
}

/// The topic prefix the application was configured with.
pub(crate) fn app_topic_prefix(app: &TestApp) -> String {
    app.app().settings().kafka.topic_prefix.clone()
}

/// Consumes `topic` from the beginning until `done` holds for the (key, value) pairs seen.
pub(crate) async fn consume_until(
    brokers: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    consume_topics_until(brokers, &[topic], what, |seen| {
        let pairs: Vec<(String, Value)> = seen
            .iter()
            .map(|(_, key, value)| (key.clone(), value.clone()))
            .collect();
        done(&pairs)
    })
    .await
    .into_iter()
    .map(|(_, key, value)| (key, value))
    .collect()
}

/// A consumer of `topics` from their beginning, in a group of its own.
pub(crate) fn reader_from_start(brokers: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("g{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

/// A message's headers as text.
pub(crate) fn header_map(message: &impl Message) -> HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The headers of the first message keyed `key` on `topic` (consumed from the beginning).
pub(crate) async fn headers_of(brokers: &str, topic: &str, key: &str) -> HashMap<String, String> {
    let consumer = reader_from_start(brokers, &[topic]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no message keyed {key} on {topic}"))
            .unwrap();
        if message.key() == Some(key.as_bytes()) {
            return header_map(&message);
        }
    }
}

/// Consumes `topics` from the beginning until `done` holds for the (topic, key, value)
/// triples seen.
pub(crate) async fn consume_topics_until(
    brokers: &str,
    topics: &[&str],
    what: &str,
    done: impl Fn(&[(String, String, Value)]) -> bool,
) -> Vec<(String, String, Value)> {
    let consumer = reader_from_start(brokers, topics);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                let keys: std::collections::HashSet<&String> =
                    seen.iter().map(|(_, k, _)| k).collect();
                let summary: Vec<(&String, &Value, &Value)> = seen
                    .iter()
                    .map(|(t, _, v)| (t, &v["op"], &v["source"]["snapshot"]))
                    .collect();
                panic!(
                    "timed out waiting for {what}: {} seen, {} distinct keys: {summary:?}",
                    seen.len(),
                    keys.len()
                )
            })
            .unwrap();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = message
            .payload()
            .map(|p| serde_json::from_slice(p).unwrap())
            .unwrap_or(Value::Null);
        seen.push((message.topic().to_owned(), key, value));
    }
    seen
}

#[tokio::test]
async fn appointment_and_document_writes_publish_their_changes_and_events() {
    let app = crate::helpers::spawn_app_with(|settings| settings.cdc.enabled = true).await;
    let brokers = app.app().settings().kafka.brokers.clone();
    let prefix = app_topic_prefix(&app);
    // Writes made while the pipeline snapshots would arrive as `r` records: wait for it.
    wait_streaming(&app, Duration::from_secs(20)).await;
    let patient = app.create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let doctor = app.create_doctor().await;
    let booked = app
        .book(&patient, &doctor, &crate::helpers::hours_ahead(2), 30)
        .await;
    let appointment = booked.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let document = app.create_document(&patient, &doctor).await;
    let document = document["id"].as_str().unwrap().to_owned();
    assert_eq!(app.sign(&document, &doctor).await.status(), 200);

    let topic = |name: &str| format!("{prefix}{name}");
    let expected = [
        (
            topic("medflow.public.appointments"),
            appointment.clone(),
            "c",
        ),
        (topic("medflow.public.documents"), document.clone(), "c"),
        (topic("medflow.public.documents"), document.clone(), "u"),
        (
            topic("medflow.public.document_versions"),
            String::new(),
            "c",
        ),
    ];
    let events = [
        (topic("AppointmentScheduled"), appointment.clone()),
        (topic("DocumentCreated"), document.clone()),
        (topic("DocumentSigned"), document.clone()),
    ];
    let names: std::collections::BTreeSet<String> = expected
        .iter()
        .map(|(t, _, _)| t.clone())
        .chain(events.iter().map(|(t, _)| t.clone()))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let seen = consume_topics_until(
        &brokers,
        &names,
        "appointment and document messages",
        |seen| {
            let changes_ok = expected.iter().all(|(t, id, op)| {
                seen.iter().any(|(topic, _, value)| {
                    topic == t
                        && value["op"] == *op
                        && (id.is_empty() || value["after"]["id"] == id.as_str())
                })
            });
            let events_ok = events.iter().all(|(t, id)| {
                seen.iter()
                    .any(|(topic, _, value)| topic == t && value["aggregateId"] == id.as_str())
            });
            changes_ok && events_ok
        },
    )
    .await;
    // Business events are keyed by the patient; change records by the row's primary key.
    for (topic, key, value) in &seen {
        if value.get("eventType").is_some() {
            assert_eq!(key, &patient, "{topic}");
            assert_eq!(value["patientId"], patient.as_str());
        } else if topic.ends_with("document_versions") {
            let key: Value = serde_json::from_str(key).unwrap();
            assert_eq!(key["document_id"], document.as_str());
            assert!(key["content_version"].is_i64());
        } else {
            assert_eq!(
                key,
                &json!({"id": value["after"]["id"]}).to_string(),
                "{topic}"
            );
        }
    }
    let signed = seen
        .iter()
        .find(|(topic, _, v)| {
            topic.ends_with("DocumentSigned") && v["aggregateId"] == document.as_str()
        })
        .unwrap();
    assert_eq!(signed.2["payload"]["signerId"], doctor.as_str());
    assert!(signed.2["payload"]["checksum"].is_string());
    // Clinical text never travels in business events.
    assert!(!signed.2.to_string().contains("Жалоб нет"));
    let created = seen
        .iter()
        .find(|(topic, _, v)| {
            topic.ends_with("DocumentCreated") && v["aggregateId"] == document.as_str()
        })
        .unwrap();
    assert_eq!(
        created.2["payload"]["contentUri"],
        format!("/api/v1/documents/{document}")
    );
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn events_of_each_patient_arrive_in_commit_order_under_concurrent_writes() {
    let app = crate::helpers::spawn_app_with(|settings| settings.cdc.enabled = true).await;
    let brokers = app.app().settings().kafka.brokers.clone();
    let prefix = app_topic_prefix(&app);
    let mut ids = Vec::new();
    for n in 0..20 {
        let created = app.create_patient(&patient_body(n)).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // Each patient is patched ten times in sequence; the twenty patients concurrently.
    futures::future::join_all(ids.iter().map(|id| {
        let app = &app;
        async move {
            for round in 0..10 {
                let response = app
                    .client
                    .patch(app.url(&format!("/api/v1/patients/{id}")))
                    .header("Content-Type", "application/merge-patch+json")
                    .body(json!({"email": format!("r{round}@example.org")}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }
    }))
    .await;
    let topic = format!("{prefix}PatientUpdated");
    let seen = consume_until(&brokers, &topic, "200 updates", |seen| seen.len() >= 200).await;
    for id in &ids {
        let versions: Vec<i64> = seen
            .iter()
            .filter(|(key, _)| key == id)
            .map(|(_, value)| value["version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, (2..=11).collect::<Vec<_>>(), "patient {id}");
    }
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn medflow_stopped_mid_stream_and_started_again_loses_no_event() {
    let first = crate::helpers::spawn_app_with(|settings| settings.cdc.enabled = true).await;
    let brokers = first.app().settings().kafka.brokers.clone();
    let prefix = app_topic_prefix(&first);
    let db_url = first.db_url.clone();
    let slot = app_slot(&first);
    let writes = futures::stream::iter(0..300u32)
        .map(|n| {
            let app = &first;
            async move {
                let created = app.create_patient(&patient_body(20_000 + n)).await;
                created["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(8);
    let ids: std::collections::HashSet<String> = writes.collect().await;
    // Stop at once, whatever the pipeline had read but not yet confirmed.
    first.shutdown().await;

    let second = crate::helpers::spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.database.url = db_url.clone().into();
        settings.cdc.slot = slot.clone();
        settings.kafka.topic_prefix = prefix.clone();
    })
    .await;
    let topic = format!("{prefix}PatientCreated");
    let seen = consume_until(&brokers, &topic, "every create", |seen| {
        let keys: std::collections::HashSet<&str> =
            seen.iter().map(|(key, _)| key.as_str()).collect();
        ids.iter().all(|id| keys.contains(id.as_str()))
    })
    .await;
    println!(
        "events received: {} for 300 writes ({} duplicates)",
        seen.len(),
        seen.len() - 300
    );
    shutdown_dropping_slot(second).await;
}

/// Makes every delete from the outbox fail (as a lost connection would), or lets them pass.
async fn block_outbox_pruning(app: &TestApp, blocked: bool) {
    let sql = if blocked {
        "CREATE OR REPLACE FUNCTION test_refuse_outbox_delete() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'deletes refused by the test'; END $$;
         DROP TRIGGER IF EXISTS refuse_outbox_delete ON outbox;
         CREATE TRIGGER refuse_outbox_delete BEFORE DELETE ON outbox
           FOR EACH ROW EXECUTE FUNCTION test_refuse_outbox_delete();"
    } else {
        "DROP TRIGGER IF EXISTS refuse_outbox_delete ON outbox; DROP FUNCTION IF EXISTS test_refuse_outbox_delete();"
    };
    app.db().await.batch_execute(sql).await.unwrap();
}

async fn outbox_drains(app: &TestApp, what: &str) {
    crate::helpers::eventually(Duration::from_secs(20), what, || async {
        (app.count("SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn published_outbox_rows_whose_prune_failed_are_pruned_later_and_after_a_restart() {
    let app = crate::helpers::spawn_app_with(|settings| settings.cdc.enabled = true).await;
    wait_streaming(&app, Duration::from_secs(20)).await;

    // Deletes fail while the events are delivered: the rows stay, and are retried.
    block_outbox_pruning(&app, true).await;
    for n in 0..20 {
        app.create_patient(&patient_body(61_000 + n)).await;
    }
    wait_confirmed(&app).await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 20);
    block_outbox_pruning(&app, false).await;
    outbox_drains(&app, "the failed prunes to be retried").await;

    // Rows left behind by a process that went away are pruned by the next one, once it has
    // confirmed past them.
    block_outbox_pruning(&app, true).await;
    for n in 20..40 {
        app.create_patient(&patient_body(61_000 + n)).await;
    }
    wait_confirmed(&app).await;
    let (db_name, db_url) = (app.db_name.clone(), app.db_url.clone());
    let prefix = app_topic_prefix(&app);
    app.shutdown().await;
    assert_eq!(count_on(&db_url, "SELECT count(*) FROM outbox").await, 20);
    let next = crate::helpers::spawn_app_on(db_name, db_url, |settings| {
        settings.cdc.enabled = true;
        settings.kafka.topic_prefix = prefix;
    })
    .await;
    block_outbox_pruning(&next, false).await;
    wait_streaming(&next, Duration::from_secs(20)).await;
    outbox_drains(&next, "the rows left by the last process to be pruned").await;
    shutdown_dropping_slot(next).await;
}

async fn count_on(db_url: &str, sql: &str) -> i64 {
    let (db, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn transaction_metadata_marks_each_transaction_and_places_its_change_events() {
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.cdc.enabled = true;
        settings.cdc.provide_transaction_metadata = true;
    })
    .await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    let patient = app.create_patient(&patient_body(71)).await;
    let doctor = app.create_doctor().await;
    // One transaction writes the document and its first version: two tables.
    let document = app
        .create_document(patient["id"].as_str().unwrap(), &doctor)
        .await;
    let document_id = document["id"].as_str().unwrap().to_owned();

    let prefix = app_topic_prefix(&app);
    let transactions = format!("{prefix}medflow.transaction");
    let documents = format!("{prefix}medflow.public.documents");
    let versions = format!("{prefix}medflow.public.document_versions");
    let brokers = app.app().settings().kafka.brokers.clone();
    let is_document = |value: &Value| value["after"]["id"] == document_id.as_str();
    let is_version = |value: &Value| value["after"]["document_id"] == document_id.as_str();
    let seen = consume_topics_until(
        &brokers,
        &[&transactions, &documents, &versions],
        "the document's transaction",
        |seen| {
            let change = seen.iter().find(|(_, _, value)| is_document(value));
            let Some(id) = change.map(|(_, _, value)| &value["transaction"]["id"]) else {
                return false;
            };
            seen.iter()
                .any(|(_, _, value)| value["status"] == "END" && &value["id"] == id)
                && seen.iter().any(|(_, _, value)| is_version(value))
        },
    )
    .await;
    let document_change = &seen.iter().find(|(_, _, v)| is_document(v)).unwrap().2;
    let version_change = &seen.iter().find(|(_, _, v)| is_version(v)).unwrap().2;
    let id = document_change["transaction"]["id"].as_str().unwrap();
    // Debezium's form: `<txId>:<LSN>`, the txId being the envelope's own.
    let (tx_id, _lsn) = id.split_once(':').unwrap();
    assert_eq!(tx_id, document_change["source"]["txId"].to_string());
    assert_eq!(version_change["transaction"]["id"], id);
    let mut orders = [
        document_change["transaction"]["total_order"]
            .as_u64()
            .unwrap(),
        version_change["transaction"]["total_order"]
            .as_u64()
            .unwrap(),
    ];
    orders.sort_unstable();
    assert_eq!(orders, [1, 2]);
    assert_eq!(document_change["transaction"]["data_collection_order"], 1);
    assert_eq!(version_change["transaction"]["data_collection_order"], 1);

    let boundaries: Vec<(&String, &Value)> = seen
        .iter()
        .filter(|(topic, _, value)| topic == &transactions && value["id"] == id)
        .map(|(_, key, value)| (key, value))
        .collect();
    assert_eq!(boundaries.len(), 2, "{boundaries:?}");
    let (key, begin) = boundaries[0];
    assert_eq!(key, &json!({ "id": id }).to_string());
    assert_eq!(begin["status"], "BEGIN");
    assert_eq!(begin["event_count"], Value::Null);
    assert_eq!(begin["data_collections"], Value::Null);
    let end = boundaries[1].1;
    assert_eq!(end["status"], "END");
    assert_eq!(end["event_count"], 2);
    assert_eq!(
        end["data_collections"],
        json!([
            {"data_collection": "public.document_versions", "event_count": 1},
            {"data_collection": "public.documents", "event_count": 1},
        ])
    );
    assert_eq!(end["ts_ms"], document_change["source"]["ts_ms"]);
    shutdown_dropping_slot(app).await;
}
