//! `/api/v1/patients`: list, create, read, replace, patch, archive.

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use medflow_actors::domain::{Patient, PatientFields, PatientPatch, PatientPatchFields};
use medflow_actors::store::PatientFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::extract::{
    self, Query, etag, if_match, if_none_match_hits, json_body, nullable, parse_id,
};
use crate::policy::{Action, Target};
use crate::problem::Problem;
use crate::writes;
use crate::{AppState, Page, json_reply, not_modified, outcome};

const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

/// A patient as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "Patient", complex)]
pub struct PatientView {
    pub id: Uuid,
    #[schema(example = "Анна")]
    pub first_name: String,
    #[schema(example = "Сергеевна")]
    pub middle_name: Option<String>,
    #[schema(example = "Иванова")]
    pub last_name: String,
    pub birth_date: NaiveDate,
    pub email: Option<String>,
    /// SNILS, 11 digits.
    #[schema(example = "11223344595")]
    pub snils: Option<String>,
    /// OMS policy number, 16 digits.
    pub oms_policy: Option<String>,
    /// Patients are archived, never deleted; an archived patient is read-only.
    pub archived: bool,
    pub archived_at: Option<DateTime<Utc>>,
    /// The version, also sent as the `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Patient> for PatientView {
    fn from(patient: &Patient) -> Self {
        let data = &patient.data;
        Self {
            id: patient.id,
            first_name: data.first_name.as_str().to_owned(),
            middle_name: data.middle_name.as_ref().map(|v| v.as_str().to_owned()),
            last_name: data.last_name.as_str().to_owned(),
            birth_date: data.birth_date.date(),
            email: data.email.as_ref().map(|v| v.as_str().to_owned()),
            snils: data.snils.as_ref().map(|v| v.as_str().to_owned()),
            oms_policy: data.oms_policy.as_ref().map(|v| v.as_str().to_owned()),
            archived: patient.is_archived(),
            archived_at: patient.archived_at,
            version: patient.version,
            created_at: patient.created_at,
            updated_at: patient.updated_at,
        }
    }
}

/// A whole patient record, to create a patient or replace one (`PUT`). In GraphQL it is
/// the profile's `PatientCreateInput`.
#[derive(Debug, Deserialize, ToSchema, async_graphql::InputObject)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[graphql(name = "PatientCreateInput")]
pub struct PatientInput {
    /// 1–100 characters.
    #[schema(schema_with = crate::contract::person_name, example = "Анна")]
    pub first_name: String,
    #[serde(default)]
    #[schema(schema_with = crate::contract::optional_person_name, required = false)]
    pub middle_name: Option<String>,
    /// 1–100 characters.
    #[schema(schema_with = crate::contract::person_name, example = "Иванова")]
    pub last_name: String,
    /// After 1900-01-01 and not in the future.
    pub birth_date: NaiveDate,
    #[serde(default)]
    #[schema(schema_with = crate::contract::email, required = false)]
    pub email: Option<String>,
    /// 11 digits with a valid checksum.
    #[serde(default)]
    #[schema(schema_with = crate::contract::snils, required = false)]
    pub snils: Option<String>,
    /// 16 digits.
    #[serde(default)]
    #[schema(schema_with = crate::contract::oms_policy, required = false)]
    pub oms_policy: Option<String>,
}

impl From<PatientInput> for PatientFields {
    fn from(input: PatientInput) -> Self {
        Self {
            first_name: input.first_name,
            middle_name: input.middle_name,
            last_name: input.last_name,
            birth_date: input.birth_date,
            email: input.email,
            snils: input.snils,
            oms_policy: input.oms_policy,
        }
    }
}

/// A partial update (JSON merge patch, RFC 7396): absent fields are unchanged, `null` clears an
/// optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientPatchInput {
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::person_name, required = false)]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::optional_person_name, required = false)]
    pub middle_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::person_name, required = false)]
    pub last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = NaiveDate)]
    pub birth_date: Option<Option<NaiveDate>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::email, required = false)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::snils, required = false)]
    pub snils: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::contract::oms_policy, required = false)]
    pub oms_policy: Option<Option<String>>,
}

impl PatientPatchInput {
    fn into_fields(self) -> Result<PatientPatchFields, Problem> {
        fn required<T>(field: &str, value: Option<Option<T>>) -> Result<Option<T>, Problem> {
            match value {
                Some(None) => Err(Problem::invalid_field(
                    field,
                    "is required and cannot be null",
                )),
                Some(Some(value)) => Ok(Some(value)),
                None => Ok(None),
            }
        }
        Ok(PatientPatchFields {
            first_name: required("firstName", self.first_name)?,
            middle_name: self.middle_name,
            last_name: required("lastName", self.last_name)?,
            birth_date: required("birthDate", self.birth_date)?,
            email: self.email,
            snils: self.snils,
            oms_policy: self.oms_policy,
        })
    }
}

/// GraphQL's `PatientUpdateInput` (the profile's name): a partial update like `PATCH` —
/// an absent field is unchanged, `null` clears an optional one and is refused for a
/// required one.
#[derive(Debug, Default, async_graphql::InputObject)]
pub struct PatientUpdateInput {
    pub first_name: async_graphql::MaybeUndefined<String>,
    pub middle_name: async_graphql::MaybeUndefined<String>,
    pub last_name: async_graphql::MaybeUndefined<String>,
    pub birth_date: async_graphql::MaybeUndefined<NaiveDate>,
    pub email: async_graphql::MaybeUndefined<String>,
    pub snils: async_graphql::MaybeUndefined<String>,
    pub oms_policy: async_graphql::MaybeUndefined<String>,
}

impl PatientUpdateInput {
    /// The same partial update as the REST merge patch.
    pub fn into_patch(self) -> Result<PatientPatch, Problem> {
        fn merge<T>(value: async_graphql::MaybeUndefined<T>) -> Option<Option<T>> {
            match value {
                async_graphql::MaybeUndefined::Undefined => None,
                async_graphql::MaybeUndefined::Null => Some(None),
                async_graphql::MaybeUndefined::Value(value) => Some(Some(value)),
            }
        }
        PatientPatchInput {
            first_name: merge(self.first_name),
            middle_name: merge(self.middle_name),
            last_name: merge(self.last_name),
            birth_date: merge(self.birth_date),
            email: merge(self.email),
            snils: merge(self.snils),
            oms_policy: merge(self.oms_policy),
        }
        .into_patch()
    }
}

impl PatientPatchInput {
    /// Validates the patch as a whole.
    fn into_patch(self) -> Result<PatientPatch, Problem> {
        PatientPatch::parse(self.into_fields()?, today()).map_err(Problem::validation)
    }
}

/// Filters and pagination of the patient list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PatientListParams {
    /// Skip this many patients (default 0).
    #[param(minimum = 0, maximum = 1000000000)]
    offset: Option<i64>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Case-insensitive prefix of the last name.
    #[param(schema_with = crate::contract::name_filter)]
    last_name: Option<String>,
    /// Exact birth date.
    birth_date: Option<NaiveDate>,
    /// Include archived patients (default false).
    include_archived: Option<bool>,
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn patient_reply(status: StatusCode, patient: &Patient) -> Response {
    json_reply(status, &PatientView::from(patient), Some(patient.version))
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body = extract::body(state.limits.body_limit_bytes);
    let caller = access::caller(&state);
    let with_state = warp::any().map(move || state.clone());
    let collection = warp::path!("api" / "v1" / "patients");
    let item = warp::path!("api" / "v1" / "patients" / String);

    let list = collection
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(list_patients(&state, caller, &query).await)
        });
    let create = collection
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(|caller, headers, body, state: AppState| async move {
            outcome(create_patient(&state, caller, &headers, body).await)
        });
    let get = item
        .and(warp::get())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(|id: String, caller, headers, state: AppState| async move {
            outcome(get_patient(&state, &id, caller, &headers).await)
        });
    let replace = item
        .and(warp::put())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(replace_patient(&state, &id, caller, &headers, body).await)
            },
        );
    let patch = item
        .and(warp::patch())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(patch_patient(&state, &id, caller, &headers, body).await)
            },
        );
    let archive = item
        .and(warp::delete())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(with_state)
        .then(|id: String, caller, headers, state: AppState| async move {
            outcome(archive_patient(&state, &id, caller, &headers).await)
        });
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(replace)
        .unify()
        .or(patch)
        .unify()
        .or(archive)
        .unify()
        .boxed()
}

/// Lists patients, ordered by last name, first name, id.
#[utoipa::path(get, path = "/api/v1/patients", tag = "patients", params(PatientListParams),
    responses(
        (status = 200, description = "A page of patients", body = Page<PatientView>),
        (status = 400, description = "Invalid filter or pagination", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_patients(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    caller.authorize(Action::PatientList, Target::Any)?;
    let query = Query::parse(
        raw_query,
        &[
            "offset",
            "limit",
            "lastName",
            "birthDate",
            "includeArchived",
        ],
    )?;
    let (offset, limit) = query.pagination(DEFAULT_PAGE, MAX_PAGE)?;
    let last_name_prefix = query.parsed("lastName", "must be 1–100 characters", |raw| {
        crate::extract::text_filter(raw, 100)
    })?;
    let birth_date = query.parsed("birthDate", "must be a date such as 1985-03-14", |raw| {
        raw.parse::<NaiveDate>().ok()
    })?;
    let include_archived = query
        .parsed("includeArchived", "must be true or false", |raw| {
            raw.parse::<bool>().ok()
        })?
        .unwrap_or(false);
    let filter = PatientFilter {
        last_name_prefix,
        birth_date,
        born_from: None,
        born_to: None,
        include_archived,
        order: Default::default(),
        direction: Default::default(),
        offset,
        limit,
    };
    let page = crate::reads::patients(state, &caller, &filter).await?;
    let body = Page::new(
        page.items.iter().map(PatientView::from).collect(),
        offset,
        limit,
        page.total,
    );
    Ok(json_reply(StatusCode::OK, &body, None))
}

/// Creates a patient.
#[utoipa::path(post, path = "/api/v1/patients", tag = "patients", request_body = PatientInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` are set", body = PatientView),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A patient with this SNILS or OMS policy exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_patient(
    state: &AppState,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let patient = writes::create_patient(state, &caller, || {
        Ok(json_body::<PatientInput>(headers, &body?)?.into())
    })
    .await?;
    let mut response = patient_reply(StatusCode::CREATED, &patient);
    crate::set_location(&mut response, &format!("/api/v1/patients/{}", patient.id));
    Ok(response)
}

/// Reads a patient (archived patients too).
#[utoipa::path(get, path = "/api/v1/patients/{id}", tag = "patients",
    params(("id" = Uuid, Path, description = "Patient id")),
    responses(
        (status = 200, description = "The patient; `ETag` carries the version", body = PatientView),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_patient(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let patient = crate::reads::patient(state, &caller, id).await?;
    if if_none_match_hits(headers, patient.version) {
        return Ok(not_modified(&etag(patient.version)));
    }
    Ok(patient_reply(StatusCode::OK, &patient))
}

/// Replaces a patient's data.
#[utoipa::path(put, path = "/api/v1/patients/{id}", tag = "patients", request_body = PatientInput,
    params(("id" = Uuid, Path, description = "Patient id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        (status = 200, description = "Replaced", body = PatientView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Archived, duplicate SNILS/OMS, or lost a concurrent race", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replace_patient(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let patient = writes::replace_patient(state, &caller, id, expected, || {
        Ok(json_body::<PatientInput>(headers, &body?)?.into())
    })
    .await?;
    Ok(patient_reply(StatusCode::OK, &patient))
}

/// Updates some of a patient's fields (JSON merge patch).
#[utoipa::path(patch, path = "/api/v1/patients/{id}", tag = "patients",
    request_body(content = PatientPatchInput, content_type = "application/merge-patch+json"),
    params(("id" = Uuid, Path, description = "Patient id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        (status = 200, description = "Updated", body = PatientView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Archived, duplicate SNILS/OMS, or lost a concurrent race", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_patient(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let patient = writes::patch_patient(state, &caller, id, expected, || {
        json_body::<PatientPatchInput>(headers, &body?)?.into_patch()
    })
    .await?;
    Ok(patient_reply(StatusCode::OK, &patient))
}

/// Archives a patient: the record is kept, read-only, and left out of lists by default.
#[utoipa::path(delete, path = "/api/v1/patients/{id}", tag = "patients",
    params(("id" = Uuid, Path, description = "Patient id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        (status = 200, description = "Archived", body = PatientView),
        (status = 400, description = "The id is not a UUID, or `If-Match` is not an ETag", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already archived", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn archive_patient(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let patient = writes::archive_patient(state, &caller, id, expected).await?;
    Ok(patient_reply(StatusCode::OK, &patient))
}
