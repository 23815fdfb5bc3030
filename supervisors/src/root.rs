//! `RootSupervisor`: the top of the tree. It starts the domain supervisor and, when a child
//! escalates, reports the failure to the application, which shuts down and exits non-zero so
//! the orchestrator restarts the pod.
//!
//! ```text
//! RootSupervisor
//! └─ DomainSupervisor
//!    └─ EntityRegistry<PatientActor> ── PatientActor(id) …
//! ```

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::domain::DomainSupervisor;

#[derive(Debug)]
pub enum RootMessage {}

/// Configuration of the root: its children's configurations and where to report a fatal
/// failure.
#[derive(Debug, Clone)]
pub struct RootSupervisor {
    pub domain: DomainSupervisor,
    pub fatal: watch::Sender<Option<String>>,
}

pub struct RootState {
    domain: ActorCell,
}

impl Actor for RootSupervisor {
    type Msg = RootMessage;
    type State = RootState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<RootMessage>,
        _: (),
    ) -> Result<RootState, ActorProcessingErr> {
        let (domain, _) =
            Actor::spawn_linked(None, self.domain.clone(), (), myself.get_cell()).await?;
        Ok(RootState {
            domain: domain.get_cell(),
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMessage>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match event {
            SupervisionEvent::ActorFailed(cell, error)
                if cell.get_id() == state.domain.get_id() =>
            {
                error.to_string()
            }
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if cell.get_id() == state.domain.get_id() =>
            {
                reason.unwrap_or_else(|| "stopped".into())
            }
            _ => return Ok(()),
        };
        tracing::error!(child = "domain_supervisor", reason = %reason, "a top-level child is gone; the application stops");
        let _ = self
            .fatal
            .send(Some(format!("domain supervisor: {reason}")));
        myself.stop(Some(reason));
        Ok(())
    }
}
