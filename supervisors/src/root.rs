//! `RootSupervisor`: the top of the tree. It starts the domain supervisor and, when a child
//! escalates, reports the failure to the application, which shuts down and exits non-zero so
//! the orchestrator restarts the pod.
//!
//! ```text
//! RootSupervisor
//! ├─ DomainSupervisor        entity hosts of patients, appointments, documents; audit writer
//! ├─ IntegrationSupervisor   the CDC pipeline (when enabled)
//! ├─ SubscriptionHub         feeds GraphQL subscriptions (when enabled)
//! └─ ConsumerSupervisor      the consumer groups (search indexer, registry submitter)
//! ```

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::domain::DomainSupervisor;
use crate::integration::IntegrationSupervisor;

#[derive(Debug)]
pub enum RootMessage {}

/// Configuration of the root: its children's configurations and where to report a fatal
/// failure.
#[derive(Debug, Clone)]
pub struct RootSupervisor {
    pub domain: DomainSupervisor,
    /// The CDC pipeline, when enabled.
    pub integration: Option<IntegrationSupervisor>,
    pub fatal: watch::Sender<Option<String>>,
    /// Children the application starts after the tree (the subscription hub, the consumer
    /// supervisor — they need the domain's clients), by name; stopped first at shutdown, in
    /// reverse order of start. They restart nothing themselves that the root could, so their
    /// end is fatal like any top-level child's.
    pub late: Arc<Mutex<Vec<(&'static str, ActorCell)>>>,
}

pub struct RootState {
    domain: ActorCell,
    integration: Option<ActorCell>,
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
        let integration = match &self.integration {
            Some(integration) => Some(
                Actor::spawn_linked(None, integration.clone(), (), myself.get_cell())
                    .await?
                    .0
                    .get_cell(),
            ),
            None => None,
        };
        Ok(RootState {
            domain: domain.get_cell(),
            integration,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMessage>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children gracefully, the event pipeline first (it stops reading and lets the
        // producer flush), so their post_stop hooks run; ractor kills whatever is left.
        let late: Vec<ActorCell> = std::mem::take(
            &mut *self
                .late
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
        .into_iter()
        .rev()
        .map(|(_, cell)| cell)
        .collect();
        let children = late
            .into_iter()
            .map(Some)
            .chain([state.integration.take(), Some(state.domain.clone())]);
        for child in children.flatten() {
            let _ = child
                .stop_and_wait(
                    Some("shutdown".into()),
                    Some(std::time::Duration::from_secs(10)),
                )
                .await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMessage>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::policy::child_exit(event) else {
            return Ok(());
        };
        let child = if cell.get_id() == state.domain.get_id() {
            "domain supervisor"
        } else if state
            .integration
            .as_ref()
            .is_some_and(|integration| integration.get_id() == cell.get_id())
        {
            "integration supervisor"
        } else if let Some(name) = self
            .late
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .find(|(_, late)| late.get_id() == cell.get_id())
            .map(|(name, _)| *name)
        {
            name
        } else {
            return Ok(());
        };
        tracing::error!(child, reason = %reason, "a top-level child is gone; the application stops");
        let _ = self.fatal.send(Some(format!("{child}: {reason}")));
        myself.stop(Some(reason));
        Ok(())
    }
}
