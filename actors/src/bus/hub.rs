//! `SubscriptionHub`: consumes the business topics and fans each event out to the live
//! subscriptions of this process (GraphQL subscriptions), so a change made through any pod
//! reaches subscribers on every pod.
//!
//! - Every process reads every partition from the end (no consumer group is joined and
//!   nothing is committed: a subscription sees events from the moment it started).
//! - Fan-out never waits: each subscription has a bounded queue; one that is full is a
//!   subscriber too slow to keep up, and it is dropped (its connection is told through the
//!   `on_drop` it registered), so it neither slows the others nor grows memory.
//! - A broker outage is retried with a capped backoff inside the hub; subscriptions stay
//!   registered and receive again once it is back.
//! - The hub's own mailbox is bounded too: the topic reader takes one of [`HUB_QUEUE`]
//!   permits per event it hands over, and the hub returns it once the event is fanned out,
//!   so a hub that falls behind slows the reading of Kafka (which keeps the events) instead
//!   of growing its queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use super::KafkaSettings;
use super::topics::ensure_topics;

/// Events handed from the topic reader to the hub and not yet fanned out, at most.
pub const HUB_QUEUE: usize = 1024;

/// A business event as published by the CDC reader (DESIGN.md's value format).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BusEvent {
    pub event_id: String,
    pub event_type: String,
    pub event_timestamp: String,
    pub aggregate_type: String,
    pub aggregate_id: Value,
    pub patient_id: Option<Uuid>,
    pub version: Option<i64>,
    pub payload: Value,
    /// The message's `traceparent` header: the fan-out continues the writer's trace.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl BusEvent {
    fn aggregate_uuid(&self) -> Option<Uuid> {
        self.aggregate_id.as_str().and_then(|id| id.parse().ok())
    }
}

/// Which events a subscription receives; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Event types (`PatientUpdated`, …); `None`: all.
    pub types: Option<Vec<String>>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<Uuid>,
    pub patient_id: Option<Uuid>,
    /// Matches the payload's `doctorId` (appointments).
    pub doctor_id: Option<Uuid>,
}

impl EventFilter {
    pub fn matches(&self, event: &BusEvent) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&event.event_type))
            && self
                .aggregate_type
                .as_ref()
                .is_none_or(|kind| *kind == event.aggregate_type)
            && self
                .aggregate_id
                .is_none_or(|id| event.aggregate_uuid() == Some(id))
            && self
                .patient_id
                .is_none_or(|id| event.patient_id == Some(id))
            && self.doctor_id.is_none_or(|id| {
                event.payload["doctorId"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    == Some(id)
            })
    }
}

/// A live subscription: its events, until the hub drops it or it is dropped.
pub struct Subscription {
    id: u64,
    pub events: mpsc::Receiver<Arc<BusEvent>>,
    hub: ActorRef<HubMessage>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.hub.cast(HubMessage::Unsubscribe(self.id));
    }
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    pub subscriptions: usize,
    pub delivered: u64,
    pub dropped_slow: u64,
    /// Whether the hub reads the topics (false while the broker is unreachable).
    pub consuming: bool,
    /// Events read and waiting for the hub (at most [`HUB_QUEUE`]).
    pub queued: usize,
}

pub enum HubMessage {
    Subscribe {
        filter: EventFilter,
        /// Notified when this subscription is dropped for being too slow.
        on_drop: Arc<Notify>,
        reply: RpcReplyPort<Subscription>,
    },
    Unsubscribe(u64),
    /// An event read from the topics, with the queue permit it holds until fanned out.
    Event(Arc<BusEvent>, OwnedSemaphorePermit),
    Stats(RpcReplyPort<HubStats>),
}

impl std::fmt::Debug for HubMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Subscribe { filter, .. } => write!(f, "Subscribe({filter:?})"),
            Self::Unsubscribe(id) => write!(f, "Unsubscribe({id})"),
            Self::Event(event, _) => write!(f, "Event({})", event.event_id),
            Self::Stats(_) => f.write_str("Stats"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubscriptionHub {
    pub kafka: KafkaSettings,
    /// The business topics (already prefixed).
    pub topics: Vec<String>,
    /// Events queued per subscription at most before it counts as too slow.
    pub buffer: usize,
}

struct Subscriber {
    filter: EventFilter,
    sender: mpsc::Sender<Arc<BusEvent>>,
    on_drop: Arc<Notify>,
}

pub struct HubState {
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
    stats: HubStats,
    consuming: Arc<AtomicBool>,
    queue: Arc<Semaphore>,
    consumer: tokio::task::JoinHandle<()>,
}

impl Actor for SubscriptionHub {
    type Msg = HubMessage;
    type State = HubState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<HubMessage>,
        _: (),
    ) -> Result<HubState, ActorProcessingErr> {
        let consuming = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(Semaphore::new(HUB_QUEUE));
        let consumer = tokio::spawn(consume_forever(
            self.kafka.clone(),
            self.topics.clone(),
            Handover {
                hub: myself,
                queue: queue.clone(),
            },
            consuming.clone(),
        ));
        Ok(HubState {
            subscribers: HashMap::new(),
            next_id: 0,
            stats: HubStats::default(),
            consuming,
            queue,
            consumer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HubMessage>,
        state: &mut HubState,
    ) -> Result<(), ActorProcessingErr> {
        state.consumer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<HubMessage>,
        message: HubMessage,
        state: &mut HubState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HubMessage::Subscribe {
                filter,
                on_drop,
                reply,
            } => {
                state.next_id += 1;
                let id = state.next_id;
                let (sender, events) = mpsc::channel(self.buffer);
                state.subscribers.insert(
                    id,
                    Subscriber {
                        filter,
                        sender,
                        on_drop,
                    },
                );
                metrics::gauge!("medflow_subscriptions").set(state.subscribers.len() as f64);
                let _ = reply.send(Subscription {
                    id,
                    events,
                    hub: myself,
                });
            }
            HubMessage::Unsubscribe(id) => {
                state.subscribers.remove(&id);
                metrics::gauge!("medflow_subscriptions").set(state.subscribers.len() as f64);
            }
            // The permit is returned when this arm ends: the event is fanned out.
            HubMessage::Event(event, _permit) => {
                let span = tracing::info_span!(
                    "subscriptions",
                    otel.name = %format_args!("deliver {}", event.event_type),
                    otel.kind = "consumer",
                    event_type = %event.event_type,
                    delivered = tracing::field::Empty,
                );
                crate::trace::continue_from(&span, event.traceparent.as_deref());
                let _entered = span.enter();
                let delivered_before = state.stats.delivered;
                let mut gone = Vec::new();
                for (id, subscriber) in &state.subscribers {
                    if !subscriber.filter.matches(&event) {
                        continue;
                    }
                    match subscriber.sender.try_send(event.clone()) {
                        Ok(()) => state.stats.delivered += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            state.stats.dropped_slow += 1;
                            crate::internal_events::emit(
                                crate::internal_events::SubscriberDroppedSlow,
                            );
                            subscriber.on_drop.notify_one();
                            gone.push(*id);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
                    }
                }
                for id in gone {
                    state.subscribers.remove(&id);
                }
                span.record("delivered", state.stats.delivered - delivered_before);
            }
            HubMessage::Stats(reply) => {
                let mut stats = state.stats;
                stats.subscriptions = state.subscribers.len();
                stats.consuming = state.consuming.load(Ordering::Relaxed);
                stats.queued = HUB_QUEUE - state.queue.available_permits();
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

/// How the topic reader hands events to the hub: one queue permit per event.
struct Handover {
    hub: ActorRef<HubMessage>,
    queue: Arc<Semaphore>,
}

impl Handover {
    /// Waits for room in the hub's queue, then hands `event` over; `false` once the hub
    /// is gone.
    async fn hand(&self, event: BusEvent) -> bool {
        let Ok(permit) = self.queue.clone().acquire_owned().await else {
            return false;
        };
        self.hub
            .cast(HubMessage::Event(Arc::new(event), permit))
            .is_ok()
    }
}

/// Reads the topics for as long as the hub lives, reconnecting after failures.
async fn consume_forever(
    kafka: KafkaSettings,
    topics: Vec<String>,
    hub: Handover,
    consuming: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let error = consume(&kafka, &topics, &hub, &consuming).await;
        consuming.store(false, Ordering::Relaxed);
        tracing::warn!(error = %error, retry_ms = backoff.as_millis() as u64, "subscription hub cannot read the business topics");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn consume(
    kafka: &KafkaSettings,
    topics: &[String],
    hub: &Handover,
    consuming: &AtomicBool,
) -> anyhow::Error {
    match assign_at_end(kafka, topics).await {
        Err(error) => error,
        Ok(consumer) => {
            consuming.store(true, Ordering::Relaxed);
            tracing::info!(
                topics = topics.len(),
                "subscription hub reads the business topics"
            );
            loop {
                let message = match consumer.recv().await {
                    Ok(message) => message,
                    Err(error) => return anyhow::anyhow!("consumer error: {error}"),
                };
                let Some(payload) = message.payload() else {
                    continue;
                };
                match serde_json::from_slice::<BusEvent>(payload) {
                    Ok(mut event) => {
                        event.traceparent = message.headers().and_then(|headers| {
                            headers
                                .iter()
                                .find(|header| header.key == crate::trace::TRACEPARENT)
                                .and_then(|header| header.value)
                                .and_then(|value| std::str::from_utf8(value).ok())
                                .map(str::to_owned)
                        });
                        if !hub.hand(event).await {
                            return anyhow::anyhow!("the hub stopped");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = message.topic(), offset = message.offset(), error = %error, "not a business event; skipped");
                    }
                }
            }
        }
    }
}

/// A consumer assigned every partition of `topics` at its current end.
async fn assign_at_end(kafka: &KafkaSettings, topics: &[String]) -> anyhow::Result<StreamConsumer> {
    ensure_topics(kafka, topics).await?;
    let consumer: StreamConsumer = kafka
        .client_config()
        .set(
            "group.id",
            format!("medflow-hub-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let consumer = Arc::new(consumer);
    let topics = topics.to_vec();
    let timeout = kafka.message_timeout;
    let assignment = tokio::task::spawn_blocking({
        let consumer = consumer.clone();
        move || -> anyhow::Result<TopicPartitionList> {
            let mut list = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                    let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
                    list.add_partition_offset(topic, partition.id(), Offset::Offset(high))?;
                }
            }
            consumer.assign(&list)?;
            Ok(list)
        }
    })
    .await??;
    tracing::debug!(partitions = assignment.count(), "subscription hub assigned");
    Arc::try_unwrap(consumer).map_err(|_| anyhow::anyhow!("the consumer is still shared"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, patient: Uuid, doctor: Option<Uuid>) -> BusEvent {
        BusEvent {
            event_id: "e".into(),
            event_type: kind.into(),
            event_timestamp: "2026-01-01T00:00:00Z".into(),
            aggregate_type: "appointment".into(),
            aggregate_id: Value::from(Uuid::nil().to_string()),
            patient_id: Some(patient),
            version: Some(1),
            payload: serde_json::json!({"doctorId": doctor}),
            traceparent: None,
        }
    }

    #[test]
    fn a_filter_matches_only_when_every_condition_holds() {
        let patient = Uuid::new_v4();
        let doctor = Uuid::new_v4();
        let scheduled = event("AppointmentScheduled", patient, Some(doctor));
        assert!(EventFilter::default().matches(&scheduled));
        let by_doctor = EventFilter {
            doctor_id: Some(doctor),
            ..Default::default()
        };
        assert!(by_doctor.matches(&scheduled));
        assert!(!by_doctor.matches(&event("AppointmentScheduled", patient, None)));
        let by_type = EventFilter {
            types: Some(vec!["AppointmentStatusChanged".into()]),
            patient_id: Some(patient),
            ..Default::default()
        };
        assert!(!by_type.matches(&scheduled));
        assert!(by_type.matches(&event("AppointmentStatusChanged", patient, None)));
        let other_patient = EventFilter {
            patient_id: Some(Uuid::new_v4()),
            ..Default::default()
        };
        assert!(!other_patient.matches(&scheduled));
    }

    /// The reader waits for room in the hub's queue, and the hub makes room as it fans
    /// events out: ten events pass through a queue of two, each delivered, none lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_pass_through_a_bounded_queue_the_hub_empties_as_it_fans_out() {
        let kafka = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            topic_prefix: "t.".into(),
            partitions: 1,
            replication_factor: 1,
            linger: Duration::from_millis(5),
            message_timeout: Duration::from_millis(100),
            max_in_flight: 5,
        };
        let hub = SubscriptionHub {
            kafka,
            topics: Vec::new(),
            buffer: 16,
        };
        let (hub, handle) = Actor::spawn(None, hub, ()).await.unwrap();
        let mut subscription = hub
            .call(
                |reply| HubMessage::Subscribe {
                    filter: EventFilter::default(),
                    on_drop: Arc::new(Notify::new()),
                    reply,
                },
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap()
            .unwrap();
        let queue = Arc::new(Semaphore::new(2));
        let handover = Handover {
            hub: hub.clone(),
            queue: queue.clone(),
        };
        let patient = Uuid::new_v4();
        let handed = async {
            for _ in 0..10 {
                assert!(handover.hand(event("PatientUpdated", patient, None)).await);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), handed)
            .await
            .expect("the hub returns each permit once the event is fanned out");
        for _ in 0..10 {
            let received = tokio::time::timeout(Duration::from_secs(5), subscription.events.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(received.patient_id, Some(patient));
        }
        let stats = hub
            .call(HubMessage::Stats, Some(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.delivered, 10);
        assert_eq!(queue.available_permits(), 2);
        drop(subscription);
        hub.stop(None);
        handle.await.unwrap();
    }
}
