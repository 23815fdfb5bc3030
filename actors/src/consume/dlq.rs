//! Dead-letter topics: how many messages wait in one, and their replay to the topic they
//! first arrived on.
//!
//! Replay reads `<group>.dlq` as the consumer group `<group>.dlq-replay` (so each message is
//! replayed once), re-publishes each message to its `x-original-topic` with its own key,
//! payload and headers (the retry bookkeeping dropped, `x-replayed-from` added), waits for
//! every acknowledgement, and only then commits. A crash mid-replay replays again what was
//! not committed; consumers are idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::worker::inbound;
use super::{GroupTopics, H_REPLAYED_FROM};
use crate::bus::KafkaSettings;

/// How long the broker may take to answer one metadata or offsets request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqDepth {
    /// Messages ever dead-lettered (still retained by the broker).
    pub total: i64,
    /// Of those, not replayed yet.
    pub waiting: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub replayed: u64,
    /// Messages still waiting after this replay (more than `limit` were waiting).
    pub remaining: i64,
}

fn replay_consumer(
    kafka: &KafkaSettings,
    topics: &GroupTopics,
) -> anyhow::Result<Arc<StreamConsumer>> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", format!("{}.dlq-replay", topics.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    Ok(Arc::new(consumer))
}

/// Per partition of the dead-letter topic: (next offset to replay, end offset).
async fn positions(
    consumer: Arc<StreamConsumer>,
    dlq: String,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let metadata = consumer.fetch_metadata(Some(&dlq), REQUEST_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|topic| topic.name() == dlq)
            .flat_map(|topic| topic.partitions().iter().map(|p| p.id()))
            .collect();
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            list.add_partition(&dlq, *partition);
        }
        let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
        let mut result = HashMap::new();
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&dlq, partition, REQUEST_TIMEOUT)?;
            let next = committed
                .find_partition(&dlq, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
                .unwrap_or(low)
                .max(low);
            result.insert(partition, (next, high));
        }
        Ok(result)
    })
    .await?
}

/// How many messages the group's dead-letter topic holds, and how many wait for replay.
pub async fn depth(kafka: &KafkaSettings, topics: &GroupTopics) -> anyhow::Result<DlqDepth> {
    let consumer = replay_consumer(kafka, topics)?;
    let positions = positions(consumer, topics.dlq.clone()).await?;
    let mut depth = DlqDepth::default();
    for (next, high) in positions.values() {
        depth.waiting += (high - next).max(0);
        depth.total += *high;
    }
    Ok(depth)
}

/// Replays at most `limit` waiting dead letters to their original topics.
pub async fn replay(
    kafka: &KafkaSettings,
    topics: &GroupTopics,
    limit: u64,
) -> anyhow::Result<ReplayReport> {
    let consumer = replay_consumer(kafka, topics)?;
    let positions = positions(consumer.clone(), topics.dlq.clone()).await?;
    let waiting: HashMap<i32, (i64, i64)> = positions
        .into_iter()
        .filter(|(_, (next, high))| next < high)
        .collect();
    let total_waiting: i64 = waiting.values().map(|(next, high)| high - next).sum();
    if waiting.is_empty() || limit == 0 {
        return Ok(ReplayReport {
            replayed: 0,
            remaining: total_waiting,
        });
    }
    let mut assignment = TopicPartitionList::new();
    for (partition, (next, _)) in &waiting {
        assignment.add_partition_offset(&topics.dlq, *partition, Offset::Offset(*next))?;
    }
    consumer.assign(&assignment)?;
    let producer = kafka.reliable_producer()?;

    // Read up to each partition's end as it was when the replay began.
    let mut remaining: HashMap<i32, (i64, i64)> = waiting.clone();
    let mut records = Vec::new();
    let mut commit: HashMap<i32, i64> = HashMap::new();
    while !remaining.is_empty() && (records.len() as u64) < limit {
        let message = tokio::time::timeout(REQUEST_TIMEOUT, consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the dead-letter topic stopped answering"))??;
        let partition = message.partition();
        let Some((_, high)) = remaining.get(&partition).copied() else {
            continue;
        };
        if message.offset() >= high {
            remaining.remove(&partition);
            continue;
        }
        commit.insert(partition, message.offset() + 1);
        if message.offset() + 1 >= high {
            remaining.remove(&partition);
        }
        let mut message = inbound(&message);
        if message.topic == message.source_topic {
            tracing::warn!(dlq = %topics.dlq, partition, offset = message.offset, "dead letter without x-original-topic; skipped");
            continue;
        }
        // Replayed again after failing again: one `x-replayed-from`, the one added below.
        message.headers.retain(|(key, _)| key != H_REPLAYED_FROM);
        records.push(message);
    }
    let replayed_from = [(H_REPLAYED_FROM, topics.dlq.as_bytes())];
    let sends = records.iter().map(|message| {
        producer.send(
            message.republish(&message.topic, &replayed_from),
            kafka.message_timeout,
        )
    });
    for result in join_all(sends).await {
        if let Err((error, _)) = result {
            anyhow::bail!("replay not acknowledged (nothing committed; try again): {error}");
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in &commit {
        offsets.add_partition_offset(&topics.dlq, *partition, Offset::Offset(*offset))?;
    }
    let committed = offsets.clone();
    let consumer_for_commit = consumer.clone();
    tokio::task::spawn_blocking(move || consumer_for_commit.commit(&committed, CommitMode::Sync))
        .await??;
    let replayed = records.len() as u64;
    let consumed: i64 = commit
        .iter()
        .map(|(partition, offset)| offset - waiting[partition].0)
        .sum();
    tracing::info!(dlq = %topics.dlq, replayed, "dead letters replayed");
    Ok(ReplayReport {
        replayed,
        remaining: (total_waiting - consumed).max(0),
    })
}
