//! `/api/v1/doctors`: list, create, read, replace. Doctors are reference data and take the
//! store's direct path; the version check in SQL serialises writers.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use medflow_actors::Error;
use medflow_actors::domain::{Doctor, DoctorData, DoctorFields};
use medflow_actors::store::DoctorFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::extract::{self, Query, etag, if_match, if_none_match_hits, json_body, parse_id};
use crate::policy::{Action, Target};
use crate::problem::Problem;
use crate::{AppState, Page, json_reply, not_modified, outcome};

const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;
const KIND: &str = "doctor";

/// A doctor as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "Doctor")]
pub struct DoctorView {
    pub id: Uuid,
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    #[schema(example = "терапевт")]
    pub specialty: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Doctor> for DoctorView {
    fn from(doctor: &Doctor) -> Self {
        Self {
            id: doctor.id,
            first_name: doctor.data.first_name.as_str().to_owned(),
            middle_name: doctor
                .data
                .middle_name
                .as_ref()
                .map(|v| v.as_str().to_owned()),
            last_name: doctor.data.last_name.as_str().to_owned(),
            specialty: doctor.data.specialty.as_str().to_owned(),
            version: doctor.version,
            created_at: doctor.created_at,
            updated_at: doctor.updated_at,
        }
    }
}

/// A whole doctor record, to create or replace one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DoctorInput {
    #[schema(schema_with = crate::contract::person_name)]
    pub first_name: String,
    #[serde(default)]
    #[schema(schema_with = crate::contract::optional_person_name, required = false)]
    pub middle_name: Option<String>,
    #[schema(schema_with = crate::contract::person_name)]
    pub last_name: String,
    #[schema(schema_with = crate::contract::specialty)]
    pub specialty: String,
}

impl From<DoctorInput> for DoctorFields {
    fn from(input: DoctorInput) -> Self {
        Self {
            first_name: input.first_name,
            middle_name: input.middle_name,
            last_name: input.last_name,
            specialty: input.specialty,
        }
    }
}

/// Filters and pagination of the doctor list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct DoctorListParams {
    /// Skip this many doctors (default 0).
    #[param(minimum = 0, maximum = 1000000000)]
    offset: Option<i64>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Case-insensitive prefix of the last name.
    #[param(schema_with = crate::contract::name_filter)]
    last_name: Option<String>,
    /// Exact specialty.
    #[param(schema_with = crate::contract::name_filter)]
    specialty: Option<String>,
}

fn doctor_reply(status: StatusCode, doctor: &Doctor) -> Response {
    json_reply(status, &DoctorView::from(doctor), Some(doctor.version))
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body = extract::body(state.limits.body_limit_bytes);
    let caller = access::caller(&state);
    let with_state = warp::any().map(move || state.clone());
    let collection = warp::path!("api" / "v1" / "doctors");
    let item = warp::path!("api" / "v1" / "doctors" / String);
    let list = collection
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(list_doctors(&state, caller, &query).await)
        });
    let create = collection
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(|caller, headers, body, state: AppState| async move {
            outcome(create_doctor(&state, caller, &headers, body).await)
        });
    let get = item
        .and(warp::get())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(|id: String, caller, headers, state: AppState| async move {
            outcome(get_doctor(&state, &id, caller, &headers).await)
        });
    let replace = item
        .and(warp::put())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state)
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(replace_doctor(&state, &id, caller, &headers, body).await)
            },
        );
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(replace)
        .unify()
        .boxed()
}

/// Lists doctors, ordered by last name, first name, id.
#[utoipa::path(get, path = "/api/v1/doctors", tag = "doctors", params(DoctorListParams),
    responses(
        (status = 200, description = "A page of doctors", body = Page<DoctorView>),
        (status = 400, description = "Invalid filter or pagination", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_doctors(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    let query = Query::parse(raw_query, &["offset", "limit", "lastName", "specialty"])?;
    let (offset, limit) = query.pagination(DEFAULT_PAGE, MAX_PAGE)?;
    let non_empty = |raw: &str| crate::extract::text_filter(raw, 100);
    let last_name_prefix = query.parsed("lastName", "must be 1–100 characters", non_empty)?;
    let specialty = query.parsed("specialty", "must be 1–100 characters", non_empty)?;
    let filter = DoctorFilter {
        last_name_prefix,
        specialty,
        offset,
        limit,
    };
    let page = crate::reads::doctors(state, &caller, &filter).await?;
    let body = Page::new(
        page.items.iter().map(DoctorView::from).collect(),
        offset,
        limit,
        page.total,
    );
    Ok(json_reply(StatusCode::OK, &body, None))
}

/// Creates a doctor.
#[utoipa::path(post, path = "/api/v1/doctors", tag = "doctors", request_body = DoctorInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` are set", body = DoctorView),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_doctor(
    state: &AppState,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    caller.authorize(Action::DoctorCreate, Target::Any)?;
    let ctx = &caller.ctx;
    let body = body?;
    let input: DoctorInput = json_body(headers, &body)?;
    let data = DoctorData::parse(input.into()).map_err(Problem::validation)?;
    let doctor = state
        .store
        .insert_doctor(&data, ctx)
        .await
        .map_err(|error| Error::from_store(KIND, error))?;
    let mut response = doctor_reply(StatusCode::CREATED, &doctor);
    crate::set_location(&mut response, &format!("/api/v1/doctors/{}", doctor.id));
    Ok(response)
}

/// Reads a doctor.
#[utoipa::path(get, path = "/api/v1/doctors/{id}", tag = "doctors",
    params(("id" = Uuid, Path, description = "Doctor id")),
    responses(
        (status = 200, description = "The doctor; `ETag` carries the version", body = DoctorView),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such doctor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_doctor(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    caller.authorize(Action::DoctorRead, Target::Any)?;
    let doctor = state
        .store
        .load_doctor(id)
        .await
        .map_err(|error| Error::from_store(KIND, error))?
        .ok_or(Error::NotFound { kind: KIND })?;
    if if_none_match_hits(headers, doctor.version) {
        return Ok(not_modified(&etag(doctor.version)));
    }
    Ok(doctor_reply(StatusCode::OK, &doctor))
}

/// Replaces a doctor's data.
#[utoipa::path(put, path = "/api/v1/doctors/{id}", tag = "doctors", request_body = DoctorInput,
    params(("id" = Uuid, Path, description = "Doctor id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        (status = 200, description = "Replaced", body = DoctorView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such doctor", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replace_doctor(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    caller.authorize(Action::DoctorUpdate, Target::Any)?;
    let ctx = &caller.ctx;
    let body = body?;
    let expected = if_match(headers)?;
    let input: DoctorInput = json_body(headers, &body)?;
    let data = DoctorData::parse(input.into()).map_err(Problem::validation)?;
    match state.store.update_doctor(id, expected, &data, ctx).await {
        Ok(doctor) => Ok(doctor_reply(StatusCode::OK, &doctor)),
        Err(medflow_actors::store::StoreError::VersionConflict) => {
            let current = state
                .store
                .load_doctor(id)
                .await
                .ok()
                .flatten()
                .map(|d| d.version)
                .unwrap_or_default();
            Err(Error::PreconditionFailed {
                expected: expected.unwrap_or_default(),
                current,
            }
            .into())
        }
        Err(error) => Err(Error::from_store(KIND, error).into()),
    }
}
