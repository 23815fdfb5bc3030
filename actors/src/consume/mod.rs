//! Isolated Kafka consumers with delayed retry and dead letters (DESIGN.md, "Failure handling
//! in consumers").
//!
//! ```text
//! topics ─► ConsumerActor(group) ─► Handler (batch) ─ ok ──────────────► offset stored, committed
//!              ▲                         └─ transient ─► <group>.retry.<delay>  (x-not-before)
//!              └── <group>.retry.* ◄─────┘  permanent or last stage ─► <group>.dlq
//! ```
//!
//! - One consumer group per purpose; the group reads its source topics *and* its own retry
//!   topics. A retry message not yet due pauses its partition until `x-not-before` (no
//!   sleeping on a message; other partitions keep flowing).
//! - An offset is stored only after its message was handled or handed to the next retry
//!   topic (delivery acknowledged), and committed after each batch and before a rebalance
//!   revokes partitions: a crash re-delivers, it never skips (handlers are idempotent).
//! - The in-flight window is one batch of at most `max_batch` messages.

pub mod dlq;
pub mod worker;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use crate::bus::KafkaSettings;

pub use worker::{ConsumerActor, ConsumerMessage};

/// Header naming the topic a retried or dead-lettered message first arrived on.
pub const H_ORIGINAL_TOPIC: &str = "x-original-topic";
/// Header counting the failed attempts so far (1 on the first retry stage).
pub const H_ATTEMPT: &str = "x-attempt";
/// Header with the last failure, as the handler described it.
pub const H_ERROR: &str = "x-error";
/// Header with the time (Unix milliseconds) before which a retry must not be processed.
pub const H_NOT_BEFORE: &str = "x-not-before";
/// Header naming the dead-letter topic a replayed message came from.
pub const H_REPLAYED_FROM: &str = "x-replayed-from";

/// One consumed message, detached from the client.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The topic the message belongs to: `x-original-topic` for a retried message.
    pub topic: String,
    /// The topic it was read from (a retry topic, or `topic`).
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers other than the retry bookkeeping ones.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Failed attempts before this one (0 on the source topic).
    pub attempt: u32,
    /// Unix milliseconds before which it must not be processed.
    pub not_before_ms: Option<i64>,
}

impl Inbound {
    /// A header's value as UTF-8 text, if present and valid.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// A record of this message's key and payload for `topic`, with its own headers and
    /// then `extra` (retry bookkeeping, `x-replayed-from`).
    pub(crate) fn republish<'a>(
        &'a self,
        topic: &'a str,
        extra: &[(&str, &[u8])],
    ) -> FutureRecord<'a, [u8], [u8]> {
        let mut headers = OwnedHeaders::new();
        let own = self
            .headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()));
        for (key, value) in own.chain(extra.iter().copied()) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        record
    }

    /// The business event's id (its `eventId` header), if it has one.
    pub fn event_id(&self) -> Option<uuid::Uuid> {
        self.header("eventId")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|text| text.parse().ok())
    }
}

/// Why a handler could not process a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Worth trying again later (a timeout, a 5xx, an unreachable dependency).
    Transient(String),
    /// Will fail the same way every time (malformed, refused by a mapping): dead-letter it.
    Permanent(String),
}

impl HandlerError {
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::Transient(message.to_string())
    }

    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::Permanent(message.to_string())
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Transient(message) | Self::Permanent(message) => message,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(message) => write!(f, "transient: {message}"),
            Self::Permanent(message) => write!(f, "permanent: {message}"),
        }
    }
}

/// The outcome of each message of a batch, in order.
pub type Outcomes = Vec<Result<(), HandlerError>>;

/// What a consumer does with its messages. A batch holds messages of several partitions; the
/// messages of one partition are in offset order and must be applied in that order.
/// Handling must be idempotent: a message may be delivered again after a crash.
pub trait Handler: Send + Sync + 'static {
    /// Handles `batch`, returning one outcome per message (same length, same order).
    fn handle<'a>(&'a self, batch: &'a [Inbound]) -> BoxFuture<'a, Outcomes>;
}

/// The delays between attempts; after the last one, the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    /// The integration profile's 1 min → 5 min → 15 min → 1 h.
    fn default() -> Self {
        Self(
            [60, 300, 900, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl RetrySchedule {
    /// The topic-name label of a delay: `1m`, `15m`, `1h`, `250ms`.
    pub fn label(delay: Duration) -> String {
        humantime_label(delay)
    }
}

fn humantime_label(delay: Duration) -> String {
    let ms = delay.as_millis() as u64;
    if ms == 0 {
        return "0ms".into();
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// One consumer group: what it reads and how it retries.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The group's name without the topic prefix, e.g. `medflow.search-indexer`.
    pub name: String,
    /// Source topics, already prefixed.
    pub topics: Vec<String>,
    pub retry: RetrySchedule,
    /// Messages handled per batch at most (the in-flight window).
    pub max_batch: usize,
    /// How long a batch gathers messages once it has one.
    pub batch_wait: Duration,
    /// The handler keeps a copy of everything (the embedded search index): an instance
    /// assigned only part of the source partitions — others share the group — holds an
    /// incomplete copy, which is logged and shown (`medflow_consumer_partial`).
    pub needs_every_partition: bool,
    /// How often the dead letters waiting for replay are counted
    /// (`medflow_consumer_dead_letters_waiting`).
    pub dead_letter_poll: Duration,
}

/// The names a group's retry path uses (all carry the topic prefix).
#[derive(Debug, Clone)]
pub struct GroupTopics {
    pub group_id: String,
    /// One per stage of the schedule, in order.
    pub retry: Vec<String>,
    pub dlq: String,
}

impl GroupTopics {
    pub fn new(kafka: &KafkaSettings, name: &str, schedule: &RetrySchedule) -> Self {
        let group_id = kafka.topic(name);
        Self {
            retry: schedule
                .0
                .iter()
                .map(|delay| format!("{group_id}.retry.{}", RetrySchedule::label(*delay)))
                .collect(),
            dlq: format!("{group_id}.dlq"),
            group_id,
        }
    }
}

/// Counters of one consumer group, shared with the admin endpoint.
#[derive(Debug)]
pub struct ConsumerStats {
    pub name: String,
    pub topics: GroupTopics,
    pub sources: Vec<String>,
    pub schedule: RetrySchedule,
    pub consumed: AtomicU64,
    pub succeeded: AtomicU64,
    /// Handed to retry stage i (0-based).
    pub retried: Vec<AtomicU64>,
    pub dead_lettered: AtomicU64,
    /// Messages not yet read on the assigned source partitions, and on the retry topics.
    pub lag: AtomicI64,
    pub retry_lag: AtomicI64,
    /// Partitions paused until a retry is due.
    pub paused: AtomicI64,
    /// Source-topic partitions assigned to this process, and how many the topics have.
    pub assigned_partitions: AtomicI64,
    pub source_partitions: AtomicI64,
    pub running: AtomicBool,
    pub restarts: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ConsumerStats {
    pub fn new(kafka: &KafkaSettings, spec: &ConsumerSpec) -> Self {
        Self {
            name: spec.name.clone(),
            topics: GroupTopics::new(kafka, &spec.name, &spec.retry),
            sources: spec.topics.clone(),
            schedule: spec.retry.clone(),
            consumed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            retried: spec.retry.0.iter().map(|_| AtomicU64::new(0)).collect(),
            dead_lettered: AtomicU64::new(0),
            lag: AtomicI64::new(0),
            retry_lag: AtomicI64::new(0),
            paused: AtomicI64::new(0),
            assigned_partitions: AtomicI64::new(0),
            source_partitions: AtomicI64::new(0),
            running: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// A serialisable copy.
    pub fn snapshot(&self) -> ConsumerSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerSnapshot {
            group: self.topics.group_id.clone(),
            topics: self.sources.clone(),
            running: self.running.load(Ordering::Relaxed),
            restarts: load(&self.restarts),
            consumed: load(&self.consumed),
            succeeded: load(&self.succeeded),
            retried: self
                .schedule
                .0
                .iter()
                .zip(&self.retried)
                .zip(&self.topics.retry)
                .enumerate()
                .map(|(stage, ((delay, count), topic))| RetryStageSnapshot {
                    stage: stage + 1,
                    delay: RetrySchedule::label(*delay),
                    topic: topic.clone(),
                    count: load(count),
                })
                .collect(),
            dead_lettered: load(&self.dead_lettered),
            dlq_topic: self.topics.dlq.clone(),
            lag: self.lag.load(Ordering::Relaxed),
            retry_lag: self.retry_lag.load(Ordering::Relaxed),
            paused_partitions: self.paused.load(Ordering::Relaxed),
            assigned_partitions: self.assigned_partitions.load(Ordering::Relaxed),
            source_partitions: self.source_partitions.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        }
    }

    pub fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = error;
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryStageSnapshot {
    /// 1 for the first retry.
    pub stage: usize,
    /// The delay before it, e.g. `1m`.
    pub delay: String,
    pub topic: String,
    /// Messages handed to this stage since start.
    pub count: u64,
}

/// A consumer group's state, as `GET /api/v1/admin/consumers` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSnapshot {
    pub group: String,
    pub topics: Vec<String>,
    pub running: bool,
    pub restarts: u64,
    pub consumed: u64,
    pub succeeded: u64,
    /// Per retry stage, in order: messages handed to it since start.
    pub retried: Vec<RetryStageSnapshot>,
    pub dead_lettered: u64,
    pub dlq_topic: String,
    /// Unread messages on the group's source partitions assigned to this process.
    pub lag: i64,
    /// Unread messages on its retry partitions assigned to this process.
    pub retry_lag: i64,
    pub paused_partitions: i64,
    /// Source-topic partitions the group assigned to this process, of `sourcePartitions`:
    /// fewer when other instances share the group.
    pub assigned_partitions: i64,
    pub source_partitions: i64,
    pub last_error: Option<String>,
}

/// The consumer groups this process runs, and their actors (for the admin endpoint and for
/// tests that kill one).
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    inner: Arc<RwLock<Vec<ConsumerEntry>>>,
}

#[derive(Debug, Clone)]
struct ConsumerEntry {
    stats: Arc<ConsumerStats>,
    actor: Option<ractor::ActorCell>,
}

impl Consumers {
    /// Registers a group (once, before it starts).
    pub fn register(&self, stats: Arc<ConsumerStats>) {
        self.write().push(ConsumerEntry { stats, actor: None });
    }

    /// Records the group's current actor (after each (re)start).
    pub fn set_actor(&self, name: &str, actor: Option<ractor::ActorCell>) {
        if let Some(entry) = self.write().iter_mut().find(|e| e.stats.name == name) {
            entry.actor = actor;
        }
    }

    pub fn actor(&self, name: &str) -> Option<ractor::ActorCell> {
        self.read()
            .iter()
            .find(|entry| entry.stats.name == name)
            .and_then(|entry| entry.actor.clone())
    }

    pub fn stats(&self, name: &str) -> Option<Arc<ConsumerStats>> {
        self.read()
            .iter()
            .find(|entry| entry.stats.name == name || entry.stats.topics.group_id == name)
            .map(|entry| entry.stats.clone())
    }

    pub fn snapshots(&self) -> Vec<ConsumerSnapshot> {
        self.read()
            .iter()
            .map(|entry| entry.stats.snapshot())
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ConsumerEntry>> {
        self.inner
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<ConsumerEntry>> {
        self.inner
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_label_their_topics() {
        let label = |ms| RetrySchedule::label(Duration::from_millis(ms));
        assert_eq!(label(60_000), "1m");
        assert_eq!(label(900_000), "15m");
        assert_eq!(label(3_600_000), "1h");
        assert_eq!(label(5_000), "5s");
        assert_eq!(label(250), "250ms");
        assert_eq!(label(90_000), "90s");
    }

    #[test]
    fn a_group_names_its_retry_path() {
        let kafka = KafkaSettings {
            brokers: String::new(),
            topic_prefix: "t1.".into(),
            partitions: 1,
            replication_factor: 1,
            linger: Duration::ZERO,
            message_timeout: Duration::ZERO,
            max_in_flight: 1,
        };
        let topics = GroupTopics::new(&kafka, "medflow.search-indexer", &RetrySchedule::default());
        assert_eq!(topics.group_id, "t1.medflow.search-indexer");
        assert_eq!(
            topics.retry,
            [
                "t1.medflow.search-indexer.retry.1m",
                "t1.medflow.search-indexer.retry.5m",
                "t1.medflow.search-indexer.retry.15m",
                "t1.medflow.search-indexer.retry.1h",
            ]
        );
        assert_eq!(topics.dlq, "t1.medflow.search-indexer.dlq");
    }
}
