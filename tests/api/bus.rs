//! The event bus against the real broker: topic administration and the producer actor.

use std::time::Duration;

use medflow_actors::bus::KafkaSettings;
use medflow_actors::bus::producer::{KafkaProducer, OutgoingRecord, ProducerMessage};
use medflow_actors::bus::topics::ensure_topics;
use ractor::Actor;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

fn settings(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_owned(),
        topic_prefix: format!("t{}.", uuid::Uuid::new_v4().simple()),
        partitions: 3,
        replication_factor: 1,
        linger: Duration::from_millis(5),
        message_timeout: Duration::from_secs(10),
        max_in_flight: 5,
    }
}

fn brokers() -> String {
    std::env::var("MEDFLOW_TEST_KAFKA_BROKERS")
        .expect("MEDFLOW_TEST_KAFKA_BROKERS is not set: run the tests through scripts/test")
}

async fn publish(
    producer: &ractor::ActorRef<ProducerMessage>,
    records: Vec<OutgoingRecord>,
) -> Result<usize, String> {
    producer
        .call(
            |reply| ProducerMessage::Publish { records, reply },
            Some(Duration::from_secs(30)),
        )
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| match result {
            ractor::rpc::CallResult::Success(outcome) => outcome.map_err(|e| e.0),
            other => Err(format!("{other:?}")),
        })
}

#[tokio::test]
async fn records_are_published_in_order_with_keys_headers_and_tombstones() {
    let settings = settings(&brokers());
    let topic = settings.topic("medflow.public.patients");
    ensure_topics(&settings, std::slice::from_ref(&topic))
        .await
        .unwrap();
    // Creating again is a no-op.
    ensure_topics(&settings, std::slice::from_ref(&topic))
        .await
        .unwrap();

    let (producer, handle) = Actor::spawn(
        None,
        KafkaProducer {
            settings: settings.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let key = br#"{"id":"p-1"}"#.to_vec();
    let records: Vec<OutgoingRecord> = (0..50)
        .map(|n| OutgoingRecord {
            topic: topic.clone(),
            key: Some(key.clone()),
            payload: (n != 49).then(|| format!(r#"{{"n":{n}}}"#).into_bytes()),
            headers: vec![("eventType".into(), b"PatientUpdated".to_vec())],
        })
        .collect();
    assert_eq!(publish(&producer, records).await, Ok(50));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("g{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("messages arrive within the deadline")
            .unwrap();
        assert_eq!(message.key(), Some(key.as_slice()));
        let header = message.headers().unwrap().get(0);
        assert_eq!(header.key, "eventType");
        assert_eq!(header.value, Some(b"PatientUpdated".as_slice()));
        seen.push(
            message
                .payload()
                .map(|p| String::from_utf8(p.to_vec()).unwrap()),
        );
    }
    // One key, one partition, in order; the last is a tombstone.
    let expected: Vec<Option<String>> = (0..50)
        .map(|n| (n != 49).then(|| format!(r#"{{"n":{n}}}"#)))
        .collect();
    assert_eq!(seen, expected);
    producer.stop(None);
    handle.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_batch_instead_of_hanging() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let mut settings = settings(&closed.to_string());
    settings.message_timeout = Duration::from_millis(1500);
    let (producer, handle) = Actor::spawn(
        None,
        KafkaProducer {
            settings: settings.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let record = OutgoingRecord {
        topic: settings.topic("medflow.public.patients"),
        key: None,
        payload: Some(b"{}".to_vec()),
        headers: Vec::new(),
    };
    let outcome = publish(&producer, vec![record]).await;
    let error = outcome.expect_err("nothing can be acknowledged");
    assert!(error.contains("not acknowledged"), "{error}");
    producer.stop(None);
    handle.await.unwrap();
}
