//! `GET /api/v1/search` (full text over documents, fuzzy over patient names). The consumer
//! administration is in [`crate::admin`].
//!
//! Search permissions are those of listing: `type=patient` needs "list patients",
//! `type=document` needs "list documents" — a patient token is confined to its own documents
//! (a `patientId` naming anyone else is 403). Every hit returned is an audited read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use medflow_actors::Error;
use medflow_actors::domain::DocumentType;
use medflow_actors::search::{Kind, SearchHit, SearchIndex, SearchQuery, SearchResults};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::extract::Query;
use crate::policy::{Action, Target};
use crate::problem::Problem;
use crate::{AppState, json_reply, outcome};

const DEFAULT_LIMIT: i64 = 20;
const MAX_OFFSET: i64 = 10_000;
const MAX_QUERY_CHARS: usize = 200;

/// The search index and its limits.
#[derive(Clone)]
pub struct SearchService {
    pub index: Arc<dyn SearchIndex>,
    pub max_limit: usize,
}

/// What a search looks through (the OpenAPI document's enum of `type`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SearchKind {
    Patient,
    Document,
}

/// Search parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct SearchParams {
    /// Words to find (1–200 characters): in document titles and bodies (Russian stemming),
    /// or in patient names (fuzzy: a typo or two still matches; a prefix matches).
    // The filter rule of `contract::name_filter` with 200 characters, spelt out (a
    // `schema_with` parameter loses its `required`); a unit test there keeps the patterns
    // equal.
    #[param(
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000]*$"
    )]
    q: String,
    /// What to search.
    #[serde(rename = "type")]
    #[param(value_type = SearchKind, inline)]
    kind: String,
    /// Documents of this patient only (this and the other document filters are ignored
    /// when `type` is `patient`).
    patient_id: Option<Uuid>,
    /// Documents by this author only.
    author_id: Option<Uuid>,
    /// Documents of this type only.
    #[param(schema_with = crate::contract::document_type)]
    document_type: Option<String>,
    /// Documents created at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Documents created before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Skip this many hits (default 0).
    #[param(minimum = 0, maximum = 10000)]
    offset: Option<i64>,
    /// Page size (default 20; at most `search.max_limit`, 100 unless configured).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of search hits, best first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResultsView {
    pub total: u64,
    pub offset: i64,
    pub limit: i64,
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<SearchHit>,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let search = warp::path!("api" / "v1" / "search")
        .and(warp::get())
        .and(access::caller(&state))
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(search(&state, caller, &query).await)
        });
    search.boxed()
}

/// Searches patients (fuzzy names) or documents (full text), with filters.
#[utoipa::path(get, path = "/api/v1/search", tag = "search", params(SearchParams),
    responses(
        (status = 200, description = "Hits, best first, with highlights and scores", body = SearchResultsView),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to list what was searched", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The search index is unavailable or not enabled", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn search(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    let query = Query::parse(
        raw_query,
        &[
            "q",
            "type",
            "patientId",
            "authorId",
            "documentType",
            "from",
            "to",
            "offset",
            "limit",
        ],
    )?;
    let kind = query
        .get("type")
        .ok_or_else(|| Problem::invalid_field("type", "is required: patient or document"))
        .and_then(|raw| {
            Kind::parse(raw)
                .ok_or_else(|| Problem::invalid_field("type", "must be patient or document"))
        })?;
    let (offset, limit) = query.pagination(DEFAULT_LIMIT, max_limit(state))?;
    let request = SearchRequest {
        text: query.get("q").unwrap_or_default().to_owned(),
        kind,
        limit,
        offset,
        patient_id: query.uuid("patientId")?,
        author_id: query.uuid("authorId")?,
        doc_type: query.get("documentType").map(str::to_owned),
        from: query.time("from")?,
        to: query.time("to")?,
    };
    let results = run_search(state, &caller, request).await?;
    let view = SearchResultsView {
        total: results.total,
        offset,
        limit,
        items: results.hits,
    };
    Ok(json_reply(StatusCode::OK, &view, None))
}

/// Results per page at most: `search.max_limit`.
fn max_limit(state: &AppState) -> i64 {
    state
        .search
        .as_ref()
        .map_or(100, |service| service.max_limit as i64)
}

/// A search as a transport received it (REST or GraphQL).
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: String,
    pub kind: Kind,
    pub limit: i64,
    pub offset: i64,
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    /// A document type name, checked here.
    pub doc_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Validates, authorizes (confining a patient to their own documents), searches and audits
/// the hits: the one implementation behind REST and GraphQL.
pub async fn run_search(
    state: &AppState,
    caller: &Caller,
    request: SearchRequest,
) -> Result<SearchResults, Problem> {
    let Some(text) = crate::extract::text_filter(&request.text, MAX_QUERY_CHARS) else {
        return Err(Problem::invalid_field("q", "is required: 1–200 characters"));
    };
    let text = text.as_str();
    let max_limit = max_limit(state);
    if !(1..=max_limit).contains(&request.limit) {
        return Err(Problem::invalid_field(
            "limit",
            format!("must be an integer from 1 to {max_limit}"),
        ));
    }
    if !(0..=MAX_OFFSET).contains(&request.offset) {
        return Err(Problem::invalid_field("offset", "must be from 0 to 10000"));
    }
    // `to` not after `from` is an empty range: it finds nothing.
    let doc_type = request
        .doc_type
        .as_deref()
        .map(|raw| {
            DocumentType::parse(raw)
                .map(|t| t.as_str().to_owned())
                .ok_or_else(|| {
                    Problem::invalid_field(
                        "documentType",
                        format!("must be one of {}", DocumentType::names().join(", ")),
                    )
                })
        })
        .transpose()?;
    let mut patient_id = request.patient_id;
    let (mut author_id, mut doc_type) = (request.author_id, doc_type);
    let (mut from, mut to) = (request.from, request.to);
    match request.kind {
        Kind::Patient => {
            caller.authorize(Action::PatientList, Target::Any)?;
            // The document filters (patientId, authorId, documentType, from, to) do not apply
            // to patients: ignored, as the OpenAPI document says.
            (patient_id, author_id, doc_type, from, to) = (None, None, None, None, None);
        }
        Kind::Document => match patient_id {
            Some(id) => caller.authorize(Action::DocumentList, Target::Patient(id))?,
            None => {
                if caller.authorize(Action::DocumentList, Target::Any).is_err() {
                    // A patient sees only their own documents: confine the search.
                    let own = caller.principal.patient_id.filter(|own| {
                        state.policy.allows(
                            &caller.principal,
                            Action::DocumentList,
                            Target::Patient(*own),
                        )
                    });
                    match own {
                        Some(own) => patient_id = Some(own),
                        None => caller.authorize(Action::DocumentList, Target::Any)?,
                    }
                }
            }
        },
    }
    let Some(service) = &state.search else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "search-disabled",
            "Search is not enabled",
        )
        .detail("this instance runs with search.enabled = false"));
    };
    let query = SearchQuery {
        text: text.to_owned(),
        kind: request.kind,
        limit: request.limit as usize,
        offset: request.offset as usize,
        patient_id,
        author_id,
        doc_type,
        from,
        to,
    };
    let started = std::time::Instant::now();
    let results = service
        .index
        .search(&query)
        .await
        .map_err(|error| Problem::from(Error::unavailable(format!("search index: {error}"))))?;
    medflow_actors::internal_events::emit(medflow_actors::internal_events::SearchServed {
        kind: request.kind.as_str(),
        hits: results.hits.len(),
        elapsed: started.elapsed(),
    });
    let (action, object_type) = match request.kind {
        Kind::Patient => ("patient.search", "patient"),
        Kind::Document => ("document.search", "document"),
    };
    if !results.hits.is_empty() {
        crate::reads::record_batch(
            state,
            caller,
            action,
            object_type,
            results.hits.iter().map(|hit| hit.id),
        )
        .await?;
    }
    Ok(results)
}
