//! `/api/v1/appointments`: book, read, list, and the lifecycle actions (start, complete,
//! cancel, reschedule).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use medflow_actors::domain::{Appointment, AppointmentFields, AppointmentStatus};
use medflow_actors::store::AppointmentFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::extract::{self, Query, etag, if_match, if_none_match_hits, json_body, parse_id};
use crate::problem::Problem;
use crate::writes::Step;
use crate::{AppState, Page, json_reply, not_modified, outcome};

const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

/// An appointment as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "Appointment", complex)]
pub struct AppointmentView {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub duration_minutes: i32,
    /// `oms` or `paid`.
    pub payment: String,
    /// `primary` or `repeat`.
    pub visit: String,
    /// `scheduled`, `in_progress`, `completed` or `cancelled`.
    pub status: String,
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Appointment> for AppointmentView {
    fn from(a: &Appointment) -> Self {
        Self {
            id: a.id,
            patient_id: a.patient_id,
            doctor_id: a.doctor_id,
            starts_at: a.starts_at,
            ends_at: a.ends_at(),
            duration_minutes: a.duration_minutes,
            payment: a.payment.as_str().to_owned(),
            visit: a.visit.as_str().to_owned(),
            status: a.status.as_str().to_owned(),
            cancel_reason: a.cancel_reason.clone(),
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A booking. The kind of visit is given by `payment` and `visit`.
#[derive(Debug, Deserialize, ToSchema, async_graphql::InputObject)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppointmentInput {
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    /// RFC 3339 with an offset, not in the past.
    pub starts_at: DateTime<Utc>,
    /// 5–240.
    #[serde(deserialize_with = "crate::extract::whole_number")]
    #[schema(example = 30, minimum = 5, maximum = 240)]
    pub duration_minutes: i64,
    /// `oms` (compulsory insurance) or `paid`.
    #[schema(schema_with = crate::contract::payment, example = "oms")]
    pub payment: String,
    /// `primary` or `repeat`.
    #[schema(schema_with = crate::contract::visit, example = "primary")]
    pub visit: String,
}

impl From<AppointmentInput> for AppointmentFields {
    fn from(input: AppointmentInput) -> Self {
        Self {
            patient_id: input.patient_id,
            doctor_id: input.doctor_id,
            starts_at: input.starts_at,
            duration_minutes: input.duration_minutes,
            payment: input.payment,
            visit: input.visit,
        }
    }
}

/// Why an appointment is cancelled.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelInput {
    #[schema(schema_with = crate::contract::cancel_reason)]
    pub reason: String,
}

/// A new time for a scheduled appointment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RescheduleInput {
    pub starts_at: DateTime<Utc>,
    /// Unchanged when absent.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    #[schema(minimum = 5, maximum = 240)]
    pub duration_minutes: Option<i64>,
}

/// Filters and pagination of the appointment list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct AppointmentListParams {
    patient_id: Option<Uuid>,
    doctor_id: Option<Uuid>,
    #[param(schema_with = crate::contract::appointment_status)]
    status: Option<String>,
    /// Starting at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Starting before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Skip this many appointments (default 0).
    #[param(minimum = 0, maximum = 1000000000)]
    offset: Option<i64>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

fn appointment_reply(status: StatusCode, appointment: &Appointment) -> Response {
    json_reply(
        status,
        &AppointmentView::from(appointment),
        Some(appointment.version),
    )
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body = extract::body(state.limits.body_limit_bytes);
    let caller = access::caller(&state);
    let with_state = warp::any().map(move || state.clone());
    let collection = warp::path!("api" / "v1" / "appointments");
    let item = warp::path!("api" / "v1" / "appointments" / String);
    let action = warp::path!("api" / "v1" / "appointments" / String / String);

    let list = collection
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(list_appointments(&state, caller, &query).await)
        });
    let create = collection
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(|caller, headers, body, state: AppState| async move {
            outcome(create_appointment(&state, caller, &headers, body).await)
        });
    let get = item
        .and(warp::get())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(|id: String, caller, headers, state: AppState| async move {
            outcome(get_appointment(&state, &id, caller, &headers).await)
        });
    let act = action
        .and(warp::post())
        .and(caller)
        .and(warp::header::headers_cloned())
        .and(body)
        .and(with_state)
        .then(
            |id: String, name: String, caller, headers, body, state: AppState| async move {
                let (state, headers) = (&state, &headers);
                outcome(match name.as_str() {
                    "start" => start_appointment(state, &id, caller, headers).await,
                    "complete" => complete_appointment(state, &id, caller, headers).await,
                    "cancel" => cancel_appointment(state, &id, caller, headers, body).await,
                    "reschedule" => reschedule_appointment(state, &id, caller, headers, body).await,
                    _ => Err(Problem::not_found("appointment action")),
                })
            },
        );
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(act)
        .unify()
        .boxed()
}

/// Lists appointments by start time. A `patient` token must filter by its own `patientId`.
#[utoipa::path(get, path = "/api/v1/appointments", tag = "appointments", params(AppointmentListParams),
    responses(
        (status = 200, description = "A page of appointments", body = Page<AppointmentView>),
        (status = 400, description = "Invalid filter or pagination", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_appointments(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    let query = Query::parse(
        raw_query,
        &[
            "patientId",
            "doctorId",
            "status",
            "from",
            "to",
            "offset",
            "limit",
        ],
    )?;
    let (offset, limit) = query.pagination(DEFAULT_PAGE, MAX_PAGE)?;
    let patient_id = query.uuid("patientId")?;
    let doctor_id = query.uuid("doctorId")?;
    let status = query.parsed(
        "status",
        "must be scheduled, in_progress, completed or cancelled",
        AppointmentStatus::parse,
    )?;
    let from = query.time("from")?;
    let to = query.time("to")?;
    let filter = AppointmentFilter {
        direction: Default::default(),
        patient_id,
        doctor_id,
        status,
        from,
        to,
        offset,
        limit,
    };
    let page = crate::reads::appointments(state, &caller, &filter).await?;
    let body = Page::new(
        page.items.iter().map(AppointmentView::from).collect(),
        offset,
        limit,
        page.total,
    );
    Ok(json_reply(StatusCode::OK, &body, None))
}

/// Books an appointment. The doctor's overlapping live appointments refuse it (409).
#[utoipa::path(post, path = "/api/v1/appointments", tag = "appointments", request_body = AppointmentInput,
    responses(
        (status = 201, description = "Booked; `Location` and `ETag` are set", body = AppointmentView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The doctor is booked at an overlapping time", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown or archived patient, unknown doctor (named in `errors`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_appointment(
    state: &AppState,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let appointment = crate::writes::book_appointment(state, &caller, || {
        Ok(json_body::<AppointmentInput>(headers, &body?)?.into())
    })
    .await?;
    let mut response = appointment_reply(StatusCode::CREATED, &appointment);
    crate::set_location(
        &mut response,
        &format!("/api/v1/appointments/{}", appointment.id),
    );
    Ok(response)
}

/// Reads an appointment.
#[utoipa::path(get, path = "/api/v1/appointments/{id}", tag = "appointments",
    params(("id" = Uuid, Path, description = "Appointment id")),
    responses(
        (status = 200, description = "The appointment; `ETag` carries the version", body = AppointmentView),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such appointment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_appointment(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let appointment = crate::reads::appointment(state, &caller, id).await?;
    if if_none_match_hits(headers, appointment.version) {
        return Ok(not_modified(&etag(appointment.version)));
    }
    Ok(appointment_reply(StatusCode::OK, &appointment))
}

/// What a lifecycle step answers, for the four operations' documentation (the handlers
/// answer through `appointment_reply` and [`Problem`]; these variants are never built).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum StepResponses {
    /// The appointment after the step
    #[response(status = 200)]
    Done(AppointmentView),
    /// The id is not a UUID, `If-Match` is not an ETag, or invalid input
    #[response(status = 400, content_type = "application/problem+json")]
    Invalid(Problem),
    /// No such appointment
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "Not allowed in the current status (`currentStatus`), or (reschedule) the new time overlaps another booking of the doctor",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    /// `If-Match` is stale
    #[response(status = 412, content_type = "application/problem+json")]
    Stale(Problem),
}

/// `POST /api/v1/appointments/{id}/start`: the patient arrived (scheduled → in progress).
#[utoipa::path(post, path = "/api/v1/appointments/{id}/start", tag = "appointments",
    params(("id" = Uuid, Path, description = "Appointment id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        StepResponses,
    ))]
pub async fn start_appointment(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    act_on_appointment(state, id, Transition::Start, caller, headers).await
}

/// `POST /api/v1/appointments/{id}/complete`: the visit is over (in progress → completed).
#[utoipa::path(post, path = "/api/v1/appointments/{id}/complete", tag = "appointments",
    params(("id" = Uuid, Path, description = "Appointment id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        StepResponses,
    ))]
pub async fn complete_appointment(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    act_on_appointment(state, id, Transition::Complete, caller, headers).await
}

/// `POST /api/v1/appointments/{id}/cancel` with `{"reason": …}`.
#[utoipa::path(post, path = "/api/v1/appointments/{id}/cancel", tag = "appointments",
    params(("id" = Uuid, Path, description = "Appointment id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    request_body = CancelInput,
    responses(
        StepResponses,
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_appointment(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    act_on_appointment(state, id, Transition::Cancel(body), caller, headers).await
}

/// `POST /api/v1/appointments/{id}/reschedule` with `{"startsAt": …, "durationMinutes"?: …}`.
#[utoipa::path(post, path = "/api/v1/appointments/{id}/reschedule", tag = "appointments",
    params(("id" = Uuid, Path, description = "Appointment id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    request_body = RescheduleInput,
    responses(
        StepResponses,
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reschedule_appointment(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    act_on_appointment(state, id, Transition::Reschedule(body), caller, headers).await
}

/// A lifecycle step as requested, with its body where it has one.
enum Transition {
    Start,
    Complete,
    Cancel(Result<Bytes, Problem>),
    Reschedule(Result<Bytes, Problem>),
}

/// Applies a lifecycle step (the four handlers above).
async fn act_on_appointment(
    state: &AppState,
    id: &str,
    transition: Transition,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let appointment = crate::writes::appointment_step(state, &caller, id, expected, || {
        Ok(match transition {
            Transition::Start => Step::Start,
            Transition::Complete => Step::Complete,
            Transition::Cancel(body) => Step::Cancel {
                reason: json_body::<CancelInput>(headers, &body?)?.reason,
            },
            Transition::Reschedule(body) => {
                let input: RescheduleInput = json_body(headers, &body?)?;
                Step::Reschedule {
                    starts_at: input.starts_at,
                    duration_minutes: input.duration_minutes,
                }
            }
        })
    })
    .await?;
    Ok(appointment_reply(StatusCode::OK, &appointment))
}
