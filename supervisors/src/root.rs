//! `RootSupervisor`: the top of the tree. It starts every top-level child, in order, and
//! stops them in reverse order; when one escalates, it reports the failure to the
//! application, which shuts down and exits non-zero so the orchestrator restarts the pod.
//!
//! ```text
//! RootSupervisor
//! ├─ DomainSupervisor        entity hosts of patients, appointments, documents; audit writer
//! ├─ IntegrationSupervisor   the CDC pipeline (when enabled)
//! ├─ SubscriptionHub         feeds GraphQL subscriptions (when enabled)
//! └─ ConsumerSupervisor      the consumer groups (search indexer, registry submitter)
//! ```

use std::sync::{Arc, Mutex};

use medflow_actors::bus::hub::{HubMessage, SubscriptionHub};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::consumers::ConsumerSupervisor;
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
    /// The subscription hub, when GraphQL subscriptions are enabled; once started, its
    /// address is published in `hub_ref` for the transports.
    pub hub: Option<SubscriptionHub>,
    pub hub_ref: Arc<Mutex<Option<ActorRef<HubMessage>>>>,
    /// The consumer groups, when any is configured.
    pub consumers: Option<ConsumerSupervisor>,
    pub fatal: watch::Sender<Option<String>>,
}

/// The running top-level children, by name, in start order.
pub struct RootState {
    children: Vec<(&'static str, ActorCell)>,
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
        // The domain first: the hub and the consumers use its clients.
        let mut children = Vec::new();
        let (domain, _) =
            Actor::spawn_linked(None, self.domain.clone(), (), myself.get_cell()).await?;
        children.push(("domain supervisor", domain.get_cell()));
        if let Some(integration) = &self.integration {
            let (actor, _) =
                Actor::spawn_linked(None, integration.clone(), (), myself.get_cell()).await?;
            children.push(("integration supervisor", actor.get_cell()));
        }
        if let Some(hub) = &self.hub {
            let (actor, _) = Actor::spawn_linked(None, hub.clone(), (), myself.get_cell()).await?;
            children.push(("subscription hub", actor.get_cell()));
            *self
                .hub_ref
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = Some(actor);
        }
        if let Some(consumers) = &self.consumers {
            let (actor, _) =
                Actor::spawn_linked(None, consumers.clone(), (), myself.get_cell()).await?;
            children.push(("consumer supervisor", actor.get_cell()));
        }
        Ok(RootState { children })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMessage>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Children stop gracefully in reverse order of start — consumers finish their batch,
        // the hub and the event pipeline stop reading (the producer flushes), the domain
        // last — so their post_stop hooks run; ractor kills whatever is left.
        for (_, child) in std::mem::take(&mut state.children).into_iter().rev() {
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
        let Some(child) = state
            .children
            .iter()
            .find(|(_, child)| child.get_id() == cell.get_id())
            .map(|(name, _)| *name)
        else {
            return Ok(());
        };
        tracing::error!(child, reason = %reason, "a top-level child is gone; the application stops");
        let _ = self.fatal.send(Some(format!("{child}: {reason}")));
        myself.stop(Some(reason));
        Ok(())
    }
}
