//! `DomainSupervisor`: owns the entity hosts and the audit writer, and restarts a failed
//! one.
//!
//! ```text
//! DomainSupervisor
//! ├─ EntityHost<PatientActor>       each child is restarted with backoff within its own
//! │  └─ PatientActor(id) …              restart budget; entity actors die with their
//! ├─ EntityHost<AppointmentActor>   host and reload on demand
//! │  └─ AppointmentActor(id) …
//! ├─ EntityHost<DocumentActor>
//! │  └─ DocumentActor(id) …
//! ├─ AuditWriter                        batches the audit rows of reads
//! └─ AuditSealer                        seals committed audit rows (never fails on a
//!                                       database error: it retries with backoff itself)
//! ```
//!
//! While a child restarts, its slot is empty and requests needing it answer "unavailable";
//! when a child's budget is spent the supervisor fails, escalating to the root.

use std::sync::Arc;
use std::time::Instant;

use medflow_actors::PgStore;
use medflow_actors::appointment_actor::AppointmentActor;
use medflow_actors::audit_sealer::AuditSealer;
use medflow_actors::audit_writer::{AuditSlot, AuditWriter};
use medflow_actors::document_actor::DocumentActor;
use medflow_actors::domain::SignatureVerifier;
use medflow_actors::entity_host::{EntityActor, EntityHost, EntityHostSettings, EntityHostSlot};
use medflow_actors::internal_events::{ChildEscalated, ChildRestarting, emit};
use medflow_actors::patient_actor::PatientActor;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::SealerSettings;
use crate::policy::{RestartDecision, RestartPolicy, RestartTracker};

/// The children the domain supervisor owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainChild {
    PatientHost,
    AppointmentHost,
    DocumentHost,
    AuditWriter,
    AuditSealer,
}

impl DomainChild {
    pub const ALL: [DomainChild; 5] = [
        DomainChild::PatientHost,
        DomainChild::AppointmentHost,
        DomainChild::DocumentHost,
        DomainChild::AuditWriter,
        DomainChild::AuditSealer,
    ];

    /// The child's name in logs and in `medflow_supervisor_restarts_total{child}`.
    pub fn name(self) -> &'static str {
        match self {
            DomainChild::PatientHost => "patient_host",
            DomainChild::AppointmentHost => "appointment_host",
            DomainChild::DocumentHost => "document_host",
            DomainChild::AuditWriter => "audit_writer",
            DomainChild::AuditSealer => "audit_sealer",
        }
    }
}

#[derive(Debug)]
pub enum DomainMessage {
    /// Spawns a child (at start, and after a restart backoff).
    Spawn(DomainChild),
}

/// Where transports find each child while it runs.
#[derive(Debug, Clone, Default)]
pub struct DomainSlots {
    pub patients: EntityHostSlot<<PatientActor as Actor>::Msg>,
    pub appointments: EntityHostSlot<<AppointmentActor as Actor>::Msg>,
    pub documents: EntityHostSlot<<DocumentActor as Actor>::Msg>,
    pub audit: AuditSlot,
}

/// Configuration of the domain supervisor.
#[derive(Debug, Clone)]
pub struct DomainSupervisor {
    pub store: PgStore,
    pub entity_host: EntityHostSettings,
    pub restart: RestartPolicy,
    pub sealer: SealerSettings,
    pub verifier: Arc<dyn SignatureVerifier>,
    pub slots: DomainSlots,
}

struct Child {
    kind: DomainChild,
    cell: Option<ActorCell>,
    restarts: RestartTracker,
}

pub struct DomainState {
    children: Vec<Child>,
}

impl Actor for DomainSupervisor {
    type Msg = DomainMessage;
    type State = DomainState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<DomainMessage>,
        _: (),
    ) -> Result<DomainState, ActorProcessingErr> {
        let mut state = DomainState {
            children: DomainChild::ALL
                .into_iter()
                .map(|kind| Child {
                    kind,
                    cell: None,
                    restarts: RestartTracker::default(),
                })
                .collect(),
        };
        for kind in DomainChild::ALL {
            self.spawn_child(&myself, &mut state, kind).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DomainMessage>,
        _state: &mut DomainState,
    ) -> Result<(), ActorProcessingErr> {
        for kind in DomainChild::ALL {
            self.clear_slot(kind);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DomainMessage>,
        message: DomainMessage,
        state: &mut DomainState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DomainMessage::Spawn(child) => self.spawn_child(&myself, state, child).await,
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<DomainMessage>,
        event: SupervisionEvent,
        state: &mut DomainState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::policy::child_exit(event) else {
            return Ok(());
        };
        let Some(child) = state.children.iter_mut().find(|child| {
            child
                .cell
                .as_ref()
                .is_some_and(|own| own.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        let kind = child.kind;
        child.cell = None;
        self.clear_slot(kind);
        match child.restarts.on_failure(&self.restart, Instant::now()) {
            RestartDecision::RestartAfter(delay) => {
                emit(ChildRestarting {
                    child: kind.name(),
                    reason: &reason,
                    delay,
                });
                myself.send_after(delay, move || DomainMessage::Spawn(kind));
                Ok(())
            }
            RestartDecision::Escalate => {
                emit(ChildEscalated {
                    child: kind.name(),
                    reason: &reason,
                });
                Err(format!(
                    "{} failed {} times within the restart window: {reason}",
                    kind.name(),
                    child.restarts.recent_failures()
                )
                .into())
            }
        }
    }
}

impl DomainSupervisor {
    fn clear_slot(&self, kind: DomainChild) {
        match kind {
            DomainChild::PatientHost => self.slots.patients.set(None),
            DomainChild::AppointmentHost => self.slots.appointments.set(None),
            DomainChild::DocumentHost => self.slots.documents.set(None),
            DomainChild::AuditWriter => self.slots.audit.set(None),
            DomainChild::AuditSealer => {}
        }
    }

    async fn spawn_host<A: EntityActor>(
        &self,
        myself: &ActorRef<DomainMessage>,
        factory: A,
        slot: &EntityHostSlot<A::Msg>,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let host = EntityHost {
            factory,
            settings: self.entity_host.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, host, (), myself.get_cell()).await?;
        let cell = actor.get_cell();
        slot.set(Some(actor));
        Ok(cell)
    }

    async fn spawn_child(
        &self,
        myself: &ActorRef<DomainMessage>,
        state: &mut DomainState,
        kind: DomainChild,
    ) -> Result<(), ActorProcessingErr> {
        let store = self.store.clone();
        let cell = match kind {
            DomainChild::PatientHost => {
                self.spawn_host(myself, PatientActor { store }, &self.slots.patients)
                    .await?
            }
            DomainChild::AppointmentHost => {
                self.spawn_host(myself, AppointmentActor { store }, &self.slots.appointments)
                    .await?
            }
            DomainChild::DocumentHost => {
                let factory = DocumentActor {
                    store,
                    verifier: self.verifier.clone(),
                };
                self.spawn_host(myself, factory, &self.slots.documents)
                    .await?
            }
            DomainChild::AuditWriter => {
                let (actor, _) =
                    Actor::spawn_linked(None, AuditWriter { store }, (), myself.get_cell()).await?;
                let cell = actor.get_cell();
                self.slots.audit.set(Some(actor));
                cell
            }
            DomainChild::AuditSealer => {
                let sealer = AuditSealer {
                    store: self.sealer.store.clone().unwrap_or(store),
                    settings: self.sealer.seal.clone(),
                    interval: self.sealer.interval,
                    backoff_initial: self.sealer.backoff_initial,
                    backoff_max: self.sealer.backoff_max,
                };
                let (actor, _) = Actor::spawn_linked(None, sealer, (), myself.get_cell()).await?;
                actor.get_cell()
            }
        };
        if let Some(child) = state.children.iter_mut().find(|child| child.kind == kind) {
            child.cell = Some(cell);
            child.restarts.started(Instant::now());
        }
        Ok(())
    }
}
