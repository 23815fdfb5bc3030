//! The write use cases REST and GraphQL share: authorise, validate into the domain's types,
//! and ask the entity's actor, which commits the row, its version, its audit entry and its
//! outbox event in one transaction (so a write's audit needs nothing here). The transport
//! hands over a closure that reads its input (a JSON body, GraphQL arguments): it runs only
//! once the caller is authorised, so an unauthorised caller learns nothing about the input's
//! rules. Documents and doctors are written through REST only, whose handlers call their
//! actors and the store directly.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use medflow_actors::domain::{
    Appointment, AppointmentAction, AppointmentFields, NewAppointment, Patient, PatientData,
    PatientFields, PatientPatch,
};
use uuid::Uuid;

use crate::AppState;
use crate::access::Caller;
use crate::policy::{Action, Target};
use crate::problem::Problem;

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Registers a patient.
pub async fn create_patient(
    state: &AppState,
    caller: &Caller,
    input: impl FnOnce() -> Result<PatientFields, Problem>,
) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientCreate, Target::Any)?;
    let data = PatientData::parse(input()?, today()).map_err(Problem::validation)?;
    Ok(state.patients.create(data, &caller.ctx).await?)
}

/// Replaces a patient's record; `expected` is the version the caller last read.
pub async fn replace_patient(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    expected: Option<i64>,
    input: impl FnOnce() -> Result<PatientFields, Problem>,
) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientUpdate, Target::Patient(id))?;
    let data = PatientData::parse(input()?, today()).map_err(Problem::validation)?;
    Ok(state
        .patients
        .replace(id, data, expected, &caller.ctx)
        .await?)
}

/// Changes some of a patient's fields (JSON merge patch semantics).
pub async fn patch_patient(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    expected: Option<i64>,
    patch: impl FnOnce() -> Result<PatientPatch, Problem>,
) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientUpdate, Target::Patient(id))?;
    let patch = patch()?;
    Ok(state
        .patients
        .patch(id, patch, expected, &caller.ctx)
        .await?)
}

/// Archives a patient (records are never erased).
pub async fn archive_patient(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    expected: Option<i64>,
) -> Result<Arc<Patient>, Problem> {
    caller.authorize(Action::PatientArchive, Target::Patient(id))?;
    Ok(state.patients.archive(id, expected, &caller.ctx).await?)
}

/// Books an appointment (a doctor is never double-booked: the actor and the database see to
/// it).
pub async fn book_appointment(
    state: &AppState,
    caller: &Caller,
    input: impl FnOnce() -> Result<AppointmentFields, Problem>,
) -> Result<Arc<Appointment>, Problem> {
    caller.authorize(Action::AppointmentCreate, Target::Any)?;
    let booking = NewAppointment::parse(input()?, Utc::now()).map_err(Problem::validation)?;
    Ok(state.appointments.create(&booking, &caller.ctx).await?)
}

/// A step of an appointment's lifecycle, as a client asks for it.
pub enum Step {
    Start,
    Complete,
    Cancel {
        reason: String,
    },
    /// The duration stays when `duration_minutes` is absent.
    Reschedule {
        starts_at: DateTime<Utc>,
        duration_minutes: Option<i64>,
    },
}

/// Takes a lifecycle step; `expected` is the version the caller last read.
pub async fn appointment_step(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    expected: Option<i64>,
    step: impl FnOnce() -> Result<Step, Problem>,
) -> Result<Arc<Appointment>, Problem> {
    caller.authorize(Action::AppointmentTransition, Target::Any)?;
    let action = match step()? {
        Step::Start => AppointmentAction::Start,
        Step::Complete => AppointmentAction::Complete,
        Step::Cancel { reason } => {
            AppointmentAction::cancel(&reason).map_err(Problem::validation)?
        }
        Step::Reschedule {
            starts_at,
            duration_minutes,
        } => {
            let minutes = match duration_minutes {
                Some(minutes) => minutes,
                None => i64::from(state.appointments.get(id).await?.duration_minutes),
            };
            AppointmentAction::reschedule(starts_at, minutes, Utc::now())
                .map_err(Problem::validation)?
        }
    };
    Ok(state
        .appointments
        .act(id, action, expected, &caller.ctx)
        .await?)
}
