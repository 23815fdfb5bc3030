//! Reads of one entity, the same for REST and GraphQL: authorise, ask the entity's actor,
//! record the read in the audit log (committed before anything is answered), and answer
//! nothing older than the committed row.
//!
//! Several instances share one database, so an actor's cached state may be older than the
//! row. The audit statement that records the read also returns the entity's committed version
//! as of its start — after the read began — and a newer one makes the actor reload before the
//! answer. So a read on any instance reflects every write committed before it began, on any
//! instance, at no extra round trip (the audit write is made anyway, batched).

use std::sync::Arc;

use medflow_actors::domain::{Appointment, Document, Patient};
use uuid::Uuid;

use crate::AppState;
use crate::access::{self, Caller};
use crate::policy::{Action, Target};
use crate::problem::Problem;

/// A patient, as the caller may read it.
pub async fn patient(state: &AppState, caller: &Caller, id: Uuid) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientRead, Target::Patient(id))?;
    let patient = state.patients.get(id).await?;
    let committed = access::audit_read(state, caller, "patient.read", "patient", [id]).await?;
    Ok(state.patients.at_least(patient, committed.of(id)).await?)
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
    let committed =
        access::audit_read(state, caller, "appointment.read", "appointment", [id]).await?;
    Ok(state
        .appointments
        .at_least(appointment, committed.of(id))
        .await?)
}

/// A document with its current content, if the caller may read its patient's documents.
pub async fn document(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Arc<Document>, Problem> {
    let document = crate::documents::readable_document(state, caller, id).await?;
    let committed = access::audit_read(state, caller, "document.read", "document", [id]).await?;
    Ok(state.documents.at_least(document, committed.of(id)).await?)
}
