//! `ConsumerActor`: one consumer group's loop, run by an actor so a supervisor restarts it.
//!
//! The loop is a task the actor owns: killing or stopping the actor ends it (uncommitted
//! work is then re-delivered to the next incarnation), and a loop that fails makes the actor
//! fail, which its supervisor sees.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    ConsumerSpec, ConsumerStats, GroupTopics, H_ATTEMPT, H_ERROR, H_NOT_BEFORE, H_ORIGINAL_TOPIC,
    Handler, HandlerError, Inbound,
};
use crate::bus::KafkaSettings;
use crate::bus::topics::ensure_topics;
use crate::internal_events::{BatchHandled, MessageFailed, emit};
use crate::trace;

/// How much of an error text travels in `x-error`.
const MAX_ERROR_HEADER: usize = 1000;
/// Payload bytes a batch holds at most (documents carry up to 1 MiB of text), besides its
/// message count.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct ConsumerActor {
    pub spec: ConsumerSpec,
    pub kafka: KafkaSettings,
    pub handler: Arc<dyn Handler>,
    pub stats: Arc<ConsumerStats>,
}

#[derive(Debug)]
pub enum ConsumerMessage {
    /// The loop ended with this error: the actor fails and its supervisor restarts it.
    LoopFailed(String),
}

pub struct ConsumerState {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// Ends the loop when the state is dropped without `post_stop` (the actor was killed).
    _abort: AbortOnDrop,
    /// Ends the count of waiting dead letters with the actor.
    _dead_letters: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for ConsumerActor {
    type Msg = ConsumerMessage;
    type State = ConsumerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMessage>,
        _: (),
    ) -> Result<ConsumerState, ActorProcessingErr> {
        let topics = GroupTopics::new(&self.kafka, &self.spec.name, &self.spec.retry);
        // The group's series exist from its start (at zero), not from its first event.
        let group = topics.group_id.clone();
        for name in [
            "medflow_consumer_consumed_total",
            "medflow_consumer_succeeded_total",
            "medflow_consumer_dead_lettered_total",
            "medflow_consumer_restarts_total",
        ] {
            metrics::counter!(name, "group" => group.clone()).increment(0);
        }
        for name in [
            "medflow_consumer_lag",
            "medflow_consumer_partial",
            "medflow_consumer_dead_letters_waiting",
        ] {
            metrics::gauge!(name, "group" => group.clone()).increment(0.0);
        }
        for stage in 1..=self.spec.retry.0.len() {
            metrics::counter!("medflow_consumer_retried_total", "group" => group.clone(), "stage" => stage.to_string())
                .increment(0);
        }
        let mut subscribed = self.spec.topics.clone();
        for topic in &topics.retry {
            // A schedule may repeat a delay: its stages share one topic.
            if !subscribed.contains(topic) {
                subscribed.push(topic.clone());
            }
        }
        let mut all = subscribed.clone();
        all.push(topics.dlq.clone());
        ensure_topics(&self.kafka, &all).await?;
        let dead_letters = tokio::spawn(count_dead_letters(
            self.kafka.clone(),
            topics.clone(),
            self.spec.dead_letter_poll,
        ));

        let context = GroupContext {
            stats: self.stats.clone(),
            needs_every_partition: self.spec.needs_every_partition,
            retry_topics: topics.retry.clone(),
            revoked: Mutex::new(Vec::new()),
        };
        let consumer: StreamConsumer<GroupContext> = self
            .kafka
            .client_config()
            .set("group.id", &topics.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A member that vanished (killed, partitioned away) holds its partitions this
            // long before the group hands them to the others.
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "300000")
            .set("queued.max.messages.kbytes", "16384")
            .set("statistics.interval.ms", "2000")
            .create_with_context(context)?;
        let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let producer = self.kafka.reliable_producer()?;

        let (stop, stopped) = watch::channel(false);
        let run = Loop {
            consumer,
            producer,
            handler: self.handler.clone(),
            stats: self.stats.clone(),
            spec: self.spec.clone(),
            topics,
            message_timeout: self.kafka.message_timeout,
            held: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_deadline: None,
        };
        let task = tokio::spawn(async move {
            if let Err(error) = run.run(stopped).await {
                let _ = myself.cast(ConsumerMessage::LoopFailed(format!("{error:#}")));
            }
        });
        self.stats.running.store(true, Ordering::Relaxed);
        tracing::info!(group = %self.stats.topics.group_id, "consumer started");
        Ok(ConsumerState {
            stop,
            _abort: AbortOnDrop(task.abort_handle()),
            _dead_letters: AbortOnDrop(dead_letters.abort_handle()),
            task: Some(task),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMessage>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.stop.send(true);
        if let Some(task) = state.task.take()
            && tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
        {
            tracing::warn!(group = %self.stats.topics.group_id, "consumer did not stop in time");
        }
        self.stats.running.store(false, Ordering::Relaxed);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConsumerMessage>,
        message: ConsumerMessage,
        _state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMessage::LoopFailed(reason) => {
                self.stats.running.store(false, Ordering::Relaxed);
                self.stats.set_error(Some(reason.clone()));
                Err(reason.into())
            }
        }
    }
}

/// Keeps `medflow_consumer_dead_letters_waiting{group}` current: the group's dead letters not
/// yet replayed. The figure is the cluster's (every instance reports the same), so alerts
/// take the max over instances.
async fn count_dead_letters(kafka: KafkaSettings, topics: GroupTopics, every: Duration) {
    let gauge = metrics::gauge!(
        "medflow_consumer_dead_letters_waiting",
        "group" => topics.group_id.clone()
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match super::dlq::depth(&kafka, &topics).await {
            Ok(depth) => gauge.set(depth.waiting as f64),
            // The broker is down: the last figure stands; the consumer reports the outage.
            Err(error) => {
                tracing::debug!(group = %topics.group_id, error = %error, "cannot count dead letters")
            }
        }
    }
}

/// Commits before partitions are revoked, remembers which were, and turns librdkafka's
/// statistics into lag figures.
struct GroupContext {
    stats: Arc<ConsumerStats>,
    needs_every_partition: bool,
    retry_topics: Vec<String>,
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let (mut lag, mut retry_lag) = (0i64, 0i64);
        for (name, topic) in &statistics.topics {
            let sum: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
                .map(|p| p.consumer_lag_stored.max(0))
                .sum();
            if self.retry_topics.contains(name) {
                retry_lag += sum;
            } else {
                lag += sum;
            }
        }
        self.stats.lag.store(lag, Ordering::Relaxed);
        self.stats.retry_lag.store(retry_lag, Ordering::Relaxed);
        metrics::gauge!("medflow_consumer_lag", "group" => self.stats.topics.group_id.clone())
            .set(lag as f64);
        self.note_assignment(&statistics);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Offsets are stored only for handled messages: commit them while we still own
            // the partitions, so the next owner starts right after.
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
                && !no_offset(&error)
            {
                tracing::warn!(group = %self.stats.topics.group_id, error = %error, "commit before revoke failed");
            }
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.extend(
                partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // A partition paused for a retry and then revoked may come back to this consumer:
        // it starts unpaused, from the committed offset (the held message is re-read).
        if let Rebalance::Assign(partitions) = rebalance
            && let Err(error) = consumer.resume(partitions)
        {
            tracing::warn!(group = %self.stats.topics.group_id, error = %error, "cannot resume assigned partitions");
        }
    }
}

impl GroupContext {
    /// Records how many source partitions this process holds and how many its topics have
    /// (from the client's statistics: no request to the broker), and says so loudly when the
    /// handler needs all of them but holds fewer.
    fn note_assignment(&self, statistics: &Statistics) {
        let (mut assigned, mut total) = (0i64, 0i64);
        for (name, topic) in &statistics.topics {
            if !self.stats.sources.contains(name) {
                continue;
            }
            for partition in topic.partitions.values().filter(|p| p.partition >= 0) {
                total += 1;
                if partition.desired {
                    assigned += 1;
                }
            }
        }
        let before = (
            self.stats
                .assigned_partitions
                .swap(assigned, Ordering::Relaxed),
            self.stats.source_partitions.swap(total, Ordering::Relaxed),
        );
        if !self.needs_every_partition || total == 0 {
            return;
        }
        let partial = assigned < total;
        metrics::gauge!("medflow_consumer_partial", "group" => self.stats.topics.group_id.clone())
            .set(if partial { 1.0 } else { 0.0 });
        if partial && before != (assigned, total) {
            tracing::error!(
                group = %self.stats.topics.group_id,
                assigned,
                total,
                "another instance shares this consumer group, so this instance's copy (the embedded search index) holds only part of the data and its searches miss the rest: run several instances with OpenSearch (search.opensearch_url)"
            );
        }
    }
}

/// Errors after which the client is unusable (librdkafka's fatal errors).
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
}

fn no_offset(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Loop {
    consumer: StreamConsumer<GroupContext>,
    producer: FutureProducer,
    handler: Arc<dyn Handler>,
    stats: Arc<ConsumerStats>,
    spec: ConsumerSpec,
    topics: GroupTopics,
    message_timeout: Duration,
    /// Partitions paused until their first message is due; later messages of a paused
    /// partition that were already fetched queue behind it.
    held: HashMap<(String, i32), VecDeque<Inbound>>,
    batch: Vec<Inbound>,
    batch_bytes: usize,
    batch_deadline: Option<Instant>,
}

impl Loop {
    fn batch_full(&self) -> bool {
        self.batch.len() >= self.spec.max_batch || self.batch_bytes >= MAX_BATCH_BYTES
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut consecutive_errors = 0u32;
        loop {
            self.forget_revoked();
            let next_due = self
                .held
                .values()
                .filter_map(|queue| queue.front())
                .filter_map(|message| message.not_before_ms)
                .min()
                .map(|due| Instant::now() + Duration::from_millis((due - now_ms()).max(0) as u64));
            let room = !self.batch_full();
            tokio::select! {
                biased;
                _ = stopped.changed() => {
                    self.flush().await?;
                    if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync)
                        && !no_offset(&error)
                    {
                        tracing::warn!(group = %self.topics.group_id, error = %error, "final commit failed");
                    }
                    return Ok(());
                }
                () = sleep_until(self.batch_deadline), if self.batch_deadline.is_some() => {
                    self.flush().await?;
                }
                () = sleep_until(next_due), if next_due.is_some() => {
                    self.release_due()?;
                }
                received = self.consumer.recv(), if room => match received {
                    Ok(message) => {
                        consecutive_errors = 0;
                        let inbound = inbound(&message);
                        drop(message);
                        self.accept(inbound)?;
                    }
                    Err(error) => {
                        self.stats.set_error(Some(error.to_string()));
                        if is_fatal(&error) {
                            // The client cannot go on: a new one (the actor's restart) can.
                            anyhow::bail!("consumer failed: {error}");
                        }
                        // Broker connections come and go; librdkafka reconnects and the group
                        // resumes on its own. Restarting here would only leave a dead member
                        // behind that the group waits for.
                        consecutive_errors += 1;
                        if consecutive_errors == 1 || consecutive_errors.is_multiple_of(20) {
                            tracing::warn!(group = %self.topics.group_id, error = %error, errors = consecutive_errors, "consumer error; the client retries");
                        }
                    }
                },
            }
            if self.batch_full() {
                self.flush().await?;
            }
        }
    }

    /// Drops what was fetched from partitions a rebalance took away: their new owner reads
    /// them again from the committed offset.
    fn forget_revoked(&mut self) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if revoked.is_empty() {
            return;
        }
        for partition in &revoked {
            self.held.remove(partition);
        }
        self.batch.retain(|message| {
            !revoked
                .iter()
                .any(|(topic, p)| *topic == message.source_topic && *p == message.partition)
        });
        self.batch_bytes = self
            .batch
            .iter()
            .map(|m| m.payload.as_ref().map_or(0, Vec::len))
            .sum();
        self.stats
            .paused
            .store(self.held.len() as i64, Ordering::Relaxed);
    }

    fn accept(&mut self, message: Inbound) -> anyhow::Result<()> {
        let partition = (message.source_topic.clone(), message.partition);
        if let Some(queue) = self.held.get_mut(&partition) {
            queue.push_back(message);
            return Ok(());
        }
        if message.not_before_ms.is_some_and(|due| due > now_ms()) {
            let mut list = TopicPartitionList::new();
            list.add_partition(&partition.0, partition.1);
            self.consumer.pause(&list)?;
            tracing::debug!(group = %self.topics.group_id, topic = %partition.0, partition = partition.1, "retry not due; partition paused");
            self.held.insert(partition, VecDeque::from([message]));
            self.stats
                .paused
                .store(self.held.len() as i64, Ordering::Relaxed);
            return Ok(());
        }
        self.push(message);
        Ok(())
    }

    fn push(&mut self, message: Inbound) {
        if self.batch.is_empty() {
            self.batch_deadline = Some(Instant::now() + self.spec.batch_wait);
        }
        self.batch_bytes += message.payload.as_ref().map_or(0, Vec::len);
        self.batch.push(message);
    }

    /// Moves due messages of paused partitions into the batch, resuming partitions whose
    /// queue emptied.
    fn release_due(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let mut due = Vec::new();
        let mut resume = TopicPartitionList::new();
        self.held.retain(|(topic, partition), queue| {
            while queue
                .front()
                .is_some_and(|m| m.not_before_ms.is_none_or(|t| t <= now))
            {
                due.extend(queue.pop_front());
            }
            if queue.is_empty() {
                resume.add_partition(topic, *partition);
                false
            } else {
                true
            }
        });
        for message in due {
            self.push(message);
        }
        if resume.count() > 0 {
            self.consumer.resume(&resume)?;
        }
        self.stats
            .paused
            .store(self.held.len() as i64, Ordering::Relaxed);
        Ok(())
    }

    /// Handles the batch, routes failures, then stores and commits its offsets.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.batch_deadline = None;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let group = self.topics.group_id.clone();
        self.stats
            .consumed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // One span per batch, continuing the trace of a lone message, linked to each
        // message's trace otherwise (OpenTelemetry's convention for batch receivers).
        let span = tracing::info_span!(
            "consume",
            otel.name = %format_args!("process {group}"),
            otel.kind = "consumer",
            group = %group,
            messages = batch.len(),
        );
        if let [message] = batch.as_slice() {
            trace::continue_from(&span, message.header_text(trace::TRACEPARENT));
        } else {
            for message in &batch {
                trace::link_to(&span, message.header_text(trace::TRACEPARENT));
            }
        }
        let mut outcomes = self.handler.handle(&batch).instrument(span).await;
        outcomes.resize_with(batch.len(), || {
            Err(HandlerError::transient("the handler gave no outcome"))
        });

        let mut routed = Vec::new();
        let mut succeeded = 0u64;
        for (message, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok(()) => succeeded += 1,
                Err(error) => routed.push(self.route(message, &error)),
            }
        }
        let sends = routed.iter().map(|route| {
            let extra: Vec<(&str, &[u8])> = route
                .extra
                .iter()
                .map(|(key, value)| (*key, value.as_bytes()))
                .collect();
            self.producer.send(
                route.message.republish(&route.topic, &extra),
                self.message_timeout,
            )
        });
        for (result, route) in join_all(sends).await.into_iter().zip(&routed) {
            if let Err((error, _)) = result {
                // Nothing is stored: the batch is handled again after the restart.
                anyhow::bail!("cannot hand a failed message to {}: {error}", route.topic);
            }
        }
        for route in &routed {
            match route.stage {
                Some(stage) => self.stats.retried[stage].fetch_add(1, Ordering::Relaxed),
                None => self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed),
            };
            emit(MessageFailed {
                group: &group,
                topic: &route.message.topic,
                partition: route.message.partition,
                offset: route.message.offset,
                attempt: route.attempt,
                stage: route.stage.map(|stage| stage + 1),
                error: &route.error,
            });
        }
        self.stats.succeeded.fetch_add(succeeded, Ordering::Relaxed);
        emit(BatchHandled {
            group: &group,
            consumed: batch.len() as u64,
            succeeded,
        });

        let mut last: HashMap<(&str, i32), i64> = HashMap::new();
        for message in &batch {
            let entry = last
                .entry((message.source_topic.as_str(), message.partition))
                .or_insert(message.offset);
            *entry = (*entry).max(message.offset);
        }
        for ((topic, partition), offset) in last {
            if let Err(error) = self.consumer.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile: its next owner handles it again.
                tracing::debug!(group = %group, topic, partition, error = %error, "offset not stored");
            }
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async)
            && !no_offset(&error)
        {
            tracing::warn!(group = %group, error = %error, "commit failed; retried with the next batch");
        }
        Ok(())
    }

    /// Where a failed message goes next: the next retry stage, or the dead-letter topic.
    fn route<'a>(&self, message: &'a Inbound, error: &HandlerError) -> Route<'a> {
        let attempt = message.attempt + 1;
        let stage = match error {
            HandlerError::Transient(_) if (attempt as usize) <= self.spec.retry.0.len() => {
                Some(attempt as usize - 1)
            }
            _ => None,
        };
        let text: String = error.to_string().chars().take(MAX_ERROR_HEADER).collect();
        // `GET /admin/consumers` shows the newest handler failure while they go on.
        self.stats.set_error(Some(format!(
            "{} partition {} offset {} (attempt {attempt}): {text}",
            message.topic, message.partition, message.offset
        )));
        let mut extra = vec![
            (H_ORIGINAL_TOPIC, message.topic.clone()),
            (H_ATTEMPT, attempt.to_string()),
            (H_ERROR, text.clone()),
        ];
        let topic = match stage {
            Some(stage) => {
                let due = now_ms() + self.spec.retry.0[stage].as_millis() as i64;
                extra.push((H_NOT_BEFORE, due.to_string()));
                self.topics.retry[stage].clone()
            }
            None => self.topics.dlq.clone(),
        };
        Route {
            topic,
            stage,
            extra,
            message,
            attempt,
            error: text,
        }
    }
}

struct Route<'a> {
    topic: String,
    stage: Option<usize>,
    /// The retry bookkeeping headers added to the message's own.
    extra: Vec<(&'static str, String)>,
    message: &'a Inbound,
    attempt: u32,
    /// The handler's error, as the `x-error` header carries it.
    error: String,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Copies a message out of the client, splitting the retry bookkeeping from its headers.
pub(crate) fn inbound(message: &BorrowedMessage<'_>) -> Inbound {
    let mut headers = Vec::new();
    let mut original_topic = None;
    let mut attempt = 0;
    let mut not_before_ms = None;
    if let Some(all) = message.headers() {
        for header in all.iter() {
            let value = header.value.unwrap_or_default();
            let text = || std::str::from_utf8(value).ok().map(str::to_owned);
            match header.key {
                H_ORIGINAL_TOPIC => original_topic = text(),
                H_ATTEMPT => attempt = text().and_then(|t| t.parse().ok()).unwrap_or(0),
                H_NOT_BEFORE => not_before_ms = text().and_then(|t| t.parse().ok()),
                H_ERROR => {}
                key => headers.push((key.to_owned(), value.to_vec())),
            }
        }
    }
    let source_topic = message.topic().to_owned();
    Inbound {
        topic: original_topic.unwrap_or_else(|| source_topic.clone()),
        source_topic,
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        attempt,
        not_before_ms,
    }
}
