//! `KafkaProducer`: publishes batches of records and reports when all were acknowledged.
//!
//! Idempotent (`enable.idempotence`, `acks=all`, at most `max_in_flight` requests in flight),
//! so records with one key keep their order in their partition, and a retried send is never
//! duplicated by the broker. A batch is enqueued at once and its delivery futures are awaited
//! off the actor's mailbox, so batches pipeline; its reply says "all acknowledged" or names
//! the first failure, and the sender (the CDC reader) confirms its position only on success.

use std::time::Duration;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::KafkaSettings;
use crate::internal_events::{MessagesProduced, ProduceFailed, emit};

/// One message to publish; `payload: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a batch was not fully acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProduceError(pub String);

#[derive(Debug)]
pub enum ProducerMessage {
    /// Publishes `records` in order; answers once every one is acknowledged, or with the
    /// first failure.
    Publish {
        records: Vec<OutgoingRecord>,
        reply: RpcReplyPort<Result<usize, ProduceError>>,
    },
}

#[derive(Debug, Clone)]
pub struct KafkaProducer {
    pub settings: KafkaSettings,
}

pub struct KafkaProducerState {
    producer: FutureProducer,
}

impl Actor for KafkaProducer {
    type Msg = ProducerMessage;
    type State = KafkaProducerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<ProducerMessage>,
        _: (),
    ) -> Result<KafkaProducerState, ActorProcessingErr> {
        let producer = self.settings.reliable_producer()?;
        Ok(KafkaProducerState { producer })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ProducerMessage>,
        state: &mut KafkaProducerState,
    ) -> Result<(), ActorProcessingErr> {
        // Deliver what is queued before going away; what is not is re-sent from the WAL.
        let _ = state.producer.flush(Duration::from_secs(5));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ProducerMessage>,
        message: ProducerMessage,
        state: &mut KafkaProducerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProducerMessage::Publish { records, reply } => {
                let deliveries = enqueue(&state.producer, &records).await;
                tokio::spawn(async move {
                    let _ = reply.send(await_deliveries(deliveries, &records).await);
                });
            }
        }
        Ok(())
    }
}

type Enqueued = Result<rdkafka::producer::DeliveryFuture, ProduceError>;

/// Enqueues every record in order, waiting (not failing) while librdkafka's queue is full.
async fn enqueue(producer: &FutureProducer, records: &[OutgoingRecord]) -> Vec<Enqueued> {
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut future_record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&record.topic).headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            future_record = future_record.payload(payload.as_slice());
        }
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    deliveries.push(Ok(delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future_record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    deliveries.push(Err(ProduceError(format!(
                        "cannot enqueue to {}: {error}",
                        record.topic
                    ))));
                    break;
                }
            }
        }
    }
    deliveries
}

async fn await_deliveries(
    deliveries: Vec<Enqueued>,
    records: &[OutgoingRecord],
) -> Result<usize, ProduceError> {
    let count = deliveries.len();
    let outcomes = join_all(deliveries.into_iter().map(|delivery| async move {
        match delivery {
            Ok(future) => match future.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(_) => Err("the producer was dropped".to_owned()),
            },
            Err(error) => Err(error.0),
        }
    }))
    .await;
    let mut produced: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (outcome, record) in outcomes.iter().zip(records) {
        if outcome.is_ok() {
            *produced.entry(record.topic.as_str()).or_default() += 1;
        }
    }
    for (topic, count) in produced {
        emit(MessagesProduced { topic, count });
    }
    let failures = outcomes.iter().filter(|o| o.is_err()).count();
    if let Some(Err(first)) = outcomes.into_iter().find(Result::is_err) {
        emit(ProduceFailed {
            failures: failures as u64,
            first: &first.to_string(),
        });
        return Err(ProduceError(format!(
            "{failures} of {count} messages were not acknowledged; first: {first}"
        )));
    }
    Ok(count)
}
