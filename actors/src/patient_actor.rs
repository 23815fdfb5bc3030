//! `PatientActor`: owns one patient's state and serialises every command on it.
//!
//! The actor is spawned by the patient [`EntityHost`](crate::entity_host::EntityHost) on
//! first use and loads its patient lazily on the first message, so spawning does no I/O and a
//! host never waits on the database. A new patient is inserted by
//! [`Patients::create`](crate::Patients::create) directly: its id has no actor yet. Reads are answered from memory; each write is one
//! transaction (row with version check, audit row, outbox row) and replaces the state only
//! after it committed.
//!
//! Invariants:
//! - the in-memory state is either absent (unknown, reload before use) or equal to the
//!   committed row at the time it was read or written;
//! - after any store error whose outcome is uncertain the state is dropped, so the next
//!   message reloads the truth from PostgreSQL;
//! - business errors are replies; the actor never returns `Err` for them.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::RequestContext;
use crate::domain::{Patient, PatientData, PatientPatch};
use crate::entity_host::EntityActor;
use crate::entity_state::{EntityState, check_version};
use crate::error::{Error, Result};
use crate::store::PgStore;

const KIND: &str = "patient";

/// Commands and queries for one patient.
#[derive(Debug)]
pub enum PatientMessage {
    /// Returns the patient. With `at_least` (a committed version read after the caller's
    /// read began), a cached state older than that — another instance wrote — is reloaded
    /// first.
    Get {
        at_least: Option<i64>,
        reply: RpcReplyPort<Result<Arc<Patient>>>,
    },
    Replace {
        data: PatientData,
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Patient>>>,
    },
    Patch {
        patch: PatientPatch,
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Patient>>>,
    },
    Archive {
        if_match: Option<i64>,
        ctx: RequestContext,
        reply: RpcReplyPort<Result<Arc<Patient>>>,
    },
}

/// The actor's configuration: the store it writes through.
#[derive(Debug, Clone)]
pub struct PatientActor {
    pub store: PgStore,
}

impl Actor for PatientActor {
    type Msg = PatientMessage;
    type State = EntityState<Patient>;
    /// Unloaded, or the state a passivated predecessor left with the host.
    type Arguments = EntityState<Patient>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        start: EntityState<Patient>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(start)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PatientMessage,
        state: &mut EntityState<Patient>,
    ) -> Result<(), ActorProcessingErr> {
        // The store futures are boxed so this actor's task stays small while it idles.
        match message {
            PatientMessage::Get { at_least, reply } => {
                if let Some(at_least) = at_least {
                    state.refresh_below(at_least);
                }
                let answer = Box::pin(self.loaded(&myself, state)).await;
                let _ = reply.send(answer);
            }
            PatientMessage::Replace {
                data,
                if_match,
                ctx,
                reply,
            } => {
                let answer =
                    Box::pin(self.write(&myself, state, if_match, ctx, Change::Replace(data)))
                        .await;
                let _ = reply.send(answer);
            }
            PatientMessage::Patch {
                patch,
                if_match,
                ctx,
                reply,
            } => {
                let answer =
                    Box::pin(self.write(&myself, state, if_match, ctx, Change::Patch(patch))).await;
                let _ = reply.send(answer);
            }
            PatientMessage::Archive {
                if_match,
                ctx,
                reply,
            } => {
                let answer =
                    Box::pin(self.write(&myself, state, if_match, ctx, Change::Archive)).await;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Change {
    Replace(PatientData),
    Patch(PatientPatch),
    Archive,
}

impl EntityActor for PatientActor {
    const KIND: &'static str = KIND;
    type Entity = Patient;
}

impl PatientActor {
    /// Returns the patient, reading it from the store first if needed.
    async fn loaded(
        &self,
        myself: &ActorRef<PatientMessage>,
        state: &mut EntityState<Patient>,
    ) -> Result<Arc<Patient>> {
        state
            .loaded(myself, KIND, |id| self.store.load_patient(id))
            .await
    }

    /// Applies `change`, deciding again on the committed row if a cached state decided
    /// anything but a committed write (see [`EntityState::redo_on_fresh`]).
    async fn write(
        &self,
        myself: &ActorRef<PatientMessage>,
        state: &mut EntityState<Patient>,
        if_match: Option<i64>,
        ctx: RequestContext,
        change: Change,
    ) -> Result<Arc<Patient>> {
        let mut moved = 0;
        loop {
            let cached = state.cached_version();
            let answer = self
                .write_once(myself, state, if_match, ctx.clone(), change.clone())
                .await;
            if !state.redo_on_fresh(cached, &answer, &mut moved) {
                return answer;
            }
        }
    }

    async fn write_once(
        &self,
        myself: &ActorRef<PatientMessage>,
        state: &mut EntityState<Patient>,
        if_match: Option<i64>,
        ctx: RequestContext,
        change: Change,
    ) -> Result<Arc<Patient>> {
        let current = self.loaded(myself, state).await?;
        if current.is_archived() {
            return Err(Error::Conflict {
                message: "the patient is archived".into(),
                current_version: Some(current.version),
            });
        }
        check_version(if_match, current.version)?;
        let result = match change {
            Change::Replace(data) if data == current.data => return Ok(current),
            Change::Replace(data) => self.store.update_patient(&current, &data, &ctx).await,
            Change::Patch(patch) => {
                let data = patch.apply_to(&current.data);
                if data == current.data {
                    return Ok(current);
                }
                self.store.update_patient(&current, &data, &ctx).await
            }
            Change::Archive => self.store.archive_patient(&current, &ctx).await,
        };
        state.settle(current.id, KIND, result)
    }
}
