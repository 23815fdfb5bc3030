//! `AuditWriter`: appends audit rows for reads of personal and clinical data, batched.
//!
//! Every audited read waits for its row to be committed before it is answered, so nothing
//! is shown that is not on record. Rows arriving while a batch is being written wait in the
//! mailbox and go out together in the next one: one statement and one hash-chain lock per
//! batch instead of per read, with no timer and no added latency when idle.
//!
//! A failed batch is answered with the error to each of its callers (they answer 503); the
//! actor itself only fails if its mailbox is gone.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{AuditAppend, PgStore};

/// Rows written per statement at most.
const MAX_BATCH_ROWS: usize = 1_000;

/// The committed versions of the entities whose reads a batch recorded, read by the batch's
/// statement — after each of those reads began.
#[derive(Debug, Clone, Default)]
pub struct CommittedVersions(Arc<HashMap<Uuid, i64>>);

impl CommittedVersions {
    /// The committed version of `id`, if the batch recorded a read of it.
    pub fn of(&self, id: Uuid) -> Option<i64> {
        self.0.get(&id).copied()
    }
}

type Reply = RpcReplyPort<Result<CommittedVersions>>;

#[derive(Debug)]
pub enum AuditMessage {
    Append {
        rows: Vec<AuditAppend>,
        reply: Reply,
    },
    /// Writes what is pending (sent by the actor to itself).
    Flush,
}

#[derive(Debug, Clone)]
pub struct AuditWriter {
    pub store: PgStore,
}

#[derive(Default)]
pub struct AuditWriterState {
    pending: Vec<(Vec<AuditAppend>, Reply)>,
    flush_queued: bool,
}

impl Actor for AuditWriter {
    type Msg = AuditMessage;
    type State = AuditWriterState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<AuditMessage>,
        _: (),
    ) -> Result<AuditWriterState, ActorProcessingErr> {
        Ok(AuditWriterState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<AuditMessage>,
        message: AuditMessage,
        state: &mut AuditWriterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AuditMessage::Append { rows, reply } => {
                state.pending.push((rows, reply));
                if !state.flush_queued {
                    // Queued behind whatever is already in the mailbox: those join the batch.
                    myself.send_message(AuditMessage::Flush)?;
                    state.flush_queued = true;
                }
            }
            AuditMessage::Flush => {
                state.flush_queued = false;
                let pending = std::mem::take(&mut state.pending);
                self.write(pending).await;
            }
        }
        Ok(())
    }
}

impl AuditWriter {
    async fn write(&self, pending: Vec<(Vec<AuditAppend>, Reply)>) {
        let mut batch: Vec<AuditAppend> = Vec::new();
        let mut waiting = Vec::new();
        for (rows, reply) in pending {
            batch.extend(rows);
            waiting.push(reply);
            if batch.len() >= MAX_BATCH_ROWS {
                self.commit(std::mem::take(&mut batch), std::mem::take(&mut waiting))
                    .await;
            }
        }
        self.commit(batch, waiting).await;
    }

    async fn commit(&self, batch: Vec<AuditAppend>, waiting: Vec<Reply>) {
        if waiting.is_empty() {
            return;
        }
        let outcome = Box::pin(self.store.append_audit(&batch))
            .await
            .map(|versions| CommittedVersions(Arc::new(versions.into_iter().collect())))
            .map_err(|error| Error::from_store("audit log", error));
        crate::internal_events::emit(crate::internal_events::AuditBatchWritten {
            rows: batch.len(),
            error: outcome.as_ref().err().map(ToString::to_string).as_deref(),
        });
        for reply in waiting {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// Where the audit writer currently lives (empty while its supervisor restarts it).
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<RwLock<Option<ActorRef<AuditMessage>>>>);

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSlot")
    }
}

impl AuditSlot {
    pub fn set(&self, actor: Option<ActorRef<AuditMessage>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    fn get(&self) -> Result<ActorRef<AuditMessage>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::unavailable("the audit writer is restarting"))
    }
}

/// Records reads in the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditTrail {
    slot: AuditSlot,
    timeout: Duration,
}

impl AuditTrail {
    pub fn new(slot: AuditSlot, timeout: Duration) -> Self {
        Self { slot, timeout }
    }

    /// Appends `rows` and returns once they are committed, with the committed versions of
    /// the entities whose reads they record.
    pub async fn record(&self, rows: Vec<AuditAppend>) -> Result<CommittedVersions> {
        if rows.is_empty() {
            return Ok(CommittedVersions::default());
        }
        let writer = self.slot.get()?;
        match writer
            .call(
                |reply| AuditMessage::Append { rows, reply },
                Some(self.timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(Error::unavailable("the audit log did not answer in time"))
            }
            _ => Err(Error::unavailable("the audit writer is restarting")),
        }
    }
}
