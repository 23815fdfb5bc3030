//! medflow's supervision tree and its start and stop.
//!
//! ```text
//! RootSupervisor                       reports escalations to the application (exit ≠ 0)
//! └─ DomainSupervisor                  restarts registries with backoff and a budget
//!    └─ EntityRegistry<PatientActor>   spawns, passivates and forgets entity actors
//!       └─ PatientActor(id) …          one per live patient; reloads from PostgreSQL
//! ```

pub mod domain;
pub mod policy;
pub mod root;

use std::time::Duration;

use medflow_actors::patient_actor::PatientActor;
use medflow_actors::registry::{EntityClient, RegistrySettings, RegistrySlot};
use medflow_actors::{Patients, PgStore};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

pub use policy::RestartPolicy;

use crate::domain::DomainSupervisor;
use crate::root::{RootMessage, RootSupervisor};

/// Everything the tree needs to start.
#[derive(Debug, Clone)]
pub struct TreeSettings {
    pub registry: RegistrySettings,
    pub restart: RestartPolicy,
    /// How long a transport waits for an actor's answer.
    pub call_timeout: Duration,
}

/// The running tree and the handles transports use to reach it.
pub struct Supervision {
    root: ActorRef<RootMessage>,
    root_task: JoinHandle<()>,
    pub patients: Patients,
    /// Becomes `Some(reason)` when a child escalated past the root's tolerance.
    pub fatal: watch::Receiver<Option<String>>,
}

impl Supervision {
    /// Starts the tree; returns once every registry is up.
    pub async fn start(store: PgStore, settings: TreeSettings) -> anyhow::Result<Self> {
        let patient_slot: RegistrySlot<<PatientActor as Actor>::Msg> = RegistrySlot::default();
        let (fatal_tx, fatal) = watch::channel(None);
        let root = RootSupervisor {
            domain: DomainSupervisor {
                store: store.clone(),
                registry: settings.registry,
                restart: settings.restart,
                patients: patient_slot.clone(),
            },
            fatal: fatal_tx,
        };
        let (root, root_task) = Actor::spawn(None, root, ())
            .await
            .map_err(|error| anyhow::anyhow!("cannot start the supervision tree: {error}"))?;
        let patients = Patients::new(
            EntityClient::new(patient_slot, settings.call_timeout),
            store,
        );
        Ok(Self {
            root,
            root_task,
            patients,
            fatal,
        })
    }

    /// Stops every actor, children first, waiting at most `timeout`.
    pub async fn stop(self, timeout: Duration) {
        self.root.stop(Some("shutdown".into()));
        if tokio::time::timeout(timeout, self.root_task).await.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "actors did not stop in time"
            );
        }
    }
}
