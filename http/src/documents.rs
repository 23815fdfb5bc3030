//! `/api/v1/documents`: drafts, their version history, signing and registry outcomes.

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use medflow_actors::domain::{
    Document, DocumentFields, DocumentStatus, DocumentType, DraftEdit, NewDocument,
    RegistryOutcome, SignatureInput,
};
use medflow_actors::store::{DocumentFilter, DocumentSummary, DocumentVersion};
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

/// What signing recorded.
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "Signature")]
pub struct SignatureView {
    pub signer_id: Uuid,
    pub signed_at: DateTime<Utc>,
    pub certificate_thumbprint: String,
    /// SHA-256 (hex) of the canonical content the signature covers.
    pub checksum: String,
    /// The detached signature, base64.
    pub signature: String,
}

/// A document with its current content.
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "Document", complex)]
pub struct DocumentView {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    #[schema(example = "consultation")]
    pub doc_type: String,
    pub title: String,
    pub body: String,
    /// The number of the current content version.
    pub content_version: i32,
    /// `draft`, `signed`, `sent`, `accepted` or `rejected`.
    pub status: String,
    pub signature: Option<SignatureView>,
    pub registry_id: Option<String>,
    pub registry_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Document> for DocumentView {
    fn from(d: &Document) -> Self {
        Self {
            id: d.id,
            patient_id: d.patient_id,
            appointment_id: d.appointment_id,
            author_id: d.author_id,
            doc_type: d.doc_type.as_str().to_owned(),
            title: d.title.clone(),
            body: d.body.to_string(),
            content_version: d.content_version,
            status: d.status.as_str().to_owned(),
            signature: d.signature.as_ref().map(|s| SignatureView {
                signer_id: s.signer_id,
                signed_at: s.signed_at,
                certificate_thumbprint: s.certificate_thumbprint.clone(),
                checksum: hex::encode(s.checksum),
                signature: base64::engine::general_purpose::STANDARD.encode(&s.signature),
            }),
            registry_id: d.registry_id.clone(),
            registry_reason: d.registry_reason.clone(),
            version: d.version,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A document in a list (without its body).
#[derive(Debug, Clone, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "DocumentSummary", complex)]
pub struct DocumentSummaryView {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub doc_type: String,
    pub title: String,
    pub content_version: i32,
    pub status: String,
    pub signed_by: Option<Uuid>,
    pub signed_at: Option<DateTime<Utc>>,
    pub registry_id: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&DocumentSummary> for DocumentSummaryView {
    fn from(d: &DocumentSummary) -> Self {
        Self {
            id: d.id,
            patient_id: d.patient_id,
            appointment_id: d.appointment_id,
            author_id: d.author_id,
            doc_type: d.doc_type.as_str().to_owned(),
            title: d.title.clone(),
            content_version: d.content_version,
            status: d.status.as_str().to_owned(),
            signed_by: d.signed_by,
            signed_at: d.signed_at,
            registry_id: d.registry_id.clone(),
            version: d.version,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// One content version of a document.
#[derive(Debug, Serialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "DocumentVersion")]
pub struct DocumentVersionView {
    pub content_version: i32,
    pub title: String,
    /// Present when one version is read, absent in the history list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub body_bytes: i32,
    /// The token subject who wrote this version.
    pub edited_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<DocumentVersion> for DocumentVersionView {
    fn from(v: DocumentVersion) -> Self {
        Self {
            content_version: v.content_version,
            title: v.title,
            body: v.body,
            body_bytes: v.body_bytes,
            edited_by: v.edited_by,
            created_at: v.created_at,
        }
    }
}

/// The version history, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentHistory {
    pub items: Vec<DocumentVersionView>,
}

/// A new draft.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentInput {
    pub patient_id: Uuid,
    #[serde(default)]
    pub appointment_id: Option<Uuid>,
    /// A doctor.
    pub author_id: Uuid,
    #[serde(rename = "type")]
    #[schema(schema_with = crate::contract::document_type, example = "consultation")]
    pub doc_type: String,
    #[schema(schema_with = crate::contract::title)]
    pub title: String,
    #[schema(schema_with = crate::contract::body)]
    pub body: String,
}

/// An edit of a draft: a new content version with the given fields replaced.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentEditInput {
    #[serde(default)]
    #[schema(schema_with = crate::contract::title, required = false)]
    pub title: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::contract::body, required = false)]
    pub body: Option<String>,
}

/// A detached signature of the document's canonical content.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInput {
    /// The signing doctor: must be the token's subject.
    pub signer_id: Uuid,
    /// The detached signature bytes, base64 (up to 64 KiB).
    #[schema(schema_with = crate::contract::signature)]
    pub signature: String,
    /// SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint of the signing certificate.
    #[schema(schema_with = crate::contract::thumbprint)]
    pub certificate_thumbprint: String,
}

/// What the federal registry said (its schema: `contract::registry_input`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryInput {
    /// `sent`, `accepted` (with `registryId`) or `rejected` (with `reason`).
    pub outcome: String,
    #[serde(default)]
    pub registry_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl utoipa::PartialSchema for RegistryInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::registry_input()
    }
}

impl ToSchema for RegistryInput {}

/// Filters and pagination of the document list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct DocumentListParams {
    patient_id: Option<Uuid>,
    author_id: Option<Uuid>,
    #[serde(rename = "type")]
    #[param(rename = "type", schema_with = crate::contract::document_type)]
    doc_type: Option<String>,
    #[param(schema_with = crate::contract::document_status)]
    status: Option<String>,
    /// Created at or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Skip this many documents (default 0).
    #[param(minimum = 0, maximum = 1000000000)]
    offset: Option<i64>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

fn document_reply(status: StatusCode, document: &Document) -> Response {
    json_reply(
        status,
        &DocumentView::from(document),
        Some(document.version),
    )
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body = extract::body(state.limits.body_limit_bytes);
    let caller = access::caller(&state);
    let with_state = warp::any().map(move || state.clone());
    let collection = warp::path!("api" / "v1" / "documents");
    let item = warp::path!("api" / "v1" / "documents" / String);

    let list = collection
        .and(warp::get())
        .and(caller.clone())
        .and(crate::raw_query())
        .and(with_state.clone())
        .then(|caller, query: String, state: AppState| async move {
            outcome(list_documents(&state, caller, &query).await)
        });
    let create = collection
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(|caller, headers, body, state: AppState| async move {
            outcome(create_document(&state, caller, &headers, body).await)
        });
    let get = item
        .and(warp::get())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(|id: String, caller, headers, state: AppState| async move {
            outcome(get_document(&state, &id, caller, &headers).await)
        });
    let edit = item
        .and(warp::patch())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(edit_document(&state, &id, caller, &headers, body).await)
            },
        );
    let versions = warp::path!("api" / "v1" / "documents" / String / "versions")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .then(|id: String, caller, state: AppState| async move {
            outcome(list_document_versions(&state, &id, caller).await)
        });
    let version = warp::path!("api" / "v1" / "documents" / String / "versions" / String)
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .then(
            |id: String, n: String, caller, state: AppState| async move {
                outcome(get_document_version(&state, &id, &n, caller).await)
            },
        );
    let sign = warp::path!("api" / "v1" / "documents" / String / "sign")
        .and(warp::post())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(body.clone())
        .and(with_state.clone())
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(sign_document(&state, &id, caller, &headers, body).await)
            },
        );
    let registry = warp::path!("api" / "v1" / "documents" / String / "registry")
        .and(warp::post())
        .and(caller)
        .and(warp::header::headers_cloned())
        .and(body)
        .and(with_state)
        .then(
            |id: String, caller, headers, body, state: AppState| async move {
                outcome(record_registry_outcome(&state, &id, caller, &headers, body).await)
            },
        );
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(edit)
        .unify()
        .or(versions)
        .unify()
        .or(version)
        .unify()
        .or(sign)
        .unify()
        .or(registry)
        .unify()
        .boxed()
}

/// Lists documents (without bodies), newest first. A `patient` token must filter by its own
/// `patientId`.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(DocumentListParams),
    responses(
        (status = 200, description = "A page of documents", body = Page<DocumentSummaryView>),
        (status = 400, description = "Invalid filter or pagination", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_documents(
    state: &AppState,
    caller: Result<Caller, Problem>,
    raw_query: &str,
) -> Result<Response, Problem> {
    let caller = caller?;
    let query = Query::parse(
        raw_query,
        &[
            "patientId",
            "authorId",
            "type",
            "status",
            "from",
            "to",
            "offset",
            "limit",
        ],
    )?;
    let (offset, limit) = query.pagination(DEFAULT_PAGE, MAX_PAGE)?;
    let types = DocumentType::names().join(", ");
    let filter = DocumentFilter {
        oldest_first: false,
        patient_id: query.uuid("patientId")?,
        author_id: query.uuid("authorId")?,
        doc_type: query.parsed(
            "type",
            &format!("must be one of {types}"),
            DocumentType::parse,
        )?,
        status: query.parsed(
            "status",
            "must be draft, signed, sent, accepted or rejected",
            DocumentStatus::parse,
        )?,
        from: query.time("from")?,
        to: query.time("to")?,
        offset,
        limit,
    };
    let page = crate::reads::documents(state, &caller, &filter).await?;
    let body = Page::new(
        page.items.iter().map(DocumentSummaryView::from).collect(),
        offset,
        limit,
        page.total,
    );
    Ok(json_reply(StatusCode::OK, &body, None))
}

/// Creates a draft (content version 1).
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", request_body = DocumentInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` are set", body = DocumentView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown or archived patient, unknown author, or another patient's appointment", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_document(
    state: &AppState,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    caller.authorize(Action::DocumentCreate, Target::Any)?;
    let body = body?;
    let input: DocumentInput = json_body(headers, &body)?;
    let draft = NewDocument::parse(DocumentFields {
        patient_id: input.patient_id,
        appointment_id: input.appointment_id,
        author_id: input.author_id,
        doc_type: input.doc_type,
        title: input.title,
        body: input.body,
    })
    .map_err(Problem::validation)?;
    let document = state.documents.create(&draft, &caller.ctx).await?;
    let mut response = document_reply(StatusCode::CREATED, &document);
    crate::set_location(&mut response, &format!("/api/v1/documents/{}", document.id));
    Ok(response)
}

/// Reads a document with its current content and signature.
#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "documents",
    params(("id" = Uuid, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document; `ETag` carries the version", body = DocumentView),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_document(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let document = crate::reads::document(state, &caller, id).await?;
    if if_none_match_hits(headers, document.version) {
        return Ok(not_modified(&etag(document.version)));
    }
    Ok(document_reply(StatusCode::OK, &document))
}

/// Edits a draft: a new content version. A signed document is immutable (409).
#[utoipa::path(patch, path = "/api/v1/documents/{id}", tag = "documents", request_body = DocumentEditInput,
    params(("id" = Uuid, Path, description = "Document id"),
           ("If-Match" = Option<String>, Header, description = "The ETag last read; a stale one answers 412")),
    responses(
        (status = 200, description = "The document with its new content version", body = DocumentView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The document is signed (`currentStatus`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn edit_document(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    caller.authorize(Action::DocumentUpdate, Target::Any)?;
    let expected = if_match(headers)?;
    let input: DocumentEditInput = json_body(headers, &body?)?;
    let edit = DraftEdit::parse(input.title, input.body).map_err(Problem::validation)?;
    let document = state
        .documents
        .edit(id, edit, expected, &caller.ctx)
        .await?;
    Ok(document_reply(StatusCode::OK, &document))
}

/// Lists a document's content versions, oldest first (without bodies).
#[utoipa::path(get, path = "/api/v1/documents/{id}/versions", tag = "documents",
    params(("id" = Uuid, Path, description = "Document id")),
    responses(
        (status = 200, description = "Every content version", body = DocumentHistory),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_document_versions(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let versions = crate::reads::document_versions(state, &caller, id).await?;
    let body = DocumentHistory {
        items: versions
            .into_iter()
            .map(DocumentVersionView::from)
            .collect(),
    };
    Ok(json_reply(StatusCode::OK, &body, None))
}

/// Reads content version `n` of a document.
#[utoipa::path(get, path = "/api/v1/documents/{id}/versions/{n}", tag = "documents",
    params(("id" = Uuid, Path, description = "Document id"),
           ("n" = i32, Path, minimum = 1, description = "Content version, from 1")),
    responses(
        (status = 200, description = "The version with its body", body = DocumentVersionView),
        (status = 400, description = "Bad id or version number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document or version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_document_version(
    state: &AppState,
    id: &str,
    n: &str,
    caller: Result<Caller, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    let n = n
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Problem::invalid_field("n", "must be an integer ≥ 1"))?;
    let version = crate::reads::document_version(state, &caller, id, n).await?;
    Ok(json_reply(
        StatusCode::OK,
        &DocumentVersionView::from(version),
        None,
    ))
}

/// Signs a draft as the calling doctor: stores the signature, the signer, the time and the
/// SHA-256 of the canonical content; the document becomes immutable.
#[utoipa::path(post, path = "/api/v1/documents/{id}/sign", tag = "documents", request_body = SignInput,
    params(("id" = Uuid, Path, description = "Document id"),
           ("If-Match" = Option<String>, Header, description = "The ETag of the content being signed; a stale one answers 412")),
    responses(
        (status = 200, description = "Signed", body = DocumentView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed signature or thumbprint", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a draft (`currentStatus`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The signer is not a doctor, or the verifier refused the signature", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sign_document(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    caller.authorize(Action::DocumentSign, Target::Any)?;
    let expected = if_match(headers)?;
    let input: SignInput = json_body(headers, &body?)?;
    if caller.principal.subject != input.signer_id.to_string() {
        return Err(Problem::forbidden("sign on behalf of another doctor"));
    }
    let signature = SignatureInput::parse(
        input.signer_id,
        &input.signature,
        &input.certificate_thumbprint,
    )
    .map_err(Problem::validation)?;
    let document = state
        .documents
        .sign(id, signature, expected, &caller.ctx)
        .await?;
    Ok(document_reply(StatusCode::OK, &document))
}

/// Records what the federal registry said: `sent`, `accepted` (with `registryId`) or
/// `rejected` (with `reason`); a rejected document may be sent again.
#[utoipa::path(post, path = "/api/v1/documents/{id}/registry", tag = "documents", request_body = RegistryInput,
    params(("id" = Uuid, Path, description = "Document id")),
    responses(
        (status = 200, description = "Recorded", body = DocumentView),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Invalid outcome", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the current status (`currentStatus`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn record_registry_outcome(
    state: &AppState,
    id: &str,
    caller: Result<Caller, Problem>,
    headers: &HeaderMap,
    body: Result<Bytes, Problem>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let id = parse_id(id)?;
    caller.authorize(Action::DocumentRegistryOutcome, Target::Any)?;
    let input: RegistryInput = json_body(headers, &body?)?;
    let outcome = RegistryOutcome::parse(
        &input.outcome,
        input.registry_id.as_deref(),
        input.reason.as_deref(),
    )
    .map_err(Problem::validation)?;
    let document = state
        .documents
        .record_registry_outcome(id, outcome, &caller.ctx)
        .await?;
    Ok(document_reply(StatusCode::OK, &document))
}
