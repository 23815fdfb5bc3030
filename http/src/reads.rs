//! The read use cases, the same for REST and GraphQL: authorise, ask the entity's actor or the
//! store, record the read in the audit log (committed before anything is answered), and
//! answer nothing older than the committed row. **The read audit is recorded here and nowhere
//! else**: handlers and resolvers call these functions, and the one function that writes
//! read-audit rows ([`record`]) is private to this module; the DataLoaders and search (shared
//! by both transports) go through [`record_batch`].
//!
//! Several instances share one database, so an actor's cached state may be older than the
//! row. The audit statement that records the read also returns the entity's committed version
//! as of its start — after the read began — and a newer one makes the actor reload before the
//! answer. So a read on any instance reflects every write committed before it began, on any
//! instance, at no extra round trip (the audit write is made anyway, batched).

use std::sync::Arc;

use medflow_actors::audit_writer::CommittedVersions;
use medflow_actors::domain::{Appointment, Doctor, Document, Patient};
use medflow_actors::store::{
    AppointmentFilter, DoctorFilter, DocumentFilter, DocumentSummary, DocumentVersion, Page,
    PatientFilter,
};
use uuid::Uuid;

use crate::AppState;
use crate::access::Caller;
use crate::policy::{Action, Target};
use crate::problem::{Problem, store_problem};

/// Records the caller's read of `objects` and returns once it is committed, with the
/// committed versions of the entities read: a read that cannot be audited is not answered
/// (503).
async fn record(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    object_type: &'static str,
    objects: impl IntoIterator<Item = Uuid>,
) -> Result<CommittedVersions, Problem> {
    state
        .audit
        .record(caller.read_rows(action, object_type, objects))
        .await
        .map_err(Problem::from)
}

/// Records a batch of rows read on behalf of a use case of this module that is spread over
/// several calls: a GraphQL DataLoader's batch, a search's hits.
pub(crate) async fn record_batch(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    object_type: &'static str,
    objects: impl IntoIterator<Item = Uuid>,
) -> Result<(), Problem> {
    record(state, caller, action, object_type, objects)
        .await
        .map(|_| ())
}

/// A patient, as the caller may read it.
pub async fn patient(state: &AppState, caller: &Caller, id: Uuid) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientRead, Target::Patient(id))?;
    let patient = state.patients.get(id).await?;
    let committed = record(state, caller, "patient.read", "patient", [id]).await?;
    Ok(state.patients.at_least(patient, committed.of(id)).await?)
}

/// A page of patients.
pub async fn patients(
    state: &AppState,
    caller: &Caller,
    filter: &PatientFilter,
) -> Result<Page<Patient>, Problem> {
    caller.authorize(Action::PatientList, Target::Any)?;
    let page = state
        .store
        .list_patients(filter)
        .await
        .map_err(store_problem("patient"))?;
    let ids = page.items.iter().map(|patient| patient.id);
    record(state, caller, "patient.list", "patient", ids).await?;
    Ok(page)
}

/// A page of doctors. Doctors' names and specialties are the clinic's directory, not
/// patients' data: listing them is authorised but not audited.
pub async fn doctors(
    state: &AppState,
    caller: &Caller,
    filter: &DoctorFilter,
) -> Result<Page<Doctor>, Problem> {
    caller.authorize(Action::DoctorList, Target::Any)?;
    state
        .store
        .list_doctors(filter)
        .await
        .map_err(store_problem("doctor"))
}

/// An appointment, if the caller may read its patient's appointments.
pub async fn appointment(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Arc<Appointment>, Problem> {
    caller.authorize_some(Action::AppointmentRead)?;
    let appointment = state.appointments.get(id).await?;
    caller.authorize(
        Action::AppointmentRead,
        Target::Patient(appointment.patient_id),
    )?;
    let committed = record(state, caller, "appointment.read", "appointment", [id]).await?;
    Ok(state
        .appointments
        .at_least(appointment, committed.of(id))
        .await?)
}

/// A page of appointments (of one patient, or of any for a caller allowed to list them all).
pub async fn appointments(
    state: &AppState,
    caller: &Caller,
    filter: &AppointmentFilter,
) -> Result<Page<Appointment>, Problem> {
    let target = filter.patient_id.map_or(Target::Any, Target::Patient);
    caller.authorize(Action::AppointmentList, target)?;
    let page = state
        .store
        .list_appointments(filter)
        .await
        .map_err(store_problem("appointment"))?;
    let ids = page.items.iter().map(|appointment| appointment.id);
    record(state, caller, "appointment.list", "appointment", ids).await?;
    Ok(page)
}

/// A document with its current content, if the caller may read its patient's documents.
pub async fn document(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Arc<Document>, Problem> {
    let document = readable_document(state, caller, id).await?;
    let committed = record(state, caller, "document.read", "document", [id]).await?;
    Ok(state.documents.at_least(document, committed.of(id)).await?)
}

/// A page of documents without their bodies.
pub async fn documents(
    state: &AppState,
    caller: &Caller,
    filter: &DocumentFilter,
) -> Result<Page<DocumentSummary>, Problem> {
    let target = filter.patient_id.map_or(Target::Any, Target::Patient);
    caller.authorize(Action::DocumentList, target)?;
    let page = state
        .store
        .list_documents(filter)
        .await
        .map_err(store_problem("document"))?;
    let ids = page.items.iter().map(|document| document.id);
    record(state, caller, "document.list", "document", ids).await?;
    Ok(page)
}

/// A document's content versions, oldest first.
pub async fn document_versions(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Vec<DocumentVersion>, Problem> {
    readable_document(state, caller, id).await?;
    let versions = state
        .store
        .document_versions(id)
        .await
        .map_err(store_problem("document"))?;
    record(state, caller, "document.versions", "document", [id]).await?;
    Ok(versions)
}

/// Content version `n` of a document.
pub async fn document_version(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    n: i32,
) -> Result<DocumentVersion, Problem> {
    readable_document(state, caller, id).await?;
    let version = state
        .store
        .document_version(id, n)
        .await
        .map_err(store_problem("document"))?
        .ok_or_else(|| Problem::not_found("document version"))?;
    record(state, caller, "document.version.read", "document", [id]).await?;
    Ok(version)
}

/// The document from its actor, once the caller may read its patient's documents (not
/// audited by itself: the use case that needs it records what it answers).
pub(crate) async fn readable_document(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Arc<Document>, Problem> {
    caller.authorize_some(Action::DocumentRead)?;
    let document = state.documents.get(id).await?;
    caller.authorize(Action::DocumentRead, Target::Patient(document.patient_id))?;
    Ok(document)
}
