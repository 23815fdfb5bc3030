//! Change data capture: decoding PostgreSQL's logical replication stream (`pgoutput`) and
//! shaping it into Debezium-compatible change records and business events.
//!
//! [`reader::CdcReader`] streams from the replication slot, snapshots, and confirms LSNs
//! only after the producer's acknowledgements; [`pgoutput`] decodes the stream and
//! [`envelope`] shapes the records.

pub mod envelope;
pub mod pgoutput;
pub mod reader;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

/// What the change-data-capture pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CdcState {
    /// Not started (or disabled by configuration).
    Stopped,
    Starting,
    /// Publishing the initial snapshot of existing rows.
    Snapshotting,
    Streaming,
    /// Another process streams from the slot; this one waits to take over.
    Standby,
    /// Failed (e.g. the broker or PostgreSQL is down); restarting after a backoff.
    Restarting,
}

/// The pipeline's state as the readiness probe and `GET /api/v1/admin/cdc` report it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CdcStatus {
    pub state: CdcState,
    pub slot: String,
    /// The last LSN confirmed to PostgreSQL (everything before it is in Kafka).
    pub confirmed_lsn: Option<String>,
    /// Commit-to-acknowledgement delay of the last published transaction.
    pub lag_ms: Option<i64>,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// A shared, observable [`CdcStatus`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct CdcStatusCell(Arc<watch::Sender<CdcStatus>>);

impl CdcStatusCell {
    pub fn new(slot: &str) -> Self {
        Self(Arc::new(watch::Sender::new(CdcStatus {
            state: CdcState::Stopped,
            slot: slot.to_owned(),
            confirmed_lsn: None,
            lag_ms: None,
            restarts: 0,
            last_error: None,
        })))
    }

    pub fn get(&self) -> CdcStatus {
        self.0.borrow().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut CdcStatus)) {
        self.0.send_modify(change);
    }

    pub fn subscribe(&self) -> watch::Receiver<CdcStatus> {
        self.0.subscribe()
    }
}
