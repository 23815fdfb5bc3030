//! `/api/v1/audit`: the audit listing, admin only (verification and proofs are in
//! [`crate::admin`]).

use chrono::{DateTime, Utc};
use medflow_actors::Error;
use medflow_actors::store::{AuditFilter, AuditRecord};
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
use crate::{AppState, Page, json_reply, outcome};

const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

/// One audit entry.
#[derive(Debug, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "AuditEntry", complex)]
pub struct AuditEntryView {
    /// The entry's id (ascending in write order).
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    /// The token subject who acted.
    pub actor_id: String,
    /// What was done, e.g. `patient.update`.
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    #[graphql(skip)]
    pub details: serde_json::Value,
    /// SHA-256 of the entry's canonical content, stamped when it was written (hex).
    pub content_hash: String,
    /// Its position in the sealed Merkle tree; null until it is sealed (about a second).
    pub leaf_index: Option<i64>,
}

impl From<AuditRecord> for AuditEntryView {
    fn from(record: AuditRecord) -> Self {
        Self {
            id: record.id,
            occurred_at: record.occurred_at,
            actor_id: record.actor_id,
            action: record.action,
            object_type: record.object_type,
            object_id: record.object_id,
            client_addr: record.client_addr,
            request_id: record.request_id,
            details: record.details,
            content_hash: record.content_hash,
            leaf_index: record.leaf_index,
        }
    }
}

/// Filters and pagination of the audit listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct AuditListParams {
    /// Only entries about this object.
    object_id: Option<Uuid>,
    /// Only entries by this token subject.
    #[param(min_length = 1, max_length = 128)]
    actor_id: Option<String>,
    /// Skip this many entries (default 0).
    #[param(minimum = 0, maximum = 1000000000)]
    offset: Option<i64>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let caller = access::caller(&state);
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let list = warp::path!("api" / "v1" / "audit")
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(list_audit(&state, caller, &query).await)
        });
    list.boxed()
}

/// Lists audit entries, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditListParams),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditEntryView>),
        (status = 400, description = "Invalid filter or pagination", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    caller?.authorize(Action::AuditList, Target::Any)?;
    let query = Query::parse(raw_query, &["objectId", "actorId", "offset", "limit"])?;
    let (offset, limit) = query.pagination(DEFAULT_PAGE, MAX_PAGE)?;
    let object_id = query.uuid("objectId")?;
    let actor_id = query.parsed("actorId", "must be 1–128 characters", |raw| {
        (!raw.is_empty() && raw.chars().count() <= 128).then(|| raw.to_owned())
    })?;
    let filter = AuditFilter {
        object_id,
        actor_id,
        offset,
        limit,
    };
    let page = state
        .store
        .list_audit(&filter)
        .await
        .map_err(|error| Error::from_store("audit entry", error))?;
    let body = Page::new(
        page.items.into_iter().map(AuditEntryView::from).collect(),
        offset,
        limit,
        page.total,
    );
    Ok(json_reply(StatusCode::OK, &body, None))
}
