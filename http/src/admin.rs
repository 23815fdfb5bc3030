//! The administrators' endpoints under `/api/v1/admin/`: the audit log's verification and
//! inclusion proofs, the CDC pipeline's state, the consumer groups and their dead letters.
//! (The audit listing `/api/v1/audit` is in [`crate::audit`].)

use chrono::{DateTime, Utc};
use medflow_actors::Error;
use medflow_actors::bus::KafkaSettings;
use medflow_actors::consume::dlq::{self, DlqDepth, ReplayReport};
use medflow_actors::consume::{ConsumerSnapshot, Consumers};
use medflow_actors::store::{AuditProblem, AuditReport, InclusionProof, ProofError, TreeHead};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::extract::Query;
use crate::policy::{Action, Target};
use crate::problem::Problem;
use crate::{AppState, json_reply, outcome};

/// Consumer groups and the broker their retry paths live on.
#[derive(Clone, Default)]
pub struct ConsumerAdmin {
    pub consumers: Consumers,
    pub kafka: Option<KafkaSettings>,
}

/// A head of the audit tree: its size and root, signed when a signing key is configured.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TreeHeadView {
    pub tree_size: i64,
    /// Hex SHA-256 root (RFC 9162 Merkle tree hash).
    pub root_hash: String,
    pub sealed_at: DateTime<Utc>,
    /// First 8 bytes of SHA-256 of the signing public key, hex.
    pub key_id: Option<String>,
    /// Base64 Ed25519 signature over "medflow audit tree head v1\\0" ‖ size (u64 BE) ‖
    /// sealedAt (µs since the epoch, i64 BE) ‖ root.
    pub signature: Option<String>,
}

impl From<TreeHead> for TreeHeadView {
    fn from(head: TreeHead) -> Self {
        Self {
            tree_size: head.tree_size,
            root_hash: head.root_hash,
            sealed_at: head.sealed_at,
            key_id: head.key_id,
            signature: head.signature,
        }
    }
}

/// The first problem a verification found.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditProblemView {
    /// The audit entry concerned, when one can be named.
    pub entry_id: Option<i64>,
    /// The leaf concerned, when one can be named.
    pub leaf_index: Option<i64>,
    pub reason: String,
}

impl From<AuditProblem> for AuditProblemView {
    fn from(problem: AuditProblem) -> Self {
        Self {
            entry_id: problem.entry_id,
            leaf_index: problem.leaf_index,
            reason: problem.reason,
        }
    }
}

/// The result of verifying the audit log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditReportView {
    /// Every leaf checked matches its entry as committed, every head its leaves (and its
    /// signature), and every unsealed entry its stamp.
    pub valid: bool,
    /// The leaf this verification started from (the last verified head; 0 with `full`).
    pub verified_from: i64,
    pub leaves_checked: u64,
    pub heads_checked: u64,
    /// The newest verified head (absent while nothing is sealed).
    pub head: Option<TreeHeadView>,
    /// Whether heads carry signatures and they were checked.
    pub signed: bool,
    /// Hex Ed25519 public key of the heads' signatures.
    pub public_key: Option<String>,
    /// Committed entries not sealed yet (at most 10,000 are examined).
    pub unsealed_rows: u64,
    /// Seconds since the oldest unsealed entry was written.
    pub sealing_lag_seconds: f64,
    /// The first problem found; absent when valid.
    pub problem: Option<AuditProblemView>,
}

impl From<AuditReport> for AuditReportView {
    fn from(report: AuditReport) -> Self {
        Self {
            valid: report.valid,
            verified_from: report.verified_from,
            leaves_checked: report.leaves_checked,
            heads_checked: report.heads_checked,
            head: report.head.map(TreeHeadView::from),
            signed: report.signed,
            public_key: report.public_key,
            unsealed_rows: report.unsealed_rows,
            sealing_lag_seconds: report.sealing_lag_seconds,
            problem: report.problem.map(AuditProblemView::from),
        }
    }
}

/// An entry's inclusion proof in the newest tree head (RFC 9162 §2.1.3).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProofView {
    pub entry_id: i64,
    pub leaf_index: i64,
    /// Hex SHA-256 of the entry's canonical content.
    pub content_hash: String,
    /// Hex SHA-256(0x00 ‖ leafIndex as u64 BE ‖ contentHash).
    pub leaf_hash: String,
    pub head: TreeHeadView,
    /// Hex sibling hashes from the leaf up to the root.
    pub audit_path: Vec<String>,
}

impl From<InclusionProof> for InclusionProofView {
    fn from(proof: InclusionProof) -> Self {
        Self {
            entry_id: proof.entry_id,
            leaf_index: proof.leaf_index,
            content_hash: proof.content_hash,
            leaf_hash: proof.leaf_hash,
            head: proof.head.into(),
            audit_path: proof.audit_path,
        }
    }
}

/// The verification's scope.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct VerifyParams {
    /// Re-verify from the first leaf instead of from the last verified head.
    full: Option<bool>,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let caller = access::caller(&state);
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let verify = warp::path!("api" / "v1" / "admin" / "audit" / "verify")
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(verify_audit(&state, caller, &query).await)
        });
    let proof = warp::path!("api" / "v1" / "admin" / "audit" / "entries" / String / "proof")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .then(|id: String, caller, state: AppState| async move {
            outcome(inclusion_proof(&state, caller, &id).await)
        });
    let cdc = warp::path!("api" / "v1" / "admin" / "cdc")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .then(|caller, state: AppState| async move { outcome(cdc_status(&state, caller).await) });
    let consumers = warp::path!("api" / "v1" / "admin" / "consumers")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .then(
            |caller, state: AppState| async move { outcome(list_consumers(&state, caller).await) },
        );
    let replay = warp::path!("api" / "v1" / "admin" / "dlq" / String / "replay")
        .and(warp::post())
        .and(caller)
        .and(crate::raw_query())
        .and(with_state)
        .then(
            |group: String, caller, query: String, state: AppState| async move {
                outcome(replay_dlq(&state, caller, &group, &query).await)
            },
        );
    verify
        .or(proof)
        .unify()
        .or(cdc)
        .unify()
        .or(consumers)
        .unify()
        .or(replay)
        .unify()
        .boxed()
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

/// Verifies the audit log: the leaves sealed since the last verified head (every leaf with
/// `full=true`) against their entries and the signed heads, and the unsealed tail.
#[utoipa::path(get, path = "/api/v1/admin/audit/verify", tag = "audit", params(VerifyParams),
    responses(
        (status = 200, description = "The verification report (`valid` false names the first problem found)", body = AuditReportView),
        (status = 400, description = "Invalid `full`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_audit(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    caller?.authorize(Action::AuditVerify, Target::Any)?;
    let query = Query::parse(raw_query, &["full"])?;
    let full = query
        .parsed("full", "must be true or false", |raw| {
            raw.parse::<bool>().ok()
        })?
        .unwrap_or(false);
    let key = state
        .audit_signer
        .as_ref()
        .map(|signer| signer.verifying_key());
    let report = state
        .store
        .verify_audit(key.as_ref(), full)
        .await
        .map_err(|error| Error::from_store("audit log", error))?;
    if let Some(problem) = &report.problem {
        tracing::error!(
            entry = problem.entry_id,
            leaf = problem.leaf_index,
            reason = %problem.reason,
            "the audit log does not verify"
        );
    }
    Ok(json_reply(
        StatusCode::OK,
        &AuditReportView::from(report),
        None,
    ))
}

/// Returns an audit entry's inclusion proof in the newest tree head.
#[utoipa::path(get, path = "/api/v1/admin/audit/entries/{id}/proof", tag = "audit",
    params(("id" = i64, Path, minimum = 1, description = "The audit entry's id")),
    responses(
        (status = 200, description = "The proof", body = InclusionProofView),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The entry is not sealed yet: retry in a second", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn inclusion_proof(
    state: &AppState,
    caller: Result<Caller, Problem>,
    id: &str,
) -> Result<Response, Problem> {
    caller?.authorize(Action::AuditVerify, Target::Any)?;
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::invalid_field("id", "must be a positive integer"))?;
    match state.store.audit_inclusion_proof(id).await {
        Ok(proof) => Ok(json_reply(
            StatusCode::OK,
            &InclusionProofView::from(proof),
            None,
        )),
        Err(ProofError::NotFound) => Err(Problem::not_found("audit entry")),
        Err(ProofError::NotSealed) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-sealed",
            "The entry is not sealed yet",
        )
        .detail("the entry is committed but not sealed into the tree yet; retry in a second")),
        Err(ProofError::Store(error)) => Err(Error::from_store("audit log", error).into()),
    }
}

/// One consumer group, with its dead-letter topic's depth.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub state: ConsumerSnapshot,
    /// Dead letters retained and not yet replayed (null when the broker did not answer).
    #[schema(value_type = Option<Object>)]
    pub dlq: Option<DlqDepth>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersView {
    pub groups: Vec<ConsumerView>,
}

/// The consumer groups of this instance: counts, lag, retry stages and dead letters.
#[utoipa::path(get, path = "/api/v1/admin/consumers", tag = "audit",
    responses((status = 200, description = "Consumer groups", body = ConsumersView)))]
pub async fn list_consumers(
    state: &AppState,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    caller?.authorize(Action::ConsumerAdmin, Target::Any)?;
    let mut groups = Vec::new();
    for snapshot in state.consumer_admin.consumers.snapshots() {
        let dlq = match (
            &state.consumer_admin.kafka,
            state.consumer_admin.consumers.stats(&snapshot.group),
        ) {
            (Some(kafka), Some(stats)) => dlq::depth(kafka, &stats.topics).await.ok(),
            _ => None,
        };
        groups.push(ConsumerView {
            state: snapshot,
            dlq,
        });
    }
    Ok(json_reply(StatusCode::OK, &ConsumersView { groups }, None))
}

/// Replays the group's dead letters (at most `limit`, default 1000) to their original
/// topics, where every consumer of those topics handles them again.
#[utoipa::path(post, path = "/api/v1/admin/dlq/{group}/replay", tag = "audit",
    params(("group" = String, Path, description = "The group, e.g. medflow.search-indexer"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100000, description = "Dead letters to replay at most (default 1000)")),
    responses(
        (status = 200, description = "How many were replayed", body = Object),
        (status = 400, description = "`limit` is not a number in 1–100000", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer group here", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_dlq(
    state: &AppState,
    caller: Result<Caller, Problem>,
    group: &str,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    caller.authorize(Action::ConsumerAdmin, Target::Any)?;
    let query = Query::parse(raw_query, &["limit"])?;
    let limit = query
        .parsed("limit", "must be an integer from 1 to 100000", |raw| {
            raw.parse::<u64>()
                .ok()
                .filter(|v| (1..=100_000).contains(v))
        })?
        .unwrap_or(1000);
    let (Some(kafka), Some(stats)) = (
        &state.consumer_admin.kafka,
        state.consumer_admin.consumers.stats(group),
    ) else {
        return Err(Problem::not_found("consumer group"));
    };
    let report: ReplayReport = dlq::replay(kafka, &stats.topics, limit)
        .await
        .map_err(|error| Problem::from(Error::unavailable(format!("dlq replay: {error:#}"))))?;
    tracing::info!(group = %stats.topics.group_id, replayed = report.replayed, subject = %caller.principal.subject, "dead letters replayed");
    Ok(json_reply(StatusCode::OK, &report, None))
}
