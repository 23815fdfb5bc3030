//! medflow's supervision tree and its start and stop.
//!
//! ```text
//! RootSupervisor                           reports escalations to the application (exit ≠ 0)
//! └─ DomainSupervisor                      restarts its children with backoff and a budget
//!    ├─ EntityHost<PatientActor>       spawns, passivates and forgets entity actors
//!    │  └─ PatientActor(id) …              one per live patient; reloads from PostgreSQL
//!    ├─ EntityHost<AppointmentActor>
//!    │  └─ AppointmentActor(id) …
//!    ├─ EntityHost<DocumentActor>
//!    │  └─ DocumentActor(id) …
//!    ├─ AuditWriter                        batches the audit rows of reads
//!    └─ AuditSealer                        seals committed audit rows into the Merkle tree
//! └─ IntegrationSupervisor                 restarts the CDC pipeline, never escalates
//!    ├─ KafkaProducer
//!    └─ CdcReader                          WAL → Kafka, confirms after acks
//! └─ SubscriptionHub                       business topics → GraphQL subscribers
//! └─ ConsumerSupervisor                    restarts each consumer group on its own
//!    ├─ ConsumerActor(medflow.search-indexer)      medflow.public.* → search index
//!    └─ ConsumerActor(medflow.registry-submitter)  DocumentSigned → federal registry
//! ```

pub mod consumers;
pub mod domain;
pub mod integration;
pub mod policy;
pub mod root;

use std::time::Duration;

use std::sync::Arc;

use medflow_actors::domain::SignatureVerifier;
use medflow_actors::entity_host::{EntityClient, EntityHostSettings};
use medflow_actors::{Appointments, AuditTrail, Documents, Patients, PgStore};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

pub use policy::RestartPolicy;

use crate::consumers::ConsumerSupervisor;
use crate::domain::{DomainSlots, DomainSupervisor};
use crate::integration::IntegrationSupervisor;
use crate::root::{RootMessage, RootSupervisor};
use medflow_actors::cdc::CdcStatusCell;

/// The change-data-capture pipeline's configuration.
#[derive(Debug, Clone)]
pub struct IntegrationSettings {
    pub cdc: medflow_actors::cdc::reader::CdcSettings,
    pub kafka: medflow_actors::bus::KafkaSettings,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// How the audit sealer runs.
#[derive(Debug, Clone)]
pub struct SealerSettings {
    /// The sealer's own connections (the tree's store when `None`).
    pub store: Option<PgStore>,
    pub seal: medflow_actors::store::SealSettings,
    pub interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Everything the tree needs to start.
#[derive(Debug, Clone)]
pub struct TreeSettings {
    pub sealer: SealerSettings,
    pub entity_host: EntityHostSettings,
    pub restart: RestartPolicy,
    /// How long a transport waits for an actor's answer.
    pub call_timeout: Duration,
}

/// The running tree and the handles transports use to reach it.
pub struct Supervision {
    root: ActorRef<RootMessage>,
    root_task: JoinHandle<()>,
    pub patients: Patients,
    pub appointments: Appointments,
    pub documents: Documents,
    pub audit: AuditTrail,
    /// The CDC pipeline's state, when it runs.
    pub cdc: Option<CdcStatusCell>,
    /// Becomes `Some(reason)` when a child escalated past the root's tolerance.
    pub fatal: watch::Receiver<Option<String>>,
    late: Arc<std::sync::Mutex<Vec<(&'static str, ractor::ActorCell)>>>,
}

impl Supervision {
    /// Starts the tree; returns once every entity host is up.
    pub async fn start(
        store: PgStore,
        settings: TreeSettings,
        verifier: Arc<dyn SignatureVerifier>,
        integration: Option<IntegrationSettings>,
    ) -> anyhow::Result<Self> {
        let slots = DomainSlots::default();
        let cdc = integration
            .as_ref()
            .map(|settings| CdcStatusCell::new(&settings.cdc.slot));
        let integration =
            integration
                .zip(cdc.clone())
                .map(|(settings, status)| IntegrationSupervisor {
                    cdc: settings.cdc,
                    kafka: settings.kafka,
                    status,
                    backoff_initial: settings.backoff_initial,
                    backoff_max: settings.backoff_max,
                });
        let (fatal_tx, fatal) = watch::channel(None);
        let late = Arc::new(std::sync::Mutex::new(Vec::new()));
        let root = RootSupervisor {
            domain: DomainSupervisor {
                store: store.clone(),
                entity_host: settings.entity_host,
                restart: settings.restart,
                sealer: settings.sealer,
                verifier,
                slots: slots.clone(),
            },
            integration,
            fatal: fatal_tx,
            late: late.clone(),
        };
        let (root, root_task) = Actor::spawn(None, root, ())
            .await
            .map_err(|error| anyhow::anyhow!("cannot start the supervision tree: {error}"))?;
        let timeout = settings.call_timeout;
        Ok(Self {
            root,
            root_task,
            patients: Patients::new(EntityClient::new(slots.patients, timeout), store.clone()),
            appointments: Appointments::new(
                EntityClient::new(slots.appointments, timeout),
                store.clone(),
            ),
            documents: Documents::new(EntityClient::new(slots.documents, timeout), store),
            audit: AuditTrail::new(slots.audit, timeout),
            cdc,
            fatal,
            late,
        })
    }

    /// Starts `actor` under the root, after the domain (whose clients it uses); `name` is
    /// how a fatal end of it is reported.
    async fn start_late<A: Actor<Arguments = ()>>(
        &self,
        name: &'static str,
        actor: A,
    ) -> anyhow::Result<ActorRef<A::Msg>> {
        let (actor, _) = Actor::spawn_linked(None, actor, (), self.root.get_cell())
            .await
            .map_err(|error| anyhow::anyhow!("cannot start the {name}: {error}"))?;
        self.late
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((name, actor.get_cell()));
        Ok(actor)
    }

    /// Starts the consumer groups under the root.
    pub async fn start_consumers(&self, supervisor: ConsumerSupervisor) -> anyhow::Result<()> {
        self.start_late("consumer supervisor", supervisor).await?;
        Ok(())
    }

    /// Starts the subscription hub under the root.
    pub async fn start_hub(
        &self,
        hub: medflow_actors::bus::hub::SubscriptionHub,
    ) -> anyhow::Result<ActorRef<medflow_actors::bus::hub::HubMessage>> {
        self.start_late("subscription hub", hub).await
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
