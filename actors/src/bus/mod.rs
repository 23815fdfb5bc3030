//! The event bus: Kafka topics and the producer actor the CDC reader publishes through.
//!
//! What is built here is the part of the event-bus issue that stands on its own: topic
//! administration and an idempotent, ordered, acknowledged producer. The WAL reader that
//! feeds it is the next step of that issue.

pub mod hub;
pub mod producer;
pub mod topics;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

/// How medflow talks to Kafka.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Prepended to every topic name (tests use a unique one per test).
    pub topic_prefix: String,
    /// Partitions and replication factor of topics medflow creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer waits to fill a batch.
    pub linger: Duration,
    /// A message not acknowledged within this long fails (and is re-sent from the WAL).
    pub message_timeout: Duration,
    /// Unacknowledged produce requests per broker connection (≤ 5 keeps idempotent order).
    pub max_in_flight: u32,
}

impl KafkaSettings {
    /// The full name of topic `name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The client configuration shared by producer and admin clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "medflow")
            .set("socket.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "5000");
        config
    }

    /// An idempotent producer (`acks=all`, ordered per partition, never duplicating a
    /// retried send), as every medflow publisher uses.
    pub fn reliable_producer(&self) -> rdkafka::error::KafkaResult<FutureProducer> {
        self.client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "max.in.flight.requests.per.connection",
                self.max_in_flight.to_string(),
            )
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("compression.type", "lz4")
            .create()
    }
}
