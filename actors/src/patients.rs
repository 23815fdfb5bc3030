//! `Patients`: the typed API the transports use to reach patient actors.

use std::sync::Arc;

use uuid::Uuid;

use crate::context::RequestContext;
use crate::domain::{Patient, PatientData, PatientPatch};
use crate::error::Result;
use crate::patient_actor::{PatientActor, PatientMessage};
use crate::registry::{EntityClient, RegistryStats, Retry};

/// Commands and queries on patients, routed to each patient's actor.
#[derive(Clone)]
pub struct Patients {
    client: EntityClient<PatientActor>,
}

impl Patients {
    pub fn new(client: EntityClient<PatientActor>) -> Self {
        Self { client }
    }

    /// Creates a patient with a fresh id and returns it as committed.
    pub async fn create(&self, data: PatientData, ctx: &RequestContext) -> Result<Arc<Patient>> {
        let id = Uuid::now_v7();
        self.client
            .ask(id, Retry::OnlyIfUndelivered, |reply| {
                PatientMessage::Create {
                    data: data.clone(),
                    ctx: ctx.clone(),
                    reply,
                }
            })
            .await
    }

    pub async fn get(&self, id: Uuid) -> Result<Arc<Patient>> {
        self.client
            .ask(id, Retry::Idempotent, |reply| PatientMessage::Get { reply })
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

    /// Returns the registry's counts (live actors, restarts, passivations).
    pub async fn stats(&self) -> Result<RegistryStats> {
        self.client.stats().await
    }

    /// Returns the live actor of `id`; for operations tooling and fault-injection tests.
    pub async fn actor_of(&self, id: Uuid) -> Result<ractor::ActorRef<PatientMessage>> {
        self.client.actor_of(id).await
    }
}
