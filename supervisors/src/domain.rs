//! `DomainSupervisor`: owns the entity registries and restarts a failed one.
//!
//! ```text
//! DomainSupervisor
//! └─ EntityRegistry<PatientActor>   restarted with backoff within the restart budget;
//!    └─ PatientActor(id) …          its entity actors die with it and reload on demand
//! ```
//!
//! While a registry restarts, its [`RegistrySlot`] is empty and requests answer
//! "unavailable"; when the budget is spent the supervisor fails, escalating to the root.

use std::time::Instant;

use medflow_actors::PgStore;
use medflow_actors::patient_actor::PatientActor;
use medflow_actors::registry::{EntityRegistry, RegistrySettings, RegistrySlot};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::policy::{RestartDecision, RestartPolicy, RestartTracker};

/// The children the domain supervisor owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainChild {
    PatientRegistry,
}

#[derive(Debug)]
pub enum DomainMessage {
    /// Spawns a child (at start, and after a restart backoff).
    Spawn(DomainChild),
}

/// Configuration of the domain supervisor.
#[derive(Debug, Clone)]
pub struct DomainSupervisor {
    pub store: PgStore,
    pub registry: RegistrySettings,
    pub restart: RestartPolicy,
    pub patients: RegistrySlot<<PatientActor as Actor>::Msg>,
}

pub struct DomainState {
    patient_registry: Option<ActorCell>,
    patient_restarts: RestartTracker,
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
            patient_registry: None,
            patient_restarts: RestartTracker::default(),
        };
        self.spawn_child(&myself, &mut state, DomainChild::PatientRegistry)
            .await?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DomainMessage>,
        _state: &mut DomainState,
    ) -> Result<(), ActorProcessingErr> {
        self.patients.set(None);
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
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let is_patient_registry = state
            .patient_registry
            .as_ref()
            .is_some_and(|child| child.get_id() == cell.get_id());
        if !is_patient_registry {
            return Ok(());
        }
        state.patient_registry = None;
        self.patients.set(None);
        metrics::counter!("medflow_supervisor_restarts_total", "child" => "patient_registry")
            .increment(1);
        match state
            .patient_restarts
            .on_failure(&self.restart, Instant::now())
        {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(child = "patient_registry", reason = %reason, delay_ms = delay.as_millis() as u64, "child stopped; restarting");
                myself.send_after(delay, || DomainMessage::Spawn(DomainChild::PatientRegistry));
                Ok(())
            }
            RestartDecision::Escalate => {
                tracing::error!(child = "patient_registry", reason = %reason, "restart budget spent; escalating");
                Err(format!(
                    "patient registry failed {} times within the restart window: {reason}",
                    state.patient_restarts.recent_failures()
                )
                .into())
            }
        }
    }
}

impl DomainSupervisor {
    async fn spawn_child(
        &self,
        myself: &ActorRef<DomainMessage>,
        state: &mut DomainState,
        child: DomainChild,
    ) -> Result<(), ActorProcessingErr> {
        match child {
            DomainChild::PatientRegistry => {
                let registry = EntityRegistry {
                    factory: PatientActor {
                        store: self.store.clone(),
                    },
                    settings: self.registry.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, registry, (), myself.get_cell()).await?;
                state.patient_registry = Some(actor.get_cell());
                self.patients.set(Some(actor));
            }
        }
        Ok(())
    }
}
