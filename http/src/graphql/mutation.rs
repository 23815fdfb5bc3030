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
use uuid::Uuid;

use super::{gql_error, request};
use crate::appointments::{AppointmentInput, AppointmentView};
use crate::patients::{PatientInput, PatientUpdateInput, PatientView};
use crate::problem::Problem;
use crate::writes::{self, Step};

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

fn view(patient: std::sync::Arc<medflow_actors::domain::Patient>) -> PatientView {
    PatientView::from(patient.as_ref())
}

pub struct MutationRoot;

/// A refusal of the caller (401, 403) is the operation's error, as for queries; any other
/// problem is the payload's `error`, for the client to show.
fn refused_or<T>(result: Result<T, Problem>) -> async_graphql::Result<Result<T, Problem>> {
    match result {
        Err(problem) if matches!(problem.status, 401 | 403) => Err(gql_error(problem)),
        other => Ok(other),
    }
}

#[Object]
impl MutationRoot {
    async fn create_patient(
        &self,
        ctx: &Context<'_>,
        input: PatientInput,
    ) -> async_graphql::Result<PatientPayload> {
        let (state, caller) = request(ctx)?;
        let result = writes::create_patient(state, caller, || Ok(input.into())).await;
        Ok(patient_payload(refused_or(result.map(view))?))
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
        let result =
            writes::patch_patient(state, caller, id, expected_version, || input.into_patch()).await;
        Ok(patient_payload(refused_or(result.map(view))?))
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
        let result = writes::archive_patient(state, caller, id, expected_version).await;
        Ok(match refused_or(result)? {
            Ok(patient) => DeletePatientPayload {
                success: true,
                patient: Some(PatientView::from(patient.as_ref())),
                error: None,
            },
            Err(problem) => refused(problem),
        })
    }

    async fn book_appointment(
        &self,
        ctx: &Context<'_>,
        input: AppointmentInput,
    ) -> async_graphql::Result<AppointmentPayload> {
        let (state, caller) = request(ctx)?;
        let result = writes::book_appointment(state, caller, || Ok(input.into()))
            .await
            .map(|appointment| AppointmentView::from(appointment.as_ref()));
        Ok(appointment_payload(refused_or(result)?))
    }

    async fn start_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        step(ctx, id, Step::Start, expected_version).await
    }

    async fn complete_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        step(ctx, id, Step::Complete, expected_version).await
    }

    async fn cancel_appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
        expected_version: Option<i64>,
    ) -> async_graphql::Result<AppointmentPayload> {
        step(ctx, id, Step::Cancel { reason }, expected_version).await
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
        let step_asked = Step::Reschedule {
            starts_at,
            duration_minutes,
        };
        step(ctx, id, step_asked, expected_version).await
    }
}

async fn step(
    ctx: &Context<'_>,
    id: Uuid,
    step: Step,
    expected_version: Option<i64>,
) -> async_graphql::Result<AppointmentPayload> {
    let (state, caller) = request(ctx)?;
    let result = writes::appointment_step(state, caller, id, expected_version, || Ok(step))
        .await
        .map(|appointment| AppointmentView::from(appointment.as_ref()));
    Ok(appointment_payload(refused_or(result)?))
}
