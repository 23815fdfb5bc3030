//! `CdcReader`: streams PostgreSQL's logical replication (`pgoutput`) from a slot and
//! publishes every change through the [`KafkaProducer`](crate::bus::producer::KafkaProducer).
//!
//! Invariants:
//! - an LSN is confirmed to PostgreSQL (`update_applied_lsn`, sent as standby status) only
//!   after every record of every transaction up to it was acknowledged by Kafka; the slot
//!   retains the WAL until then, so a crash or a broker outage loses nothing (duplicates
//!   after a restart are possible: delivery is at-least-once);
//! - records are published in commit order; up to [`MAX_IN_FLIGHT_BATCHES`] batches are
//!   in flight at once (the producer keeps their order per partition), acknowledgements are
//!   taken strictly in order, and a failed batch fails the actor (its supervisor restarts
//!   it, and streaming resumes at the confirmed LSN, re-publishing what followed it);
//! - on its first start with a new slot the reader publishes a consistent snapshot of the
//!   existing rows (`op: "r"`) taken at the slot's creation point, then streams from there;
//!   a crash mid-snapshot drops the slot and redoes it;
//! - a slot that is gone although its snapshot was done (a switchover or failover to a
//!   standby: PostgreSQL 15 does not carry logical slots over) is recreated the same way: a
//!   new snapshot, and the outbox's undelivered events published again. A standby still in
//!   recovery is refused (logical decoding needs the primary) and retried with backoff;
//! - commit positions are confirmed once their batches are acknowledged; so is a keepalive's
//!   position received between transactions once everything before it is (as pg_recvlogical
//!   and Debezium do). The server sends in WAL order, so a keepalive's position covers only
//!   what already reached the reader. Without it a fast shutdown of PostgreSQL can wait for
//!   ever: the walsender exits only when the client has confirmed everything it was sent, and
//!   WAL that is no commit (checkpoints, aborts, non-transactional messages) would never be
//!   confirmed. And when the server terminates the plain control connection (it does so
//!   first at a shutdown) the reader leaves the stream at once rather than wait for Kafka to
//!   acknowledge its backlog: under load that wait outlasts an operator's `pg_ctl -t`, and
//!   what was not confirmed is streamed again after the restart. On an idle database a heartbeat (a transactional logical message, as
//!   Debezium's heartbeat query) makes a commit too, so the slot keeps advancing and does not
//!   hold the WAL other databases write;
//! - published outbox rows are deleted once Kafka acknowledged their events; a failed delete
//!   keeps their ids for the next attempt, and a reader resuming a slot deletes the rows
//!   present at its start once it has confirmed past that point (each was delivered by then,
//!   before or after the restart), so the outbox stays bounded after outages and crashes.
//!
//! Each step is one `Poll` message the actor sends itself: collect events for up to
//! `batch_wait` or `batch_max` records while confirming batches as Kafka acknowledges them,
//! hand the complete transactions to the producer without waiting, repeat.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio_postgres::NoTls;

use super::envelope::{
    Op, SourceInfo, TransactionPosition, change_records, outbox_record, pg_time_to_unix_ms,
    row_json, transaction_record,
};
use super::pgoutput::{Column, Datum, PgOutput, Relation, decode};
use super::{CdcState, CdcStatusCell};
use crate::bus::KafkaSettings;
use crate::bus::producer::{OutgoingRecord, ProduceError, ProducerMessage};
use crate::bus::topics::{create_topics, missing_topics};
use crate::internal_events::{
    CdcDecodeFailed, CdcSlotRecreated, CdcTableSnapshotted, OutboxPruned, emit,
};

/// How often the slot's lag in bytes is measured for the `medflow_cdc_lag_bytes` gauge.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Batches handed to the producer and not yet acknowledged, at most; reading waits beyond.
pub const MAX_IN_FLIGHT_BATCHES: usize = 16;

type Ack = tokio::sync::oneshot::Receiver<Result<usize, ProduceError>>;

/// What the reader's wait ended with.
enum Step {
    Acknowledged(Result<Result<usize, ProduceError>, tokio::sync::oneshot::error::RecvError>),
    Event(Result<Option<ReplicationEvent>, pgwire_replication::PgWireError>),
    /// The plain connection ended: the server terminates it first when it shuts down.
    ControlClosed(String),
    Elapsed,
}

/// A position the reader may confirm once everything before it is acknowledged.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    lsn: Lsn,
    /// The commit's time (microseconds since 2000-01-01), for the lag; `None` for a
    /// keepalive's position between transactions.
    commit_time: Option<i64>,
}

/// A batch handed to the producer, waiting for Kafka's acknowledgement.
struct InFlight {
    ack: Ack,
    /// The position it ends at (`None`: part of a transaction larger than a batch).
    checkpoint: Option<Checkpoint>,
    /// Outbox rows whose events it carries, pruned once acknowledged.
    outbox_ids: Vec<uuid::Uuid>,
}

/// The tables whose changes are published (the outbox is routed to business topics).
pub const PUBLISHED_TABLES: [&str; 6] = [
    "patients",
    "doctors",
    "appointments",
    "documents",
    "document_versions",
    "outbox",
];

/// Every business event type, for topic creation.
pub const EVENT_TYPES: [&str; 11] = [
    "PatientCreated",
    "PatientUpdated",
    "PatientDeleted",
    "AppointmentScheduled",
    "AppointmentStatusChanged",
    "DocumentCreated",
    "DocumentUpdated",
    "DocumentSigned",
    "DocumentRegistryAccepted",
    "DocumentRegistryRejected",
    "ErrorOccurred",
];

/// How the reader connects and batches.
#[derive(Debug, Clone)]
pub struct CdcSettings {
    /// The application's database URL (the role needs the REPLICATION attribute).
    pub database_url: SecretString,
    pub slot: String,
    pub publication: String,
    /// Debezium's logical server name (`source.name`), also the CDC topic prefix's root.
    pub server_name: String,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub status_interval: Duration,
    /// On an idle database, a heartbeat commit after this long keeps the slot advancing.
    pub heartbeat: Duration,
    /// Debezium's `provide.transaction.metadata`: a `transaction` block in every change
    /// event, and `BEGIN`/`END` records on `<server_name>.transaction`.
    pub transaction_metadata: bool,
}

impl CdcSettings {
    /// The CDC topic of `table`: `<prefix>medflow.public.<table>`.
    pub fn change_topic(&self, kafka: &KafkaSettings, table: &str) -> String {
        change_topic(kafka, &self.server_name, table)
    }

    /// The transaction metadata topic: `<prefix><server_name>.transaction`.
    pub fn transaction_topic(&self, kafka: &KafkaSettings) -> String {
        kafka.topic(&format!("{}.transaction", self.server_name))
    }
}

/// The transaction being read, for its metadata: its id and its change events so far.
struct TransactionMeta {
    id: String,
    ts_ms: i64,
    /// Change events per table (`<schema>.<table>`); empty until the first one.
    counts: std::collections::BTreeMap<String, u64>,
}

/// The CDC topic of `table` for the logical server `server_name` (Debezium's naming):
/// `<prefix><server_name>.public.<table>`.
pub fn change_topic(kafka: &KafkaSettings, server_name: &str, table: &str) -> String {
    kafka.topic(&format!("{server_name}.public.{table}"))
}

#[derive(Debug)]
pub enum CdcMessage {
    /// Reads, publishes and confirms one batch, then sends itself the next `Poll`.
    Poll,
}

#[derive(Debug, Clone)]
pub struct CdcReader {
    pub settings: CdcSettings,
    pub kafka: KafkaSettings,
    pub producer: ActorRef<ProducerMessage>,
    pub status: CdcStatusCell,
}

pub struct CdcReaderState {
    client: ReplicationClient,
    /// A plain connection, for pruning published outbox rows (shared with pruning tasks).
    control: std::sync::Arc<tokio_postgres::Client>,
    control_connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    relations: HashMap<u32, Relation>,
    /// Primary-key columns by table: the record key. pgoutput marks replica-identity
    /// columns, which under `REPLICA IDENTITY FULL` are all of them.
    primary_keys: HashMap<String, Vec<String>>,
    db: String,
    /// Records of transactions being read; `committed` of them end at a commit.
    pending: Vec<OutgoingRecord>,
    committed: usize,
    /// The end of the last commit whose records are in `pending[..committed]`.
    commit: Option<Checkpoint>,
    tx: Option<(u32, i64)>,
    /// With transaction metadata enabled, the transaction being read.
    tx_meta: Option<TransactionMeta>,
    /// The end of the last transaction read (`source.sequence`'s first half).
    last_commit_lsn: Option<u64>,
    /// The newest keepalive position received between transactions, not yet queued.
    keepalive: Option<Lsn>,
    /// The newest position queued for confirmation (a commit or a keepalive).
    queued_through: Lsn,
    /// Batches handed to the producer, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Deletes published outbox rows, retrying what failed.
    pruner: OutboxPruner,
    confirmed: Lsn,
    last_confirm: Instant,
    last_lag_check: Instant,
}

struct ConnInfo {
    host: String,
    port: u16,
    user: String,
    password: String,
    dbname: String,
}

fn conn_info(url: &SecretString) -> anyhow::Result<ConnInfo> {
    let config: tokio_postgres::Config = url.expose_secret().parse()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => anyhow::bail!("the CDC reader needs a TCP host in database.url"),
    };
    Ok(ConnInfo {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        user: config.get_user().unwrap_or("postgres").to_owned(),
        password: config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
    })
}

impl Actor for CdcReader {
    type Msg = CdcMessage;
    type State = CdcReaderState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<CdcMessage>,
        _: (),
    ) -> Result<CdcReaderState, ActorProcessingErr> {
        self.status
            .update(|status| status.state = CdcState::Starting);
        let info = conn_info(&self.settings.database_url)?;
        let mut topics: Vec<String> = PUBLISHED_TABLES
            .iter()
            .map(|table| self.settings.change_topic(&self.kafka, table))
            .collect();
        topics.extend(EVENT_TYPES.iter().map(|name| self.kafka.topic(name)));
        if self.settings.transaction_metadata {
            topics.push(self.settings.transaction_topic(&self.kafka));
        }
        // Only missing topics are created, so a restart against a slow broker makes no admin
        // request; a broker that cannot even list its topics in time does not hold up the
        // start either (the producer reports a topic that is really missing).
        match missing_topics(&self.kafka, &topics).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(missing) => create_topics(&self.kafka, &missing).await?,
            Err(error) => {
                tracing::warn!(error = %error, "cannot list the kafka topics; streaming on");
            }
        }
        let (control, connection) =
            tokio_postgres::connect(self.settings.database_url.expose_secret(), NoTls).await?;
        let connection = tokio::spawn(connection);
        let in_recovery: bool = control
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if in_recovery {
            // The service still points at a standby (a switchover or failover under way):
            // logical decoding needs the primary; the supervisor retries with backoff.
            return Err("the database is a standby in recovery; waiting for a primary".into());
        }
        ensure_publication(&control, &self.settings.publication).await?;
        let slot_exists = control
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.settings.slot],
            )
            .await?
            .is_some();
        let mut snapshot_done = control
            .query_opt(
                "SELECT 1 FROM cdc_snapshots WHERE slot_name = $1",
                &[&self.settings.slot],
            )
            .await?
            .is_some();
        if !slot_exists && snapshot_done {
            // The slot was streamed from before and is gone: a switchover or failover to a
            // standby (PostgreSQL 15 does not carry logical slots over), or an operator
            // dropped it. Changes since the last confirmed position cannot be replayed, so the
            // reader starts over: a new slot, the undelivered outbox events and a snapshot.
            emit(CdcSlotRecreated {
                slot: &self.settings.slot,
            });
            // The record goes first, so a crash before the new snapshot completes redoes it.
            control
                .execute(
                    "DELETE FROM cdc_snapshots WHERE slot_name = $1",
                    &[&self.settings.slot],
                )
                .await?;
            snapshot_done = false;
        }
        if slot_exists && !snapshot_done {
            tracing::warn!(slot = %self.settings.slot, "the initial snapshot did not complete; redoing it");
            control
                .execute(
                    "SELECT pg_drop_replication_slot($1)",
                    &[&self.settings.slot],
                )
                .await?;
        }
        let config = ReplicationConfig::new(
            info.host,
            info.user,
            info.password,
            info.dbname.clone(),
            self.settings.slot.clone(),
            self.settings.publication.clone(),
        )
        .with_port(info.port)
        .with_tls(TlsConfig::disabled())
        .with_status_interval(self.settings.status_interval)
        .with_options("-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601")
        .with_application_name("medflow-cdc");
        let mut tables = Vec::with_capacity(PUBLISHED_TABLES.len());
        for table in PUBLISHED_TABLES {
            tables.push(describe(&control, table).await?);
        }
        let mut pruner = OutboxPruner::default();
        if slot_exists && snapshot_done {
            // Rows present now were committed before this point: once the reader confirms
            // past it, each has been delivered (before the restart or by the replay).
            let row = control
                .query_one(
                    "SELECT coalesce(array_agg(id), '{}'),
                            (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8
                       FROM outbox",
                    &[],
                )
                .await?;
            let ids: Vec<uuid::Uuid> = row.get(0);
            if !ids.is_empty() {
                let at = Lsn::from_u64(u64::try_from(row.get::<_, i64>(1)).unwrap_or_default());
                pruner.at_start = Some((at, ids));
            }
        }
        let mut client = ReplicationClient::connect_gated(config).await?;
        if !(slot_exists && snapshot_done) {
            let rows = client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput (SNAPSHOT 'export')",
                    self.settings.slot.replace('"', "")
                ))
                .await?;
            let column = |index: usize| {
                rows.first()
                    .and_then(|row| row.get(index).cloned().flatten())
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            };
            let snapshot_name = column(2).ok_or("CREATE_REPLICATION_SLOT returned no snapshot")?;
            // The slot's consistent point: the position every snapshot record carries.
            let consistent_point = column(1)
                .and_then(|text| Lsn::parse(&text).ok())
                .map_or(0, Lsn::as_u64);
            let delivered = self
                .snapshot(
                    &control,
                    &tables,
                    &info.dbname,
                    &snapshot_name,
                    consistent_point,
                )
                .await?;
            pruner.backlog.extend(delivered);
            control
                .execute(
                    "INSERT INTO cdc_snapshots (slot_name) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&self.settings.slot],
                )
                .await?;
        }
        let primary_keys = tables
            .into_iter()
            .map(|relation| {
                let key = relation
                    .columns
                    .into_iter()
                    .filter(|column| column.key)
                    .map(|column| column.name)
                    .collect();
                (relation.table, key)
            })
            .collect();
        client.start().await?;
        client.wait_started().await?;
        self.status.update(|status| {
            status.state = CdcState::Streaming;
            status.last_error = None;
        });
        myself.send_message(CdcMessage::Poll)?;
        Ok(CdcReaderState {
            client,
            control: std::sync::Arc::new(control),
            control_connection: connection,
            relations: HashMap::new(),
            primary_keys,
            db: info.dbname,
            pending: Vec::new(),
            committed: 0,
            commit: None,
            tx: None,
            tx_meta: None,
            last_commit_lsn: None,
            keepalive: None,
            queued_through: Lsn::from_u64(0),
            in_flight: std::collections::VecDeque::new(),
            pruner,
            confirmed: Lsn::from_u64(0),
            last_confirm: Instant::now(),
            last_lag_check: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CdcMessage>,
        state: &mut CdcReaderState,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(
            confirmed = %state.confirmed,
            pending = state.pending.len(),
            unacknowledged_batches = state.in_flight.len(),
            "cdc reader stopped"
        );
        state.client.stop();
        state.control_connection.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CdcMessage>,
        message: CdcMessage,
        state: &mut CdcReaderState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CdcMessage::Poll => {
                Box::pin(self.poll(state)).await?;
                myself.send_message(CdcMessage::Poll)?;
            }
        }
        Ok(())
    }
}

async fn ensure_publication(
    control: &tokio_postgres::Client,
    publication: &str,
) -> anyhow::Result<()> {
    let exists = control
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists {
        control
            .batch_execute(&format!(
                "CREATE PUBLICATION \"{}\" FOR TABLE {}",
                publication.replace('"', ""),
                PUBLISHED_TABLES.join(", ")
            ))
            .await?;
    }
    Ok(())
}

impl CdcReader {
    /// Publishes every existing row of the published tables as seen by `snapshot_name`
    /// (taken at `lsn`), marked as Debezium marks them: `first`, `true`, …, `last`.
    async fn snapshot(
        &self,
        control: &tokio_postgres::Client,
        tables: &[Relation],
        db: &str,
        snapshot_name: &str,
        lsn: u64,
    ) -> Result<Vec<uuid::Uuid>, ActorProcessingErr> {
        control
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot_name.replace('\'', "")
            ))
            .await?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut delivered = Vec::new();
        // Counted in the same snapshot, so the first and last rows can be marked.
        let mut total: u64 = 0;
        for relation in tables.iter().filter(|relation| relation.table != "outbox") {
            let count = control
                .query_one(&format!("SELECT count(*) FROM {}", relation.table), &[])
                .await?;
            total += u64::try_from(count.get::<_, i64>(0)).unwrap_or_default();
        }
        let mut published: u64 = 0;
        for relation in tables {
            let table = relation.table.as_str();
            let order = if table == "outbox" {
                " ORDER BY created_at, id"
            } else {
                ""
            };
            let select = format!(
                "SELECT {} FROM {table}{order}",
                relation
                    .columns
                    .iter()
                    .map(|c| format!("\"{}\"::text", c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let rows = control.query(&select, &[]).await?;
            if table == "outbox" {
                // Rows still in the outbox are events not yet delivered (delivered ones are
                // pruned): written before this slot existed, they are published now.
                let mut records = Vec::with_capacity(rows.len());
                for row in &rows {
                    let outbox_row = row_json(relation, &text_values(row, relation));
                    records.push(self.business_record(&outbox_row));
                }
                delivered = outbox_event_ids(&records);
                for chunk in records.chunks(self.settings.batch_max) {
                    self.publish(chunk.to_vec()).await?;
                }
                tracing::info!(
                    events = delivered.len(),
                    "undelivered outbox events published"
                );
                continue;
            }
            let topic = self.settings.change_topic(&self.kafka, table);
            let mut records = Vec::new();
            for row in &rows {
                published += 1;
                let source = SourceInfo {
                    name: &self.settings.server_name,
                    db,
                    lsn,
                    last_commit_lsn: None,
                    tx_id: 0,
                    ts_ms: now,
                    snapshot: match published {
                        1 => "first",
                        n if n >= total => "last",
                        _ => "true",
                    },
                    transaction: None,
                };
                let after = row_json(relation, &text_values(row, relation));
                records.extend(change_records(
                    topic.clone(),
                    relation,
                    Op::Read,
                    None,
                    Some(after),
                    &source,
                    now,
                ));
                if records.len() >= self.settings.batch_max {
                    self.publish(std::mem::take(&mut records)).await?;
                }
            }
            self.publish(records).await?;
            emit(CdcTableSnapshotted {
                table,
                rows: rows.len(),
            });
        }
        control.batch_execute("COMMIT").await?;
        Ok(delivered)
    }

    /// The business event of an outbox row, or `ErrorOccurred` when the row is unusable.
    fn business_record(&self, row: &Map<String, Value>) -> OutgoingRecord {
        outbox_record(&self.kafka.topic_prefix, row).unwrap_or_else(|error| {
            tracing::error!(event_id = ?row.get("id"), error = %error, "unusable outbox row");
            error_occurred(&self.kafka, &error.0, row)
        })
    }

    /// Hands `records` to the producer; the answer says when all are acknowledged.
    fn send(&self, records: Vec<OutgoingRecord>) -> Result<Ack, ActorProcessingErr> {
        let (reply, ack) = tokio::sync::oneshot::channel();
        self.producer.cast(ProducerMessage::Publish {
            records,
            reply: reply.into(),
        })?;
        Ok(ack)
    }

    /// Publishes `records` and waits until all are acknowledged (the snapshot's path).
    async fn publish(&self, records: Vec<OutgoingRecord>) -> Result<(), ActorProcessingErr> {
        if records.is_empty() {
            return Ok(());
        }
        let ack = self.send(records)?;
        self.acknowledged(ack).await
    }

    /// Waits for a batch's acknowledgement, bounded by the producer's own delivery timeout.
    async fn acknowledged(&self, ack: Ack) -> Result<(), ActorProcessingErr> {
        let limit = self.kafka.message_timeout + Duration::from_secs(5);
        match tokio::time::timeout(limit, ack).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(error))) => Err(error.into()),
            Ok(Err(_)) => Err("the producer went away before acknowledging a batch".into()),
            Err(_) => Err(format!("no acknowledgement from the producer within {limit:?}").into()),
        }
    }

    /// Hands `records` to the producer as the next in-flight batch.
    fn dispatch(
        &self,
        state: &mut CdcReaderState,
        records: Vec<OutgoingRecord>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(checkpoint) = checkpoint {
            state.queued_through = state.queued_through.max(checkpoint.lsn);
        }
        let outbox_ids = outbox_event_ids(&records);
        let ack = if records.is_empty() {
            // Nothing to publish (a heartbeat's commit, a keepalive): acknowledged as soon
            // as the batches before it are.
            let (reply, ack) = tokio::sync::oneshot::channel();
            let _ = reply.send(Ok(0));
            ack
        } else {
            self.send(records)?
        };
        state.in_flight.push_back(InFlight {
            ack,
            checkpoint,
            outbox_ids,
        });
        Ok(())
    }

    /// The oldest batch was acknowledged (`outcome`): confirm its commit, prune its outbox
    /// rows. A failure fails the actor, and streaming resumes at the confirmed LSN.
    fn settle(
        &self,
        state: &mut CdcReaderState,
        outcome: Result<Result<usize, ProduceError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), ActorProcessingErr> {
        let batch = state
            .in_flight
            .pop_front()
            .ok_or("an acknowledgement with no batch in flight")?;
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err("the producer went away before acknowledging a batch".into()),
        }
        state.pruner.backlog.extend(batch.outbox_ids);
        let Some(checkpoint) = batch.checkpoint else {
            return Ok(());
        };
        state.client.update_applied_lsn(checkpoint.lsn);
        state.confirmed = state.confirmed.max(checkpoint.lsn);
        state.pruner.confirmed(state.confirmed);
        let lag = checkpoint.commit_time.map(|commit_time| {
            let lag = chrono::Utc::now().timestamp_millis() - pg_time_to_unix_ms(commit_time);
            metrics::gauge!("medflow_cdc_lag_ms").set(lag as f64);
            // Only a commit resets the heartbeat's clock: a keepalive is no proof that this
            // database's slot can advance past other databases' WAL.
            state.last_confirm = Instant::now();
            lag
        });
        let confirmed = state.confirmed.to_string();
        self.status.update(|status| {
            if lag.is_some() {
                status.lag_ms = lag;
            }
            status.confirmed_lsn = Some(confirmed);
        });
        Ok(())
    }

    async fn poll(&self, state: &mut CdcReaderState) -> Result<(), ActorProcessingErr> {
        let deadline = tokio::time::Instant::now() + self.settings.batch_wait;
        let ack_limit = self.kafka.message_timeout + Duration::from_secs(5);
        while state.pending.len() < self.settings.batch_max {
            if state.in_flight.len() >= MAX_IN_FLIGHT_BATCHES {
                // Backpressure: read on only once the oldest batch is acknowledged (or leave
                // at once when the server shuts down, as below).
                let CdcReaderState {
                    in_flight,
                    control_connection,
                    ..
                } = &mut *state;
                let front = in_flight.front_mut().expect("in flight");
                let outcome = tokio::select! {
                    biased;
                    ended = control_connection => {
                        return Err(format!(
                            "the database closed the control connection ({}); leaving the replication stream so a shutdown is not held up",
                            control_ended(ended)
                        )
                        .into());
                    }
                    outcome = tokio::time::timeout(ack_limit, &mut front.ack) => outcome,
                };
                let outcome = outcome.map_err(|_| {
                    format!("no acknowledgement from the producer within {ack_limit:?}")
                })?;
                self.settle(state, outcome)?;
                continue;
            }
            let step = {
                let CdcReaderState {
                    in_flight,
                    client,
                    control_connection,
                    ..
                } = &mut *state;
                let oldest = in_flight.front_mut().map(|batch| &mut batch.ack);
                tokio::select! {
                    biased;
                    ended = control_connection => Step::ControlClosed(control_ended(ended)),
                    outcome = async { oldest.expect("guarded").await }, if oldest.is_some() => {
                        Step::Acknowledged(outcome)
                    }
                    event = client.recv() => Step::Event(event),
                    () = tokio::time::sleep_until(deadline) => Step::Elapsed,
                }
            };
            let event = match step {
                Step::Acknowledged(outcome) => {
                    self.settle(state, outcome)?;
                    continue;
                }
                Step::Event(Ok(Some(event))) => event,
                Step::Event(Ok(None)) => return Err("the replication stream ended".into()),
                // A fast shutdown terminates ordinary connections first and keeps the
                // walsender until its client has confirmed everything it was sent — which,
                // with batches still waiting for Kafka, can take longer than an operator's
                // `pg_ctl -t`. Leaving at once lets the shutdown finish; what was not
                // confirmed is streamed again after the restart (at-least-once).
                Step::ControlClosed(reason) => {
                    return Err(format!(
                        "the database closed the control connection ({reason}); leaving the replication stream so a shutdown is not held up"
                    )
                    .into());
                }
                Step::Event(Err(error)) => return Err(error.into()),
                Step::Elapsed => break,
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    state.tx = Some((xid, commit_time_micros));
                    state.tx_meta = self.settings.transaction_metadata.then(|| TransactionMeta {
                        id: format!("{xid}:{}", final_lsn.as_u64()),
                        ts_ms: pg_time_to_unix_ms(commit_time_micros),
                        counts: std::collections::BTreeMap::new(),
                    });
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    state.tx = None;
                    if let Some(meta) = state.tx_meta.take()
                        && !meta.counts.is_empty()
                    {
                        state.pending.push(transaction_record(
                            self.settings.transaction_topic(&self.kafka),
                            &meta.id,
                            meta.ts_ms,
                            Some(&meta.counts),
                        ));
                    }
                    state.last_commit_lsn = Some(end_lsn.as_u64());
                    state.committed = state.pending.len();
                    state.commit = Some(Checkpoint {
                        lsn: end_lsn,
                        commit_time: Some(commit_time_micros),
                    });
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    self.apply(state, wal_start, data);
                }
                // Between transactions, everything up to a keepalive's position has reached
                // the reader (the server sends in WAL order): it is confirmed once what came
                // before is acknowledged. Inside a transaction it is not a safe point.
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if state.tx.is_none() {
                        state.keepalive = Some(wal_end);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => {
                    return Err("the replication stream stopped".into());
                }
            }
        }
        if let Some(commit) = state.commit.take() {
            let ready: Vec<OutgoingRecord> = state.pending.drain(..state.committed).collect();
            state.committed = 0;
            self.dispatch(state, ready, Some(commit))?;
        }
        if state.pending.len() >= self.settings.batch_max {
            // A transaction larger than a batch: publish what is read so far without
            // confirming; after a crash it is read and published again from its start.
            let partial = std::mem::take(&mut state.pending);
            self.dispatch(state, partial, None)?;
        }
        if let Some(lsn) = state.keepalive.take()
            && state.tx.is_none()
            && state.pending.is_empty()
            && lsn > state.queued_through
        {
            let checkpoint = Checkpoint {
                lsn,
                commit_time: None,
            };
            self.dispatch(state, Vec::new(), Some(checkpoint))?;
        }
        if state.pending.is_empty()
            && state.tx.is_none()
            && state.in_flight.is_empty()
            && state.last_confirm.elapsed() >= self.settings.heartbeat
        {
            // An idle database: a transactional logical message in it is a commit to
            // confirm, so the slot advances past other databases' WAL instead of keeping it.
            state.last_confirm = Instant::now();
            if let Err(error) = state
                .control
                .execute(
                    "SELECT pg_logical_emit_message(true, 'medflow.heartbeat', '')",
                    &[],
                )
                .await
            {
                tracing::warn!(error = %error, "cannot write the cdc heartbeat");
            }
        }
        state.pruner.step(&state.control);
        if state.last_lag_check.elapsed() >= LAG_CHECK_INTERVAL {
            state.last_lag_check = Instant::now();
            if let Ok(row) = state
                .control
                .query_one("SELECT count(*) FROM outbox", &[])
                .await
            {
                metrics::gauge!("medflow_cdc_outbox_rows").set(row.get::<_, i64>(0) as f64);
            }
            let lag = state
                .control
                .query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.settings.slot],
                )
                .await;
            if let Ok(Some(row)) = lag
                && let Some(bytes) = row.get::<_, Option<i64>>(0)
            {
                metrics::gauge!("medflow_cdc_lag_bytes").set(bytes as f64);
            }
        }
        Ok(())
    }

    /// Decodes one pgoutput message and appends its records.
    fn apply(&self, state: &mut CdcReaderState, lsn: Lsn, data: bytes::Bytes) {
        let message = match decode(data) {
            Ok(message) => message,
            Err(error) => {
                emit(CdcDecodeFailed {
                    lsn: &lsn.to_string(),
                    error: &error.to_string(),
                });
                let mut context = Map::new();
                context.insert("lsn".into(), Value::from(lsn.to_string()));
                state
                    .pending
                    .push(error_occurred(&self.kafka, &error.to_string(), &context));
                return;
            }
        };
        let (relation_id, op, before, after) = match message {
            PgOutput::Relation(mut relation) => {
                if let Some(key) = state.primary_keys.get(&relation.table) {
                    for column in &mut relation.columns {
                        column.key = key.contains(&column.name);
                    }
                }
                state.relations.insert(relation.id, relation);
                return;
            }
            PgOutput::Insert { relation, new } => (relation, Op::Create, None, Some(new)),
            PgOutput::Update { relation, old, new } => (relation, Op::Update, old, Some(new)),
            PgOutput::Delete { relation, old } => (relation, Op::Delete, Some(old), None),
            _ => return,
        };
        let Some(relation) = state.relations.get(&relation_id) else {
            tracing::error!(
                relation = relation_id,
                "a change names an unknown relation; skipped"
            );
            return;
        };
        let (xid, commit_time) = state.tx.unwrap_or((0, 0));
        let before = before.map(|values| row_json(relation, &values));
        let after = after.map(|values| row_json(relation, &values));
        if relation.table == "outbox" {
            if let (Op::Create, Some(row)) = (op, &after) {
                let record = self.business_record(row);
                state.pending.push(record);
            }
            return;
        }
        // Transaction metadata: a BEGIN record before the transaction's first change event
        // (transactions without one, such as heartbeats, have none), then its place in it.
        let position = match &mut state.tx_meta {
            Some(meta) => {
                if meta.counts.is_empty() {
                    state.pending.push(transaction_record(
                        self.settings.transaction_topic(&self.kafka),
                        &meta.id,
                        meta.ts_ms,
                        None,
                    ));
                }
                let collection = format!("{}.{}", relation.schema, relation.table);
                let in_collection = {
                    let count = meta.counts.entry(collection).or_default();
                    *count += 1;
                    *count
                };
                Some((meta.id.clone(), meta.counts.values().sum(), in_collection))
            }
            None => None,
        };
        let source = SourceInfo {
            name: &self.settings.server_name,
            db: &state.db,
            lsn: lsn.as_u64(),
            last_commit_lsn: state.last_commit_lsn,
            tx_id: xid,
            ts_ms: pg_time_to_unix_ms(commit_time),
            snapshot: "false",
            transaction: position
                .as_ref()
                .map(
                    |(id, total_order, data_collection_order)| TransactionPosition {
                        id,
                        total_order: *total_order,
                        data_collection_order: *data_collection_order,
                    },
                ),
        };
        let topic = self.settings.change_topic(&self.kafka, &relation.table);
        let records = change_records(
            topic,
            relation,
            op,
            before,
            after,
            &source,
            chrono::Utc::now().timestamp_millis(),
        );
        state.pending.extend(records);
    }
}

/// Why the control connection's task ended.
fn control_ended(
    ended: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>,
) -> String {
    match ended {
        Ok(Ok(())) => "closed".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    }
}

/// The ids of the outbox rows whose events are among `records`.
fn outbox_event_ids(records: &[OutgoingRecord]) -> Vec<uuid::Uuid> {
    records
        .iter()
        .filter(|record| record.headers.iter().any(|(name, _)| name == "eventType"))
        .filter_map(|record| {
            record
                .headers
                .iter()
                .find(|(name, _)| name == "eventId")
                .and_then(|(_, value)| std::str::from_utf8(value).ok())
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
        })
        .collect()
}

/// Deletes outbox rows whose events Kafka acknowledged, so the outbox does not accumulate.
/// One delete runs at a time; the ids of a failed one return to the backlog and go with the
/// next attempt (the reader polls at least every `batch_wait`).
#[derive(Default)]
struct OutboxPruner {
    /// Ids of delivered events whose rows are still to be deleted.
    backlog: Vec<uuid::Uuid>,
    /// Rows present when the reader resumed its slot, and the WAL position past which all of
    /// them are delivered.
    at_start: Option<(Lsn, Vec<uuid::Uuid>)>,
    running: Option<tokio::task::JoinHandle<Result<u64, Vec<uuid::Uuid>>>>,
    /// After a failed delete, the next waits until then.
    retry_at: Option<Instant>,
}

/// The pause after a failed delete of published outbox rows.
const PRUNE_RETRY: Duration = Duration::from_secs(1);

/// Ids deleted per statement at most.
const PRUNE_CHUNK: usize = 10_000;

impl OutboxPruner {
    /// Everything up to `confirmed` is in Kafka.
    fn confirmed(&mut self, confirmed: Lsn) {
        if self
            .at_start
            .as_ref()
            .is_some_and(|(at, _)| *at <= confirmed)
            && let Some((_, ids)) = self.at_start.take()
        {
            self.backlog.extend(ids);
        }
    }

    /// Takes the outcome of a finished delete, and starts the next one if there is work.
    fn step(&mut self, control: &std::sync::Arc<tokio_postgres::Client>) {
        if let Some(running) = &mut self.running {
            if !running.is_finished() {
                return;
            }
            let outcome = futures::FutureExt::now_or_never(running).unwrap_or(Ok(Ok(0)));
            self.running = None;
            match outcome {
                Ok(Ok(deleted)) => emit(OutboxPruned { rows: deleted }),
                Ok(Err(ids)) => {
                    self.backlog.extend(ids);
                    self.retry_at = Some(Instant::now() + PRUNE_RETRY);
                }
                Err(_) => {}
            }
        }
        if self.backlog.is_empty() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        let take = self.backlog.len().min(PRUNE_CHUNK);
        let ids: Vec<uuid::Uuid> = self.backlog.drain(..take).collect();
        let control = control.clone();
        self.running = Some(tokio::spawn(async move {
            match control
                .execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
                .await
            {
                Ok(deleted) => Ok(deleted),
                Err(error) => {
                    tracing::warn!(rows = ids.len(), error = %error, "cannot prune published outbox rows yet; retrying");
                    Err(ids)
                }
            }
        }));
    }
}

/// The `ErrorOccurred` event for a change that could not be published as such.
fn error_occurred(
    kafka: &KafkaSettings,
    message: &str,
    row: &Map<String, Value>,
) -> OutgoingRecord {
    let related = row
        .get("id")
        .or_else(|| row.get("lsn"))
        .cloned()
        .unwrap_or(Value::Null);
    let value = serde_json::json!({
        "eventId": uuid::Uuid::now_v7(),
        "eventType": "ErrorOccurred",
        "eventTimestamp": chrono::Utc::now(),
        "aggregateType": "outbox",
        "aggregateId": related,
        "patientId": row.get("patient_id").cloned().unwrap_or(Value::Null),
        "version": Value::Null,
        "payload": {
            "errorCode": "CDC_UNPUBLISHABLE_EVENT",
            "errorMessage": message,
            "relatedEvent": related,
        },
    });
    OutgoingRecord {
        topic: kafka.topic("ErrorOccurred"),
        key: None,
        payload: serde_json::to_vec(&value).ok(),
        headers: vec![("eventType".into(), b"ErrorOccurred".to_vec())],
    }
}

/// A snapshot row's columns (selected as text, in `relation`'s order) as datums.
fn text_values(row: &tokio_postgres::Row, relation: &Relation) -> Vec<Datum> {
    (0..relation.columns.len())
        .map(|i| match row.get::<_, Option<String>>(i) {
            Some(text) => Datum::Text(text),
            None => Datum::Null,
        })
        .collect()
}

/// Describes `table` as pgoutput would: columns in order, with the primary key marked.
async fn describe(
    control: &tokio_postgres::Client,
    table: &str,
) -> Result<Relation, ActorProcessingErr> {
    let rows = control
        .query(
            "SELECT a.attname::text, a.atttypid::oid::int8,
                    coalesce(a.attnum = ANY (i.indkey), false)
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = ('public.' || $1)::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table],
        )
        .await?;
    Ok(Relation {
        id: 0,
        schema: "public".into(),
        table: table.into(),
        columns: rows
            .iter()
            .map(|row| Column {
                name: row.get(0),
                type_oid: u32::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
                key: row.get(2),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaSettings {
        KafkaSettings {
            brokers: "unused:9092".into(),
            topic_prefix: "p.".into(),
            partitions: 1,
            replication_factor: 1,
            linger: Duration::from_millis(5),
            message_timeout: Duration::from_secs(1),
            max_in_flight: 5,
        }
    }

    #[test]
    fn an_unpublishable_change_becomes_an_error_occurred_event() {
        let mut row = Map::new();
        row.insert("id".into(), Value::from("e-1"));
        let record = error_occurred(&kafka(), "payload is not JSON", &row);
        assert_eq!(record.topic, "p.ErrorOccurred");
        let value: Value = serde_json::from_slice(record.payload.as_ref().unwrap()).unwrap();
        assert_eq!(value["eventType"], "ErrorOccurred");
        assert_eq!(value["payload"]["errorMessage"], "payload is not JSON");
        assert_eq!(value["payload"]["relatedEvent"], "e-1");
        // Its outbox row is kept for inspection: only delivered events are pruned.
        assert!(outbox_event_ids(&[record]).is_empty());
    }
}
