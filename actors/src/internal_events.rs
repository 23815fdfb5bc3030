//! medflow's internal events, in the style of Vector's `internal_events`: each thing worth
//! counting that happens inside medflow is a type here whose `emit` writes its log line and
//! updates its metric together — the two cannot drift apart, and this file lists them all.
//! [`METRICS`] describes every metric (kind and HELP text); the binary registers the
//! descriptions at start (`src/telemetry.rs`). Gauges that mirror a state (lag, live actors,
//! subscriptions) are set where that state lives, and are described here too.

use std::time::Duration;

use uuid::Uuid;

/// Something that happened inside medflow: [`InternalEvent::emit`] logs it and counts it.
pub trait InternalEvent {
    fn emit(self);
}

/// Emits `event`: `emit(EntityActorCrashed { … })`.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric medflow exports, with its HELP text. Consumer-group series are registered
/// by each group at its start (`consume/worker.rs`).
pub const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        "medflow_http_requests_total",
        MetricKind::Counter,
        "HTTP requests answered, by method, route and status",
    ),
    (
        "medflow_http_request_duration_seconds",
        MetricKind::Histogram,
        "HTTP request duration in seconds, by method and route",
    ),
    (
        "medflow_http_unauthenticated_total",
        MetricKind::Counter,
        "Requests refused 401 for a missing or invalid token",
    ),
    (
        "medflow_http_rate_limited_total",
        MetricKind::Counter,
        "Requests refused 429 by the per-client token bucket",
    ),
    (
        "medflow_http_rate_limit_sync_failures_total",
        MetricKind::Counter,
        "Rounds in which an instance could not share its rate-limit counts through PostgreSQL",
    ),
    (
        "medflow_entity_actors_live",
        MetricKind::Gauge,
        "Entity actors alive now, by kind",
    ),
    (
        "medflow_entity_states_idle",
        MetricKind::Gauge,
        "Passivated entities whose last state is kept for their next actor, by kind",
    ),
    (
        "medflow_entity_actor_passivations_total",
        MetricKind::Counter,
        "Idle entity actors stopped, by kind",
    ),
    (
        "medflow_entity_actor_crashes_total",
        MetricKind::Counter,
        "Entity actors that failed, by kind",
    ),
    (
        "medflow_entity_stale_refreshes_total",
        MetricKind::Counter,
        "Reads whose cached entity was older than the committed row and was reloaded",
    ),
    (
        "medflow_entity_stale_redos_total",
        MetricKind::Counter,
        "Writes redone on the current row after another instance wrote",
    ),
    (
        "medflow_supervisor_restarts_total",
        MetricKind::Counter,
        "Restarts of supervised children, by child",
    ),
    (
        "medflow_audit_batch_rows",
        MetricKind::Histogram,
        "Audit rows written per read-audit batch",
    ),
    (
        "medflow_audit_sealing_lag_seconds",
        MetricKind::Gauge,
        "Seconds since the oldest unsealed audit row was written (0 when none waits)",
    ),
    (
        "medflow_audit_sealed_entries_total",
        MetricKind::Counter,
        "Audit rows sealed into the Merkle tree by this instance",
    ),
    (
        "medflow_audit_seal_rounds_total",
        MetricKind::Counter,
        "Sealing rounds, by outcome (sealed, idle, busy, failed)",
    ),
    (
        "medflow_audit_tampering_seen_total",
        MetricKind::Counter,
        "Changes to audit rows bypassing the append-only triggers seen in the WAL, by operation",
    ),
    (
        "medflow_audit_slot_created_total",
        MetricKind::Counter,
        "Audit sealing slots (re)created",
    ),
    (
        "medflow_cdc_lag_bytes",
        MetricKind::Gauge,
        "WAL bytes written since the CDC slot's confirmed position",
    ),
    (
        "medflow_cdc_lag_ms",
        MetricKind::Gauge,
        "Commit-to-acknowledgement delay of the last published transaction, in ms",
    ),
    (
        "medflow_cdc_outbox_rows",
        MetricKind::Gauge,
        "Outbox rows not yet pruned",
    ),
    (
        "medflow_cdc_outbox_pruned_total",
        MetricKind::Counter,
        "Outbox rows pruned after their events were acknowledged",
    ),
    (
        "medflow_cdc_restarts_total",
        MetricKind::Counter,
        "CDC pipeline restarts",
    ),
    (
        "medflow_cdc_decode_errors_total",
        MetricKind::Counter,
        "WAL messages that could not be decoded",
    ),
    (
        "medflow_cdc_snapshot_rows_total",
        MetricKind::Counter,
        "Rows published by initial snapshots",
    ),
    (
        "medflow_cdc_slot_recreated_total",
        MetricKind::Counter,
        "CDC slots recreated after a switchover or a dropped slot",
    ),
    (
        "medflow_degraded",
        MetricKind::Gauge,
        "1 while a component (cdc) is degraded",
    ),
    (
        "medflow_kafka_messages_produced_total",
        MetricKind::Counter,
        "Kafka records acknowledged by the broker",
    ),
    (
        "medflow_kafka_produce_errors_total",
        MetricKind::Counter,
        "Kafka records the broker refused or that timed out",
    ),
    (
        "medflow_consumer_consumed_total",
        MetricKind::Counter,
        "Messages consumed, by group",
    ),
    (
        "medflow_consumer_succeeded_total",
        MetricKind::Counter,
        "Messages handled, by group",
    ),
    (
        "medflow_consumer_retried_total",
        MetricKind::Counter,
        "Messages sent to a retry stage, by group and stage",
    ),
    (
        "medflow_consumer_dead_lettered_total",
        MetricKind::Counter,
        "Messages sent to the dead-letter topic, by group",
    ),
    (
        "medflow_consumer_restarts_total",
        MetricKind::Counter,
        "Consumer restarts, by group",
    ),
    (
        "medflow_consumer_lag",
        MetricKind::Gauge,
        "Messages not yet consumed, by group",
    ),
    (
        "medflow_consumer_dead_letters_waiting",
        MetricKind::Gauge,
        "Dead letters not yet replayed, by group (the cluster's figure: take the max over instances)",
    ),
    (
        "medflow_consumer_partial",
        MetricKind::Gauge,
        "1 while a group needing every partition holds only some",
    ),
    (
        "medflow_subscriptions",
        MetricKind::Gauge,
        "GraphQL subscriptions open",
    ),
    (
        "medflow_subscriptions_dropped_slow_total",
        MetricKind::Counter,
        "Subscriptions dropped for not reading",
    ),
    (
        "medflow_graphql_ws_connections",
        MetricKind::Gauge,
        "GraphQL WebSocket connections open",
    ),
    (
        "medflow_graphql_ws_closed_slow_total",
        MetricKind::Counter,
        "GraphQL WebSocket connections closed for not reading",
    ),
    (
        "medflow_search_seconds",
        MetricKind::Histogram,
        "Search request duration in seconds",
    ),
];

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

// ───────────────────────────── HTTP ─────────────────────────────

/// A request was answered.
pub struct RequestServed<'a> {
    pub method: &'a str,
    pub route: String,
    pub status: u16,
    pub elapsed: Duration,
}

impl InternalEvent for RequestServed<'_> {
    fn emit(self) {
        let latency_ms = self.elapsed.as_secs_f64() * 1000.0;
        if self.status >= 500 {
            tracing::warn!(status = self.status, latency_ms, "request served");
        } else {
            tracing::info!(status = self.status, latency_ms, "request served");
        }
        metrics::counter!("medflow_http_requests_total", "method" => self.method.to_owned(), "route" => self.route.clone(), "status" => self.status.to_string())
            .increment(1);
        metrics::histogram!("medflow_http_request_duration_seconds", "method" => self.method.to_owned(), "route" => self.route)
            .record(self.elapsed.as_secs_f64());
    }
}

/// A request without a valid token was refused (401).
pub struct RequestUnauthenticated {
    /// A token was sent but is invalid (expired, forged, wrong audience).
    pub invalid_token: bool,
}

impl InternalEvent for RequestUnauthenticated {
    fn emit(self) {
        tracing::debug!(
            invalid_token = self.invalid_token,
            "request refused: not authenticated"
        );
        metrics::counter!("medflow_http_unauthenticated_total").increment(1);
    }
}

/// A client went over its rate limit (429).
pub struct RequestRateLimited {
    pub retry_after: Duration,
}

impl InternalEvent for RequestRateLimited {
    fn emit(self) {
        tracing::debug!(
            retry_after_ms = millis(self.retry_after),
            "request refused: rate limited"
        );
        metrics::counter!("medflow_http_rate_limited_total").increment(1);
    }
}

/// An instance could not add up its rate-limit counts in PostgreSQL (they are kept for the
/// next round); `first` of a streak is a warning, the rest are debug lines.
pub struct RateLimitSyncFailed<'a> {
    pub error: &'a str,
    pub first: bool,
}

impl InternalEvent for RateLimitSyncFailed<'_> {
    fn emit(self) {
        if self.first {
            tracing::warn!(
                error = self.error,
                "rate-limit counts are not shared: each instance enforces its own buckets until PostgreSQL answers"
            );
        } else {
            tracing::debug!(error = self.error, "rate-limit counts are still not shared");
        }
        metrics::counter!("medflow_http_rate_limit_sync_failures_total").increment(1);
    }
}

/// Rate-limit counts are shared again after failures.
pub struct RateLimitSyncRestored;

impl InternalEvent for RateLimitSyncRestored {
    fn emit(self) {
        tracing::info!("rate-limit counts are shared again");
    }
}

/// A GraphQL WebSocket was closed because its subscriber could not keep up.
pub struct WebSocketClosedSlow;

impl InternalEvent for WebSocketClosedSlow {
    fn emit(self) {
        tracing::info!("closing a websocket whose subscriber cannot keep up");
        metrics::counter!("medflow_graphql_ws_closed_slow_total").increment(1);
    }
}

// ───────────────────────────── Entity actors ─────────────────────────────

/// An entity actor crashed; its entity reloads from PostgreSQL on next use.
pub struct EntityActorCrashed<'a> {
    pub kind: &'static str,
    pub entity_id: Uuid,
    /// Crashes within the restart window so far.
    pub crashes: u32,
    pub error: &'a str,
}

impl InternalEvent for EntityActorCrashed<'_> {
    fn emit(self) {
        tracing::warn!(kind = self.kind, entity_id = %self.entity_id, crashes = self.crashes, error = %self.error, "entity actor crashed; it reloads from PostgreSQL on next use");
        metrics::counter!("medflow_entity_actor_crashes_total", "kind" => self.kind).increment(1);
    }
}

/// Idle entity actors were stopped.
pub struct EntityActorsPassivated {
    pub kind: &'static str,
    pub count: u64,
    pub live: usize,
}

impl InternalEvent for EntityActorsPassivated {
    fn emit(self) {
        tracing::debug!(
            kind = self.kind,
            passivated = self.count,
            live = self.live,
            "idle entity actors passivated"
        );
        metrics::counter!("medflow_entity_actor_passivations_total", "kind" => self.kind)
            .increment(self.count);
    }
}

/// A read found the cached state older than the committed row (another instance wrote).
pub struct EntityStateStale;

impl InternalEvent for EntityStateStale {
    fn emit(self) {
        tracing::debug!("cached entity state older than the committed row; reloading");
        metrics::counter!("medflow_entity_stale_refreshes_total").increment(1);
    }
}

/// A write command is decided again on the committed row.
pub struct WriteDecidedAgain {
    /// The row moved between the read and the write (not merely a stale cache).
    pub moved: bool,
}

impl InternalEvent for WriteDecidedAgain {
    fn emit(self) {
        tracing::debug!(
            moved = self.moved,
            "write command decided again on the committed row"
        );
        metrics::counter!("medflow_entity_stale_redos_total").increment(1);
    }
}

// ───────────────────────────── Supervision ─────────────────────────────

/// A supervised child stopped and is restarted after `delay`.
pub struct ChildRestarting<'a> {
    pub child: &'a str,
    pub reason: &'a str,
    pub delay: Duration,
}

impl InternalEvent for ChildRestarting<'_> {
    fn emit(self) {
        tracing::warn!(child = self.child, reason = %self.reason, delay_ms = millis(self.delay), "child stopped; restarting");
        metrics::counter!("medflow_supervisor_restarts_total", "child" => self.child.to_owned())
            .increment(1);
    }
}

/// A supervised child spent its restart budget: its supervisor escalates.
pub struct ChildEscalated<'a> {
    pub child: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for ChildEscalated<'_> {
    fn emit(self) {
        tracing::error!(child = self.child, reason = %self.reason, "restart budget spent; escalating");
        metrics::counter!("medflow_supervisor_restarts_total", "child" => self.child.to_owned())
            .increment(1);
    }
}

/// A consumer group's consumer failed and is restarted after `delay`.
pub struct ConsumerRestarting<'a> {
    pub group: &'a str,
    /// The supervised child's name (the group without the topic prefix).
    pub child: &'a str,
    pub reason: &'a str,
    pub delay: Duration,
}

impl InternalEvent for ConsumerRestarting<'_> {
    fn emit(self) {
        tracing::warn!(group = %self.group, reason = %self.reason, delay_ms = millis(self.delay), "consumer failed; restarting");
        metrics::counter!("medflow_consumer_restarts_total", "group" => self.group.to_owned())
            .increment(1);
        metrics::counter!("medflow_supervisor_restarts_total", "child" => self.child.to_owned())
            .increment(1);
    }
}

/// The CDC pipeline stopped: another instance streams from the slot (`standby`), or it
/// failed and restarts after `delay`.
pub struct CdcPipelineRestarting<'a> {
    pub child: &'a str,
    pub slot: &'a str,
    pub standby: bool,
    pub reason: &'a str,
    pub delay: Duration,
}

impl InternalEvent for CdcPipelineRestarting<'_> {
    fn emit(self) {
        if self.standby {
            tracing::info!(slot = %self.slot, "another process streams from the slot; standing by");
        } else {
            tracing::warn!(reason = %self.reason, delay_ms = millis(self.delay), "cdc pipeline failed; restarting");
        }
        metrics::counter!("medflow_cdc_restarts_total").increment(1);
        metrics::counter!("medflow_supervisor_restarts_total", "child" => self.child.to_owned())
            .increment(1);
    }
}

// ───────────────────────────── CDC and Kafka ─────────────────────────────

/// The replication slot was gone and is recreated (a switchover, or a dropped slot).
pub struct CdcSlotRecreated<'a> {
    pub slot: &'a str,
}

impl InternalEvent for CdcSlotRecreated<'_> {
    fn emit(self) {
        tracing::warn!(
            slot = %self.slot,
            "the replication slot is gone (a switchover or failover to a standby, or a dropped slot): recreating it, re-publishing undelivered outbox events and re-snapshotting the change topics"
        );
        metrics::counter!("medflow_cdc_slot_recreated_total").increment(1);
    }
}

/// A table's snapshot was published.
pub struct CdcTableSnapshotted<'a> {
    pub table: &'a str,
    pub rows: usize,
}

impl InternalEvent for CdcTableSnapshotted<'_> {
    fn emit(self) {
        tracing::info!(
            table = self.table,
            rows = self.rows,
            "snapshot of table published"
        );
        metrics::counter!("medflow_cdc_snapshot_rows_total").increment(self.rows as u64);
    }
}

/// A WAL message could not be decoded (published as `ErrorOccurred`).
pub struct CdcDecodeFailed<'a> {
    pub lsn: &'a str,
    pub error: &'a str,
}

impl InternalEvent for CdcDecodeFailed<'_> {
    fn emit(self) {
        tracing::error!(lsn = %self.lsn, error = %self.error, "cannot decode a WAL message; skipped");
        metrics::counter!("medflow_cdc_decode_errors_total").increment(1);
    }
}

/// Published outbox rows were deleted.
pub struct OutboxPruned {
    pub rows: u64,
}

impl InternalEvent for OutboxPruned {
    fn emit(self) {
        tracing::debug!(rows = self.rows, "published outbox rows pruned");
        metrics::counter!("medflow_cdc_outbox_pruned_total").increment(self.rows);
    }
}

/// Messages were acknowledged by Kafka.
pub struct MessagesProduced<'a> {
    pub topic: &'a str,
    pub count: u64,
}

impl InternalEvent for MessagesProduced<'_> {
    fn emit(self) {
        tracing::trace!(topic = %self.topic, count = self.count, "messages acknowledged");
        metrics::counter!("medflow_kafka_messages_produced_total", "topic" => self.topic.to_owned())
            .increment(self.count);
    }
}

/// Messages of a batch were not acknowledged (the batch is re-read from the WAL).
pub struct ProduceFailed<'a> {
    pub failures: u64,
    pub first: &'a str,
}

impl InternalEvent for ProduceFailed<'_> {
    fn emit(self) {
        tracing::warn!(failures = self.failures, first = %self.first, "messages were not acknowledged by Kafka");
        metrics::counter!("medflow_kafka_produce_errors_total").increment(self.failures);
    }
}

// ───────────────────────────── Consumers ─────────────────────────────

/// A consumer group handled a batch.
pub struct BatchHandled<'a> {
    pub group: &'a str,
    pub consumed: u64,
    pub succeeded: u64,
}

impl InternalEvent for BatchHandled<'_> {
    fn emit(self) {
        tracing::debug!(group = %self.group, consumed = self.consumed, succeeded = self.succeeded, "batch handled");
        metrics::counter!("medflow_consumer_consumed_total", "group" => self.group.to_owned())
            .increment(self.consumed);
        metrics::counter!("medflow_consumer_succeeded_total", "group" => self.group.to_owned())
            .increment(self.succeeded);
    }
}

/// A failed message was handed to a retry stage (`stage` 1-based) or, without one, to the
/// dead-letter topic.
pub struct MessageFailed<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub stage: Option<usize>,
    pub error: &'a str,
}

impl InternalEvent for MessageFailed<'_> {
    fn emit(self) {
        match self.stage {
            Some(stage) => {
                tracing::info!(group = %self.group, topic = %self.topic, partition = self.partition, offset = self.offset, attempt = self.attempt, stage, error = %self.error, "message failed; retried later");
                metrics::counter!("medflow_consumer_retried_total", "group" => self.group.to_owned(), "stage" => stage.to_string())
                    .increment(1);
            }
            None => {
                tracing::warn!(group = %self.group, topic = %self.topic, partition = self.partition, offset = self.offset, attempt = self.attempt, error = %self.error, "message failed for good; dead-lettered");
                metrics::counter!("medflow_consumer_dead_lettered_total", "group" => self.group.to_owned())
                    .increment(1);
            }
        }
    }
}

/// A search was answered by the index.
pub struct SearchServed<'a> {
    pub kind: &'a str,
    pub hits: usize,
    pub elapsed: Duration,
}

impl InternalEvent for SearchServed<'_> {
    fn emit(self) {
        tracing::debug!(
            kind = self.kind,
            hits = self.hits,
            elapsed_ms = self.elapsed.as_secs_f64() * 1000.0,
            "search served"
        );
        metrics::histogram!("medflow_search_seconds", "type" => self.kind.to_owned())
            .record(self.elapsed.as_secs_f64());
    }
}

/// A GraphQL subscriber could not keep up and was dropped.
pub struct SubscriberDroppedSlow;

impl InternalEvent for SubscriberDroppedSlow {
    fn emit(self) {
        tracing::info!("a subscriber's buffer is full: dropping it");
        metrics::counter!("medflow_subscriptions_dropped_slow_total").increment(1);
    }
}

// ───────────────────────────── Audit ─────────────────────────────

/// A batch of audit rows (reads batched by the audit writer) was appended, or failed.
pub struct AuditBatchWritten<'a> {
    pub rows: usize,
    pub error: Option<&'a str>,
}

impl InternalEvent for AuditBatchWritten<'_> {
    fn emit(self) {
        if let Some(error) = self.error {
            tracing::warn!(rows = self.rows, error = %error, "cannot append audit rows");
        }
        metrics::histogram!("medflow_audit_batch_rows").record(self.rows as f64);
    }
}

/// The WAL showed an audit row written or changed bypassing the audit triggers.
pub struct AuditTamperingSeen {
    pub operation: &'static str,
    pub entry: Option<i64>,
}

impl InternalEvent for AuditTamperingSeen {
    fn emit(self) {
        tracing::error!(
            operation = self.operation,
            entry = self.entry,
            "the WAL shows an audit row written or changed bypassing the audit triggers"
        );
        metrics::counter!("medflow_audit_tampering_seen_total", "operation" => self.operation)
            .increment(1);
    }
}

/// A sealing round ended: `sealed`, `idle`, `busy` (another instance sealed) or `failed`.
pub struct SealRoundEnded<'a> {
    pub outcome: &'static str,
    pub error: Option<&'a str>,
    pub failures: u32,
    pub retry: Duration,
}

impl InternalEvent for SealRoundEnded<'_> {
    fn emit(self) {
        if let Some(error) = self.error {
            tracing::warn!(error = %error, failures = self.failures, retry_ms = millis(self.retry), "audit sealing round failed");
        } else {
            tracing::trace!(outcome = self.outcome, "audit sealing round");
        }
        metrics::counter!("medflow_audit_seal_rounds_total", "outcome" => self.outcome)
            .increment(1);
    }
}

/// Audit entries were sealed into the tree.
pub struct AuditEntriesSealed {
    pub count: u64,
}

impl InternalEvent for AuditEntriesSealed {
    fn emit(self) {
        tracing::debug!(entries = self.count, "audit entries sealed");
        metrics::counter!("medflow_audit_sealed_entries_total").increment(self.count);
    }
}

/// The audit sealing slot was created (first start, or after a switchover).
pub struct AuditSlotCreated<'a> {
    pub slot: &'a str,
}

impl InternalEvent for AuditSlotCreated<'_> {
    fn emit(self) {
        tracing::info!(slot = %self.slot, "audit sealing slot created; sealing earlier rows from the table");
        metrics::counter!("medflow_audit_slot_created_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_metric_an_event_updates_is_described() {
        let source = include_str!("internal_events.rs");
        let (events, _) = source.split_once("#[cfg(test)]").unwrap();
        let names: Vec<&str> = events
            .split('"')
            .filter(|word| word.starts_with("medflow_") && !word.contains(' '))
            .collect();
        assert!(names.len() > 25, "{names:?}");
        for name in names {
            assert!(
                METRICS.iter().any(|(described, ..)| *described == name),
                "{name} is emitted but not in METRICS"
            );
        }
    }

    /// Counters and histograms move only through these events (a counter incremented by
    /// zero or a histogram handle taken, to make a series exist from the start, is a
    /// registration, not an event).
    #[test]
    fn counters_and_histograms_are_updated_only_by_internal_events() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut offenders = Vec::new();
        for dir in ["actors/src", "supervisors/src", "http/src", "src"] {
            let mut pending = vec![workspace.join(dir)];
            while let Some(path) = pending.pop() {
                if path.is_dir() {
                    pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                    continue;
                }
                if path.extension().is_none_or(|ext| ext != "rs")
                    || path.ends_with("internal_events.rs")
                {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text
                    .match_indices("metrics::counter!(")
                    .chain(text.match_indices("metrics::histogram!("))
                {
                    let statement =
                        &text[at..text[at..].find(';').map_or(text.len(), |end| at + end)];
                    let moves = statement.contains(".record(")
                        || (statement.contains(".increment(")
                            && !statement.contains(".increment(0)"));
                    if moves {
                        offenders.push(format!("{}: {statement}", path.display()));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
