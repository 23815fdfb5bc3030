//! Per-request DataLoaders: every key type is answered by one batched store read, and the
//! reads of personal and clinical data are audited for the request's caller, as REST does.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use medflow_actors::store::DocumentParent;
use uuid::Uuid;

use crate::AppState;
use crate::access::Caller;
use crate::appointments::AppointmentView;
use crate::doctors::DoctorView;
use crate::documents::DocumentSummaryView;
use crate::patients::PatientView;
use crate::problem::{Problem, store_problem};

/// How long a loader gathers keys before it queries: the resolvers of one list level
/// register their keys within this (async-graphql resolves siblings concurrently).
pub const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Children per parent a nested list loads at most (its `first` argument cuts further).
pub const CHILDREN_PER_PARENT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatientId(pub Uuid);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DoctorId(pub Uuid);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppointmentsOfPatient(pub Uuid);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocumentsOfPatient(pub Uuid);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocumentsOfAppointment(pub Uuid);

/// Loads through the store for one request's caller.
pub struct StoreLoader {
    state: AppState,
    caller: Caller,
}

impl StoreLoader {
    pub fn new(state: AppState, caller: Caller) -> Self {
        Self { state, caller }
    }

    async fn audit(
        &self,
        action: &'static str,
        object_type: &'static str,
        ids: impl IntoIterator<Item = Uuid>,
    ) -> Result<(), Problem> {
        crate::reads::record_batch(&self.state, &self.caller, action, object_type, ids).await
    }
}

impl Loader<PatientId> for StoreLoader {
    type Value = PatientView;
    type Error = Problem;

    async fn load(&self, keys: &[PatientId]) -> Result<HashMap<PatientId, PatientView>, Problem> {
        let ids: Vec<Uuid> = keys.iter().map(|key| key.0).collect();
        let found = self
            .state
            .store
            .patients_by_ids(&ids)
            .await
            .map_err(store_problem("patient"))?;
        self.audit("patient.read", "patient", found.keys().copied())
            .await?;
        Ok(found
            .iter()
            .map(|(id, patient)| (PatientId(*id), PatientView::from(patient)))
            .collect())
    }
}

impl Loader<DoctorId> for StoreLoader {
    type Value = DoctorView;
    type Error = Problem;

    async fn load(&self, keys: &[DoctorId]) -> Result<HashMap<DoctorId, DoctorView>, Problem> {
        let ids: Vec<Uuid> = keys.iter().map(|key| key.0).collect();
        let found = self
            .state
            .store
            .doctors_by_ids(&ids)
            .await
            .map_err(store_problem("doctor"))?;
        Ok(found
            .iter()
            .map(|(id, doctor)| (DoctorId(*id), DoctorView::from(doctor)))
            .collect())
    }
}

impl Loader<AppointmentsOfPatient> for StoreLoader {
    type Value = Vec<AppointmentView>;
    type Error = Problem;

    async fn load(
        &self,
        keys: &[AppointmentsOfPatient],
    ) -> Result<HashMap<AppointmentsOfPatient, Vec<AppointmentView>>, Problem> {
        let ids: Vec<Uuid> = keys.iter().map(|key| key.0).collect();
        let found = self
            .state
            .store
            .appointments_of_patients(&ids, CHILDREN_PER_PARENT)
            .await
            .map_err(store_problem("appointment"))?;
        self.audit(
            "appointment.list",
            "appointment",
            found.values().flatten().map(|a| a.id),
        )
        .await?;
        Ok(keys
            .iter()
            .map(|key| {
                let list = found
                    .get(&key.0)
                    .map(|list| list.iter().map(AppointmentView::from).collect())
                    .unwrap_or_default();
                (*key, list)
            })
            .collect())
    }
}

async fn documents(
    loader: &StoreLoader,
    parent: DocumentParent,
    ids: Vec<Uuid>,
) -> Result<HashMap<Uuid, Vec<DocumentSummaryView>>, Problem> {
    let found = loader
        .state
        .store
        .documents_of(parent, &ids, CHILDREN_PER_PARENT)
        .await
        .map_err(store_problem("document"))?;
    loader
        .audit(
            "document.list",
            "document",
            found.values().flatten().map(|d| d.id),
        )
        .await?;
    Ok(ids
        .into_iter()
        .map(|id| {
            let list = found
                .get(&id)
                .map(|list| list.iter().map(DocumentSummaryView::from).collect())
                .unwrap_or_default();
            (id, list)
        })
        .collect())
}

impl Loader<DocumentsOfPatient> for StoreLoader {
    type Value = Vec<DocumentSummaryView>;
    type Error = Problem;

    async fn load(
        &self,
        keys: &[DocumentsOfPatient],
    ) -> Result<HashMap<DocumentsOfPatient, Vec<DocumentSummaryView>>, Problem> {
        let ids = keys.iter().map(|key| key.0).collect();
        Ok(documents(self, DocumentParent::Patient, ids)
            .await?
            .into_iter()
            .map(|(id, list)| (DocumentsOfPatient(id), list))
            .collect())
    }
}

impl Loader<DocumentsOfAppointment> for StoreLoader {
    type Value = Vec<DocumentSummaryView>;
    type Error = Problem;

    async fn load(
        &self,
        keys: &[DocumentsOfAppointment],
    ) -> Result<HashMap<DocumentsOfAppointment, Vec<DocumentSummaryView>>, Problem> {
        let ids = keys.iter().map(|key| key.0).collect();
        Ok(documents(self, DocumentParent::Appointment, ids)
            .await?
            .into_iter()
            .map(|(id, list)| (DocumentsOfAppointment(id), list))
            .collect())
    }
}
