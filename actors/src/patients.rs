//! `Patients`: the typed API the transports use to reach patient actors.

use std::sync::Arc;

use uuid::Uuid;

use crate::context::RequestContext;
use crate::domain::{Patient, PatientData, PatientPatch};
use crate::entity_host::{EntityClient, EntityHostStats, Retry};
use crate::error::{Error, Result};
use crate::patient_actor::{PatientActor, PatientMessage};
use crate::store::PgStore;

/// Commands and queries on patients, routed to each patient's actor.
#[derive(Clone)]
pub struct Patients {
    client: EntityClient<PatientActor>,
    store: PgStore,
}

impl Patients {
    pub fn new(client: EntityClient<PatientActor>, store: PgStore) -> Self {
        Self { client, store }
    }

    /// Creates a patient with a fresh id and returns it as committed.
    ///
    /// A create is the one write that does not pass through the patient's actor: the id is
    /// minted here and nobody else can know it until this returns, so there is no writer to
    /// serialise against. The actor is spawned on the first request that names the id and
    /// loads the committed row. Skipping the spawn keeps a burst of registrations (which are
    /// rarely read back at once) from filling the host with actors nobody asked for.
    pub async fn create(&self, data: PatientData, ctx: &RequestContext) -> Result<Arc<Patient>> {
        let id = Uuid::now_v7();
        self.store
            .insert_patient(id, &data, ctx)
            .await
            .map(Arc::new)
            .map_err(|error| Error::from_store("patient", error))
    }

    /// Returns `patient` unless `committed` (its committed version, read after the read
    /// began) is newer; then the actor reloads and answers the committed row.
    pub async fn at_least(
        &self,
        patient: Arc<Patient>,
        committed: Option<i64>,
    ) -> Result<Arc<Patient>> {
        match committed {
            Some(at_least) if at_least > patient.version => {
                self.client
                    .ask(patient.id, Retry::Idempotent, |reply| PatientMessage::Get {
                        at_least: Some(at_least),
                        reply,
                    })
                    .await
            }
            _ => Ok(patient),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Arc<Patient>> {
        self.client
            .ask(id, Retry::Idempotent, |reply| PatientMessage::Get {
                at_least: None,
                reply,
            })
            .await
    }

    pub async fn replace(
        &self,
        id: Uuid,
        data: PatientData,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Patient>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                PatientMessage::Replace {
                    data: data.clone(),
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    pub async fn patch(
        &self,
        id: Uuid,
        patch: PatientPatch,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Patient>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                PatientMessage::Patch {
                    patch: patch.clone(),
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    pub async fn archive(
        &self,
        id: Uuid,
        if_match: Option<i64>,
        ctx: &RequestContext,
    ) -> Result<Arc<Patient>> {
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                PatientMessage::Archive {
                    if_match,
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    /// Returns the host's counts (live actors, restarts, passivations).
    pub async fn stats(&self) -> Result<EntityHostStats> {
        self.client.stats().await
    }

    /// Returns the live actor of `id`; for operations tooling and fault-injection tests.
    pub async fn actor_of(&self, id: Uuid) -> Result<ractor::ActorRef<PatientMessage>> {
        self.client.actor_of(id).await
    }
}
