//! medflow's supervision tree and its start and stop. The whole tree is started in one
//! place, [`TreePlan::start`], after [`Supervision::plan`] has made the entity clients that
//! the consumers need.
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

/// Every child whose restarts `medflow_supervisor_restarts_total{child}` counts from the
/// start (consumer groups add theirs, by group name, when they start).
pub fn supervised_children() -> impl Iterator<Item = &'static str> {
    domain::DomainChild::ALL
        .into_iter()
        .map(domain::DomainChild::name)
        .chain([integration::CHILD_NAME])
}

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

/// The handles transports and consumers use to reach the tree, available before it starts
/// (they find its actors through slots the tree fills), and what it takes to start it.
pub struct TreePlan {
    pub patients: Patients,
    pub appointments: Appointments,
    pub documents: Documents,
    pub audit: AuditTrail,
    /// The CDC pipeline's state, when it runs.
    pub cdc: Option<CdcStatusCell>,
    domain: DomainSupervisor,
    integration: Option<IntegrationSupervisor>,
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
    /// The subscription hub, when it runs.
    pub hub: Option<ActorRef<medflow_actors::bus::hub::HubMessage>>,
    /// Becomes `Some(reason)` when a child escalated past the root's tolerance.
    pub fatal: watch::Receiver<Option<String>>,
}

impl Supervision {
    /// Plans the tree: its configuration and the clients of its entity actors, so that what
    /// needs them (the registry submitter) can be built before the one start.
    pub fn plan(
        store: PgStore,
        settings: TreeSettings,
        verifier: Arc<dyn SignatureVerifier>,
        integration: Option<IntegrationSettings>,
    ) -> TreePlan {
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
        let timeout = settings.call_timeout;
        TreePlan {
            patients: Patients::new(
                EntityClient::new(slots.patients.clone(), timeout),
                store.clone(),
            ),
            appointments: Appointments::new(
                EntityClient::new(slots.appointments.clone(), timeout),
                store.clone(),
            ),
            documents: Documents::new(
                EntityClient::new(slots.documents.clone(), timeout),
                store.clone(),
            ),
            audit: AuditTrail::new(slots.audit.clone(), timeout),
            cdc,
            domain: DomainSupervisor {
                store,
                entity_host: settings.entity_host,
                restart: settings.restart,
                sealer: settings.sealer,
                verifier,
                slots,
            },
            integration,
        }
    }
}

impl TreePlan {
    /// Starts the whole tree in one place: the domain, the CDC pipeline, the subscription
    /// hub and the consumer groups, in that order, under one root.
    pub async fn start(
        self,
        hub: Option<medflow_actors::bus::hub::SubscriptionHub>,
        consumers: Option<ConsumerSupervisor>,
    ) -> anyhow::Result<Supervision> {
        let (fatal_tx, fatal) = watch::channel(None);
        let hub_ref = Arc::new(std::sync::Mutex::new(None));
        let root = RootSupervisor {
            domain: self.domain,
            integration: self.integration,
            hub,
            hub_ref: hub_ref.clone(),
            consumers,
            fatal: fatal_tx,
        };
        let (root, root_task) = Actor::spawn(None, root, ())
            .await
            .map_err(|error| anyhow::anyhow!("cannot start the supervision tree: {error}"))?;
        let hub = hub_ref
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        Ok(Supervision {
            root,
            root_task,
            patients: self.patients,
            appointments: self.appointments,
            documents: self.documents,
            audit: self.audit,
            cdc: self.cdc,
            hub,
            fatal,
        })
    }
}

impl Supervision {
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
