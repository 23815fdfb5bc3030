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
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

/// SQLSTATE `object_in_use`: PostgreSQL's answer to a second reader of an active slot.
const OBJECT_IN_USE: &str = "55006";

/// Returns whether a pipeline failure (`reason`, as reported) says that another process
/// streams from the slot: a standby, not a fault. Decided by the SQLSTATE the replication
/// client reports (`… (SQLSTATE 55006)`), never by the message text, which follows the
/// server's `lc_messages`.
pub fn slot_in_use(reason: &str) -> bool {
    reason
        .match_indices("SQLSTATE ")
        .any(|(at, tag)| reason[at + tag.len()..].starts_with(OBJECT_IN_USE))
}

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

impl CdcState {
    /// Whether events flow, or another instance streams them.
    pub fn running(self) -> bool {
        matches!(self, Self::Snapshotting | Self::Streaming | Self::Standby)
    }
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
    /// When the pipeline last failed (not a standby's refusal).
    #[serde(skip)]
    pub failed_at: Option<Instant>,
}

/// How long after a failure a streaming pipeline still counts as degraded: a pipeline that
/// fails right after every start must not look healthy between its attempts.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

impl CdcStatus {
    /// Returns whether events flow (or another instance streams them) and the pipeline has
    /// not failed within [`STABLE_AFTER`]; anything else is a degraded pipeline.
    pub fn healthy(&self) -> bool {
        self.state.running()
            && self
                .failed_at
                .is_none_or(|failed_at| failed_at.elapsed() >= STABLE_AFTER)
    }
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
            failed_at: None,
        })))
    }

    pub fn get(&self) -> CdcStatus {
        self.0.borrow().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut CdcStatus)) {
        self.0.send_modify(change);
        let degraded = !self.0.borrow().state.running();
        metrics::gauge!("medflow_degraded", "component" => "cdc")
            .set(f64::from(u8::from(degraded)));
    }

    pub fn subscribe(&self) -> watch::Receiver<CdcStatus> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::slot_in_use;

    #[test]
    fn a_slot_in_use_is_told_by_its_sqlstate_in_any_language() {
        let english =
            "server error: replication slot \"medflow\" is active for PID 4242 (SQLSTATE 55006)";
        let russian =
            "server error: слот репликации \"medflow\" занят процессом с PID 4242 (SQLSTATE 55006)";
        assert!(slot_in_use(english));
        assert!(slot_in_use(russian));
        assert!(slot_in_use(&format!("startup failed: {russian}")));
    }

    #[test]
    fn other_failures_are_faults_even_when_they_mention_an_active_slot() {
        for reason in [
            "server error: replication slot \"medflow\" is active for PID 4242",
            "server error: could not connect (SQLSTATE 57P03)",
            "server error: canceling statement due to conflict (SQLSTATE 40001)",
            "io error: connection reset by peer",
            "SQLSTATE 5500",
        ] {
            assert!(!slot_in_use(reason), "{reason}");
        }
    }
}
