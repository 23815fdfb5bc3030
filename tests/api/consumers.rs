//! The consumer framework on the real broker: retry stages, pauses that hold back only their
//! own partition, dead letters and their replay, and a killed consumer's restart. The
//! handler here is the test's own (it fails on command); everything else is medflow's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use medflow_actors::bus::KafkaSettings;
use medflow_actors::bus::topics::ensure_topics;
use medflow_actors::consume::dlq;
use medflow_actors::consume::{
    ConsumerActor, ConsumerSpec, ConsumerStats, Consumers, Handler, HandlerError, Inbound,
    Outcomes, RetrySchedule,
};
use medflow_supervisors::consumers::{ConsumerSupervisor, ConsumerSupervisorMessage};
use ractor::{Actor, ActorRef};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::cdc::shutdown_dropping_slot;
use crate::helpers::{eventually, patient_body};
use crate::search::{q, search_app, search_now, search_until};

const DEADLINE: Duration = Duration::from_secs(30);
const GROUP: &str = "test-group";

/// The admin view (`GET /api/v1/admin/consumers`) of the group whose name ends with
/// `suffix`; `None` while the endpoint does not answer or the group is absent.
pub(crate) async fn consumer_group(app: &crate::helpers::TestApp, suffix: &str) -> Option<Value> {
    let view: Value = app.get("/api/v1/admin/consumers").await.json().await.ok()?;
    view["groups"]
        .as_array()?
        .iter()
        .find(|g| {
            g["group"]
                .as_str()
                .is_some_and(|name| name.ends_with(suffix))
        })
        .cloned()
}

/// Messages handed to any retry stage, from an admin view of a group.
pub(crate) fn retried(group: &Value) -> u64 {
    group["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["count"].as_u64().unwrap())
        .sum()
}

fn kafka() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("MEDFLOW_TEST_KAFKA_BROKERS")
            .expect("MEDFLOW_TEST_KAFKA_BROKERS is set by scripts/test"),
        topic_prefix: format!("t{}.", uuid::Uuid::new_v4().simple()),
        partitions: 3,
        replication_factor: 1,
        linger: Duration::from_millis(5),
        message_timeout: Duration::from_secs(10),
        max_in_flight: 5,
    }
}

/// What the test handler saw, and how it should fail.
#[derive(Default)]
struct Script {
    /// key → attempts of it that failed transiently before it succeeds.
    flaky: HashMap<String, u32>,
    /// keys that fail permanently until healed.
    poison: HashSet<String>,
    healed: AtomicBool,
    /// (key, attempt, when) of every successful handling.
    handled: Mutex<Vec<(String, u32, Instant)>>,
    /// (key, attempt, when) of every failure.
    failed: Mutex<Vec<(String, u32, Instant)>>,
}

impl Script {
    fn handled(&self, key: &str) -> Vec<(u32, Instant)> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, attempt, at)| (*attempt, *at))
            .collect()
    }

    fn handled_keys(&self) -> HashSet<String> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _, _)| k.clone())
            .collect()
    }
}

struct TestHandler(Arc<Script>);

impl Handler for TestHandler {
    fn handle<'a>(&'a self, batch: &'a [Inbound]) -> BoxFuture<'a, Outcomes> {
        async move {
            batch
                .iter()
                .map(|message| {
                    let key = String::from_utf8(message.key.clone().unwrap_or_default()).unwrap();
                    let script = &self.0;
                    let now = Instant::now();
                    let failure =
                        if script.poison.contains(&key) && !script.healed.load(Ordering::SeqCst) {
                            Some(HandlerError::permanent(format!("{key} cannot be handled")))
                        } else if script
                            .flaky
                            .get(&key)
                            .is_some_and(|fails| message.attempt < *fails)
                        {
                            Some(HandlerError::transient(format!("{key}: dependency down")))
                        } else {
                            None
                        };
                    match failure {
                        Some(error) => {
                            script
                                .failed
                                .lock()
                                .unwrap()
                                .push((key, message.attempt, now));
                            Err(error)
                        }
                        None => {
                            script
                                .handled
                                .lock()
                                .unwrap()
                                .push((key, message.attempt, now));
                            Ok(())
                        }
                    }
                })
                .collect()
        }
        .boxed()
    }
}

struct Harness {
    kafka: KafkaSettings,
    source: String,
    stats: Arc<ConsumerStats>,
    consumers: Consumers,
    supervisor: ActorRef<ConsumerSupervisorMessage>,
    producer: FutureProducer,
}

impl Harness {
    async fn start(schedule_ms: &[u64], script: Arc<Script>) -> Self {
        let kafka = kafka();
        let source = kafka.topic("source");
        ensure_topics(&kafka, std::slice::from_ref(&source))
            .await
            .unwrap();
        let retry = RetrySchedule(
            schedule_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        );
        Self::member(kafka, source, retry, script).await
    }

    /// A second member of the same group, sharing the handler's script.
    async fn join(&self, script: Arc<Script>) -> Self {
        Self::member(
            self.kafka.clone(),
            self.source.clone(),
            self.stats.schedule.clone(),
            script,
        )
        .await
    }

    /// Starts one member of the group `GROUP` reading `source`, under its own supervisor.
    async fn member(
        kafka: KafkaSettings,
        source: String,
        retry: RetrySchedule,
        script: Arc<Script>,
    ) -> Self {
        let spec = ConsumerSpec {
            name: GROUP.into(),
            topics: vec![source.clone()],
            retry,
            max_batch: 100,
            batch_wait: Duration::from_millis(5),
            needs_every_partition: false,
            dead_letter_poll: Duration::from_millis(200),
        };
        let stats = Arc::new(ConsumerStats::new(&kafka, &spec));
        let consumers = Consumers::default();
        let (supervisor, _) = Actor::spawn(
            None,
            ConsumerSupervisor {
                children: vec![ConsumerActor {
                    spec,
                    kafka: kafka.clone(),
                    handler: Arc::new(TestHandler(script)),
                    stats: stats.clone(),
                }],
                consumers: consumers.clone(),
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
            },
            (),
        )
        .await
        .unwrap();
        let producer = kafka.reliable_producer().unwrap();
        Self {
            kafka,
            source,
            stats,
            consumers,
            supervisor,
            producer,
        }
    }

    async fn produce(&self, key: &str, value: &Value) {
        let payload = value.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.source)
                    .key(key)
                    .payload(&payload)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: "eventType",
                            value: Some("Test"),
                        },
                    )),
                Duration::from_secs(10),
            )
            .await
            .expect("the broker takes the message");
    }

    /// `count` messages keyed `<prefix>0`, `<prefix>1`, …, sent concurrently.
    async fn produce_many(&self, prefix: &str, count: usize) {
        let keys: Vec<String> = (0..count).map(|n| format!("{prefix}{n}")).collect();
        let empty = json!({});
        futures::future::join_all(keys.iter().map(|key| self.produce(key, &empty))).await;
    }

    fn topics(&self) -> medflow_actors::consume::GroupTopics {
        self.stats.topics.clone()
    }

    async fn stop(self) {
        self.supervisor
            .stop_and_wait(None, Some(Duration::from_secs(20)))
            .await
            .unwrap();
    }
}

/// Reads `topic` from the start until a message with `key` arrives; returns its headers and
/// payload.
async fn read_message(
    kafka: &KafkaSettings,
    topic: &str,
    key: &str,
) -> (HashMap<String, String>, Value) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no message {key} on {topic}"))
            .unwrap();
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = serde_json::from_slice(message.payload().unwrap()).unwrap();
        return (headers, payload);
    }
}

#[tokio::test]
async fn a_message_failing_twice_goes_through_two_retry_stages_and_is_handled_once() {
    let script = Arc::new(Script {
        flaky: HashMap::from([("flaky".to_owned(), 2)]),
        ..Default::default()
    });
    let harness = Harness::start(&[200, 300], script.clone()).await;
    harness.produce("flaky", &json!({"n": 1})).await;

    eventually(DEADLINE, "the flaky message to be handled", || async {
        (!script.handled("flaky").is_empty()).then_some(())
    })
    .await;
    let handled = script.handled("flaky");
    assert_eq!(handled.len(), 1, "handled exactly once: {handled:?}");
    assert_eq!(handled[0].0, 2, "on its third attempt");
    let stats = &harness.stats;
    assert_eq!(stats.retried[0].load(Ordering::Relaxed), 1);
    assert_eq!(stats.retried[1].load(Ordering::Relaxed), 1);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);

    let topics = harness.topics();
    assert_eq!(
        topics.retry,
        [
            format!("{}test-group.retry.200ms", harness.kafka.topic_prefix),
            format!("{}test-group.retry.300ms", harness.kafka.topic_prefix),
        ]
    );
    for (stage, topic) in topics.retry.iter().enumerate() {
        let (headers, payload) = read_message(&harness.kafka, topic, "flaky").await;
        assert_eq!(payload, json!({"n": 1}));
        assert_eq!(headers["x-original-topic"], harness.source);
        assert_eq!(headers["x-attempt"], (stage + 1).to_string());
        assert!(
            headers["x-error"].contains("dependency down"),
            "{headers:?}"
        );
        assert!(headers["x-not-before"].parse::<i64>().unwrap() > 0);
        assert_eq!(
            headers["eventType"], "Test",
            "original headers travel along"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_retry_waits_its_delay_without_holding_back_other_messages() {
    let script = Arc::new(Script {
        flaky: HashMap::from([("slow".to_owned(), 1)]),
        ..Default::default()
    });
    let harness = Harness::start(&[3000], script.clone()).await;
    harness.produce("slow", &json!({})).await;
    for n in 0..30 {
        harness.produce(&format!("k{n}"), &json!({"n": n})).await;
    }
    eventually(DEADLINE, "the other 30 messages", || async {
        let keys = script.handled_keys();
        (0..30)
            .all(|n| keys.contains(&format!("k{n}")))
            .then_some(())
    })
    .await;
    assert!(
        script.handled("slow").is_empty(),
        "the retry is not due yet while the others flowed"
    );
    eventually(DEADLINE, "the retried message", || async {
        (!script.handled("slow").is_empty()).then_some(())
    })
    .await;
    let failed_at = script.failed.lock().unwrap()[0].2;
    let handled_at = script.handled("slow")[0].1;
    let waited = handled_at - failed_at;
    assert!(
        waited >= Duration::from_millis(2900),
        "the partition stayed paused until x-not-before: waited {waited:?}"
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_with_headers_and_can_be_replayed() {
    let script = Arc::new(Script {
        poison: HashSet::from(["poison".to_owned()]),
        ..Default::default()
    });
    let harness = Harness::start(&[200, 300], script.clone()).await;
    harness.produce("poison", &json!({"payload": "bad"})).await;
    harness.produce("fine", &json!({})).await;
    eventually(DEADLINE, "the dead letter", || async {
        (harness.stats.dead_lettered.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(
        harness.stats.retried[0].load(Ordering::Relaxed),
        0,
        "a permanent failure skips the retry stages"
    );
    // The admin view's lastError names the handler's failure.
    let last_error = harness.stats.snapshot().last_error.unwrap_or_default();
    assert!(
        last_error.contains("poison cannot be handled") && last_error.contains(&harness.source),
        "{last_error}"
    );
    let topics = harness.topics();
    let (headers, payload) = read_message(&harness.kafka, &topics.dlq, "poison").await;
    assert_eq!(payload, json!({"payload": "bad"}));
    assert_eq!(headers["x-original-topic"], harness.source);
    assert_eq!(headers["x-attempt"], "1");
    assert!(headers["x-error"].starts_with("permanent: poison cannot be handled"));
    let depth = dlq::depth(&harness.kafka, &topics).await.unwrap();
    assert_eq!((depth.total, depth.waiting), (1, 1));

    // Fixed: replay it to the original topic, where it is handled.
    script.healed.store(true, Ordering::SeqCst);
    let report = dlq::replay(&harness.kafka, &topics, 100).await.unwrap();
    assert_eq!((report.replayed, report.remaining), (1, 0));
    eventually(DEADLINE, "the replayed message to be handled", || async {
        (!script.handled("poison").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        dlq::depth(&harness.kafka, &topics).await.unwrap().waiting,
        0
    );
    let again = dlq::replay(&harness.kafka, &topics, 100).await.unwrap();
    assert_eq!(again.replayed, 0, "a dead letter is replayed once");
    harness.stop().await;
}

#[tokio::test]
async fn a_killed_consumer_is_restarted_and_resumes_from_its_committed_offset() {
    let script = Arc::new(Script::default());
    let harness = Harness::start(&[200], script.clone()).await;
    for n in 0..50 {
        harness.produce(&format!("a{n}"), &json!({})).await;
    }
    eventually(DEADLINE, "the first messages", || async {
        (script.handled_keys().len() >= 50).then_some(())
    })
    .await;
    let actor = harness.consumers.actor(GROUP).expect("the consumer runs");
    actor.kill();
    for n in 0..50 {
        harness.produce(&format!("b{n}"), &json!({})).await;
    }
    eventually(DEADLINE, "every message after the restart", || async {
        (script.handled_keys().len() == 100).then_some(())
    })
    .await;
    assert!(harness.stats.restarts.load(Ordering::Relaxed) >= 1);
    let restarted = harness.consumers.actor(GROUP).expect("running again");
    assert_ne!(restarted.get_id(), actor.get_id());
    let total = script.handled.lock().unwrap().len();
    println!("handled {total} times for 100 messages (redeliveries after the kill allowed)");
    harness.stop().await;
}

#[tokio::test]
async fn the_search_indexer_survives_being_killed_and_the_admin_view_shows_it() {
    let app = search_app(|_| {}).await;
    let token_word = "Кузнецова";
    for n in 0..10 {
        let mut body = patient_body(100 + n);
        body["lastName"] = json!(token_word);
        app.create_patient(&body).await;
    }
    let query = format!("type=patient&limit=100&q={}", q(token_word));
    search_until(&app, &query, "the first ten patients", |body| {
        body["total"] == 10
    })
    .await;
    let group = "medflow.search-indexer";
    let actor = app
        .app()
        .consumers()
        .actor(group)
        .expect("the indexer runs");
    actor.kill();
    for n in 10..20 {
        let mut body = patient_body(100 + n);
        body["lastName"] = json!(token_word);
        app.create_patient(&body).await;
    }
    search_until(
        &app,
        &query,
        "all twenty patients after the restart",
        |body| body["total"] == 20,
    )
    .await;
    let view: Value = app
        .get("/api/v1/admin/consumers")
        .await
        .json()
        .await
        .unwrap();
    let indexer = &view["groups"][0];
    assert!(
        indexer["group"].as_str().unwrap().ends_with(group),
        "{view}"
    );
    assert!(indexer["restarts"].as_u64().unwrap() >= 1, "{view}");
    assert_eq!(indexer["running"], true, "{view}");
    assert!(indexer["succeeded"].as_u64().unwrap() >= 20, "{view}");
    assert_eq!(indexer["dlq"]["waiting"], 0, "{view}");

    // A malformed change event is a permanent failure: dead-lettered, and replayable by an
    // admin (it fails again: still malformed).
    let kafka = app.app().settings().kafka();
    let producer = kafka.reliable_producer().unwrap();
    producer
        .send(
            FutureRecord::to(&app.app().settings().change_topic("patients"))
                .key("{\"id\":\"x\"}")
                .payload("{\"op\":\"u\",\"after\":{\"id\":\"not-a-uuid\"}}"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    eventually(DEADLINE, "the malformed event in the DLQ", || async {
        let indexer = consumer_group(&app, group).await?;
        (indexer["dlq"]["waiting"] == 1 && indexer["deadLettered"] == 1).then_some(())
    })
    .await;
    // … and counted by the gauge the dead-letter alert watches.
    let waiting = format!(
        "medflow_consumer_dead_letters_waiting{{group=\"{}\"}}",
        kafka.topic(group)
    );
    eventually(DEADLINE, "the dead letter in the gauge", || async {
        (app.metric(&waiting).await == 1.0).then_some(())
    })
    .await;
    let forbidden = app
        .anonymous
        .post(app.url(&format!("/api/v1/admin/dlq/{group}/replay")))
        .bearer_auth(app.token(&[medflow_http::policy::Role::Doctor], None))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let unknown = app
        .client
        .post(app.url("/api/v1/admin/dlq/nobody/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let replayed: Value = app
        .client
        .post(app.url(&format!("/api/v1/admin/dlq/{group}/replay")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    eventually(DEADLINE, "the replayed event to fail again", || async {
        (consumer_group(&app, group).await?["deadLettered"] == 2).then_some(())
    })
    .await;
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn a_broker_outage_delays_indexing_but_loses_nothing() {
    let mut broker = crate::cdc::OwnBroker::start();
    let address = broker.address();
    let app = search_app(|settings| {
        settings.kafka.brokers = address;
        settings.kafka.message_timeout_ms = 2_000;
    })
    .await;
    let name = "Перебоева";
    let query = format!("type=patient&limit=100&q={}", q(name));
    for n in 0..5 {
        let mut body = patient_body(300 + n);
        body["lastName"] = json!(name);
        app.create_patient(&body).await;
    }
    search_until(&app, &query, "the patients before the outage", |body| {
        body["total"] == 5
    })
    .await;

    broker.stop();
    for n in 5..10 {
        let mut body = patient_body(300 + n);
        body["lastName"] = json!(name);
        app.create_patient(&body).await;
    }
    // The outage shows as degraded (the CDC pipeline fails over to restarting) while the pod
    // stays ready; the admin view still answers, without the dead-letter depth it cannot read.
    eventually(DEADLINE, "the outage to show", || async {
        (crate::cdc::cdc_readiness(&app).await == "degraded").then_some(())
    })
    .await;
    let indexer = consumer_group(&app, "medflow.search-indexer")
        .await
        .expect("the indexer is listed");
    assert_eq!(indexer["dlq"], Value::Null, "{indexer}");
    let during = search_now(&app, &query).await;
    assert_eq!(during["total"], 5, "search keeps answering: {during}");

    broker.resume();
    // The CDC pipeline reconnects first (its admin requests time out on their own clock),
    // then the indexer reads what it published.
    eventually(Duration::from_secs(60), "cdc to recover", || async {
        (crate::cdc::cdc_readiness(&app).await == "ok").then_some(())
    })
    .await;
    let recovered = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(search_until(
        &app,
        &query,
        "every patient after the broker is back",
        |body| body["total"] == 10,
    )))
    .await;
    if let Err(failure) = recovered {
        // A broker that panicked after its restart is a broker fault, said as such.
        if let Some(panic) = broker.panic() {
            panic!("BROKER FAULT (tansu panicked; not a medflow failure): {panic}");
        }
        eprintln!("the broker's last lines:\n{}", broker.log_tail(30));
        std::panic::resume_unwind(failure);
    }
    shutdown_dropping_slot(app).await;
}

#[tokio::test]
async fn members_joining_and_leaving_the_group_hand_partitions_over_without_loss() {
    let script = Arc::new(Script::default());
    let first = Harness::start(&[200], script.clone()).await;
    let distinct = |n: usize| {
        let script = script.clone();
        async move {
            eventually(DEADLINE, &format!("{n} distinct messages"), || async {
                (script.handled_keys().len() == n).then_some(())
            })
            .await
        }
    };
    first.produce_many("a", 60).await;
    distinct(60).await;
    // A second member joins: the partitions are shared out again.
    let second = first.join(script.clone()).await;
    first.produce_many("b", 60).await;
    distinct(120).await;
    // The first leaves gracefully (commits, then its partitions are revoked).
    first.stop().await;
    second.produce_many("c", 60).await;
    distinct(180).await;
    assert!(second.stats.succeeded.load(Ordering::Relaxed) > 0);
    let handled = script.handled.lock().unwrap().len();
    println!("handled {handled} times for 180 messages");
    assert_eq!(
        handled, 180,
        "offsets were committed before each hand-over: nothing handled twice"
    );
    second.stop().await;
}
