//! `/api/v1/audit` (listing) and `/api/v1/admin/audit/verify` (hash-chain check), admin only.

use chrono::{DateTime, Utc};
use medflow_actors::Error;
use medflow_actors::store::{AuditFilter, AuditRecord, ChainReport};
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
    /// Position in the hash chain.
    pub seq: i64,
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
    /// SHA-256 of this entry and its predecessor's hash, hex.
    pub hash: String,
}

impl From<AuditRecord> for AuditEntryView {
    fn from(record: AuditRecord) -> Self {
        Self {
            seq: record.seq,
            occurred_at: record.occurred_at,
            actor_id: record.actor_id,
            action: record.action,
            object_type: record.object_type,
            object_id: record.object_id,
            client_addr: record.client_addr,
            request_id: record.request_id,
            details: record.details,
            hash: record.hash,
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
    actor_id: Option<String>,
    /// Skip this many entries (≥ 0, default 0).
    offset: Option<i64>,
    /// Page size (1–100, default 20).
    limit: Option<i64>,
}

/// The result of walking the audit hash chain.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainReportView {
    /// Every row matches its hash and links to its predecessor.
    pub valid: bool,
    pub rows_checked: u64,
    /// The last intact row; record it outside the database to detect a truncated tail.
    pub head_seq: i64,
    pub head_hash: String,
    /// The first row that does not verify.
    pub broken_at_seq: Option<i64>,
    pub reason: Option<String>,
}

impl From<ChainReport> for ChainReportView {
    fn from(report: ChainReport) -> Self {
        Self {
            valid: report.valid,
            rows_checked: report.rows_checked,
            head_seq: report.head_seq,
            head_hash: report.head_hash,
            broken_at_seq: report.broken_at_seq,
            reason: report.reason,
        }
    }
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
    let verify = warp::path!("api" / "v1" / "admin" / "audit" / "verify")
        .and(warp::get())
        .and(caller)
        .and(with_state)
        .then(|caller, state: AppState| async move { outcome(verify_audit(&state, caller).await) });
    let cdc = warp::path!("api" / "v1" / "admin" / "cdc")
        .and(warp::get())
        .and(access::caller(&state))
        .and(warp::any().map(move || state.clone()))
        .then(|caller, state: AppState| async move { outcome(cdc_status(&state, caller).await) });
    list.or(verify).unify().or(cdc).unify().boxed()
}

/// The CDC pipeline's state and its slot's position.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdcStatusView {
    /// Whether this process runs the pipeline (`cdc.enabled`).
    pub enabled: bool,
    /// stopped, starting, snapshotting, streaming, standby or restarting.
    pub state: String,
    pub slot: Option<String>,
    /// Whether some process streams from the slot now.
    pub slot_active: Option<bool>,
    /// Confirmed to PostgreSQL: everything before it is in Kafka.
    pub confirmed_lsn: Option<String>,
    /// WAL bytes written since the confirmed LSN.
    pub lag_bytes: Option<i64>,
    /// Commit-to-acknowledgement delay of the last published transaction.
    pub lag_ms: Option<i64>,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// Reports the CDC pipeline's state, its slot and its lag.
#[utoipa::path(get, path = "/api/v1/admin/cdc", tag = "audit",
    responses((status = 200, description = "The pipeline's state", body = CdcStatusView)))]
pub async fn cdc_status(
    state: &AppState,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    caller?.authorize(Action::CdcStatus, Target::Any)?;
    let Some(cdc) = &state.cdc else {
        let view = CdcStatusView {
            enabled: false,
            state: "stopped".into(),
            slot: None,
            slot_active: None,
            confirmed_lsn: None,
            lag_bytes: None,
            lag_ms: None,
            restarts: 0,
            last_error: None,
        };
        return Ok(json_reply(StatusCode::OK, &view, None));
    };
    let status = cdc.get();
    let slot = state
        .store
        .slot_lag(&status.slot)
        .await
        .map_err(|error| Error::from_store("replication slot", error))?;
    if let Some(lag) = slot.as_ref().and_then(|slot| slot.lag_bytes) {
        metrics::gauge!("medflow_cdc_lag_bytes").set(lag as f64);
    }
    let view = CdcStatusView {
        enabled: true,
        state: serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        slot: Some(status.slot.clone()),
        slot_active: slot.as_ref().map(|slot| slot.active),
        confirmed_lsn: slot
            .as_ref()
            .and_then(|slot| slot.confirmed_lsn.clone())
            .or(status.confirmed_lsn),
        lag_bytes: slot.and_then(|slot| slot.lag_bytes),
        lag_ms: status.lag_ms,
        restarts: status.restarts,
        last_error: status.last_error,
    };
    Ok(json_reply(StatusCode::OK, &view, None))
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
        (!raw.is_empty() && raw.len() <= 128).then(|| raw.to_owned())
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

/// Walks the whole audit hash chain and reports the first entry that does not verify.
#[utoipa::path(get, path = "/api/v1/admin/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The verification report (`valid` false names the first broken entry)", body = ChainReportView),
    ))]
pub async fn verify_audit(
    state: &AppState,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    caller?.authorize(Action::AuditVerify, Target::Any)?;
    let report = state
        .store
        .verify_audit_chain()
        .await
        .map_err(|error| Error::from_store("audit log", error))?;
    if !report.valid {
        tracing::error!(
            broken_at_seq = report.broken_at_seq,
            reason = report.reason.as_deref().unwrap_or(""),
            "the audit hash chain is broken"
        );
    }
    Ok(json_reply(
        StatusCode::OK,
        &ChainReportView::from(report),
        None,
    ))
}
