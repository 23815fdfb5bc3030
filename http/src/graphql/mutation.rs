//! Mutations, as the integration profile's schema has them for patients:
//! `createPatient(input: PatientCreateInput!)` and `updatePatient(id: ID!, input:
//! PatientUpdateInput!)` returning `{patient, error}`, `deletePatient(id: ID!)` returning
//! `{success, error}` (and the archived `patient`); plus booking and the appointment
//! lifecycle. Signing and registry operations stay REST-only.
//!
//! A refused permission is an error on the field; a domain refusal (validation, conflict,
//! stale version, unknown id) is the payload's `error`, with the REST problem's code.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use medflow_actors::domain::{AppointmentAction, AppointmentFields, NewAppointment, PatientData};
use uuid::Uuid;

use super::{OrGql, request};
use crate::appointments::{AppointmentInput, AppointmentView};
use crate::patients::{PatientInput, PatientUpdateInput, PatientView};
use crate::policy::{Action, Target};
use crate::problem::Problem;

/// Why a mutation did not take effect.
#[derive(SimpleObject, Debug, Clone)]
pub struct UserError {
    /// The REST problem's slug: `validation-error`, `conflict`, `precondition-failed`, …
    pub code: String,
    pub message: String,
    /// The offending input fields, by their wire names.
    pub fields: Vec<String>,
    /// The entity's current version, when the refusal was about versions.
    pub current_version: Option<i64>,
}

impl From<Problem> for UserError {
    fn from(problem: Problem) -> Self {
        Self {
            code: problem.slug.to_owned(),
            message: problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.title.to_owned()),
            fields: problem
                .errors
                .iter()
                .filter_map(|error| {
                    serde_json::to_value(error)
                        .ok()
                        .and_then(|v| v["field"].as_str().map(str::to_owned))
                })
                .collect(),
            current_version: problem.current_version,
        }
    }
}

#[derive(SimpleObject)]
pub struct PatientPayload {
    pub patient: Option<PatientView>,
    pub error: Option<UserError>,
}

/// What `deletePatient` answers (the profile's `{success, error}`).
#[derive(SimpleObject)]
pub struct DeletePatientPayload {
    /// Whether the patient is archived now.
    pub success: bool,
    /// The archived record, when it was archived.
    pub patient: Option<PatientView>,
    pub error: Option<UserError>,
}

#[derive(SimpleObject)]
pub struct AppointmentPayload {
    pub appointment: Option<AppointmentView>,
    pub error: Option<UserError>,
}

fn patient_payload(result: Result<PatientView, Problem>) -> PatientPayload {
    match result {
        Ok(patient) => PatientPayload {
            patient: Some(patient),
            error: None,
        },
        Err(problem) => PatientPayload {
            patient: None,
            error: Some(problem.into()),
        },
    }
}

fn appointment_payload(result: Result<AppointmentView, Problem>) -> AppointmentPayload {
    match result {
        Ok(appointment) => AppointmentPayload {
            appointment: Some(appointment),
            error: None,
        },
        Err(problem) => AppointmentPayload {
            appointment: None,
            error: Some(problem.into()),
        },
    }
}

fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    async fn create_patient(
        &self,
        ctx: &Context<'_>,
        input: PatientInput,
    ) -> async_graphql::Result<PatientPayload> {
        let (state, caller) = request(ctx)?;
        caller.authorize(Action::PatientCreate, Target::Any).gql()?;
        let result = async {
            let data = PatientData::parse(input.into(), today()).map_err(Problem::validation)?;
            let patient = state.patients.create(data, &caller.ctx).await?;
            Ok(PatientView::from(patient.as_ref()))
        }
        .await;
        Ok(patient_payload(result))
    }

    /// Changes a patient's data: absent fields stay, `null` clears an optional one;
    /// `expectedVersion` guards against lost updates.
    async fn update_patient(
        &self,
        ctx: &Context<'_>,
        id: async_graphql::ID,
        input: PatientUpdateInput,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<PatientPayload> {
        let (state, caller) = request(ctx)?;
        let id = match crate::extract::parse_id(&id) {
            Ok(id) => id,
            Err(problem) => return Ok(patient_payload(Err(problem))),
        };
        caller
            .authorize(Action::PatientUpdate, Target::Patient(id))
            .gql()?;
        let result = async {
            let patch = input.into_patch()?;
            let patient = state
                .patients
                .patch(id, patch, expected_version, &caller.ctx)
                .await?;
            Ok(PatientView::from(patient.as_ref()))
        }
        .await;
        Ok(patient_payload(result))
    }

    /// Archives a patient (records are never erased).
    async fn delete_patient(
        &self,
        ctx: &Context<'_>,
        id: async_graphql::ID,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<DeletePatientPayload> {
        let (state, caller) = request(ctx)?;
        let refused = |problem: Problem| DeletePatientPayload {
            success: false,
            patient: None,
            error: Some(problem.into()),
        };
        let id = match crate::extract::parse_id(&id) {
            Ok(id) => id,
            Err(problem) => return Ok(refused(problem)),
        };
        caller
            .authorize(Action::PatientArchive, Target::Patient(id))
            .gql()?;
        Ok(
            match state
                .patients
                .archive(id, expected_version, &caller.ctx)
                .await
            {
                Ok(patient) => DeletePatientPayload {
                    success: true,
                    patient: Some(PatientView::from(patient.as_ref())),
                    error: None,
                },
                Err(error) => refused(error.into()),
            },
        )
    }

    async fn book_appointment(
        &self,
        ctx: &Context<'_>,
        input: AppointmentInput,
    ) -> async_graphql::Result<AppointmentPayload> {
        let (state, caller) = request(ctx)?;
        caller
            .authorize(Action::AppointmentCreate, Target::Any)
            .gql()?;
        let result = async {
            let booking = NewAppointment::parse(
                AppointmentFields {
                    patient_id: input.patient_id,
                    doctor_id: input.doctor_id,
                    starts_at: input.starts_at,
                    duration_minutes: input.duration_minutes,
                    payment: input.payment,
                    visit: input.visit,
                },
                Utc::now(),
            )
            .map_err(Problem::validation)?;
            let appointment = state.appointments.create(&booking, &caller.ctx).await?;
            Ok(AppointmentView::from(appointment.as_ref()))
        }
        .await;
        Ok(appointment_payload(result))
    }

    async fn start_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        act(ctx, id, Ok(AppointmentAction::Start), expected_version).await
    }

    async fn complete_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        act(ctx, id, Ok(AppointmentAction::Complete), expected_version).await
    }

    async fn cancel_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        let action = AppointmentAction::cancel(&reason).map_err(Problem::validation);
        act(ctx, id, action, expected_version).await
    }

    /// Moves an appointment; the duration stays unless given.
    async fn reschedule_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        starts_at: DateTime<Utc>,
        duration_minutes: Option<i64>,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        let (state, caller) = request(ctx)?;
        caller
            .authorize(Action::AppointmentTransition, Target::Any)
            .gql()?;
        let action = match duration_minutes {
            Some(minutes) => Ok(minutes),
            None => state
                .appointments
                .get(id)
                .await
                .map(|current| i64::from(current.duration_minutes))
                .map_err(Problem::from),
        }
        .and_then(|minutes| {
            AppointmentAction::reschedule(starts_at, minutes, Utc::now())
                .map_err(Problem::validation)
        });
        act(ctx, id, action, expected_version).await
    }
}

async fn act(
    ctx: &Context<'_>,
    id: Uuid,
    action: Result<AppointmentAction, Problem>,
    expected_version: Option<i64>,
) -> async_graphql::Result<AppointmentPayload> {
    let (state, caller) = request(ctx)?;
    caller
        .authorize(Action::AppointmentTransition, Target::Any)
        .gql()?;
    let result = async {
        let appointment = state
            .appointments
            .act(id, action?, expected_version, &caller.ctx)
            .await?;
        Ok(AppointmentView::from(appointment.as_ref()))
    }
    .await;
    Ok(appointment_payload(result))
}
