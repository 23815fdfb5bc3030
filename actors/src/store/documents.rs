//! Document rows: drafts with their version history, signing, registry outcomes, listing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    ChangeRecord, Direction, Listing, Page, PgStore, StoreError, StoreResult,
    ensure_active_patient, record_change, reordered,
};
use crate::context::RequestContext;
use crate::domain::{
    Document, DocumentEvent, DocumentStatus, DocumentType, NewDocument, RegistryOutcome,
    SignatureInput, SignatureRecord,
};

const KIND: &str = "document";

/// Which documents a list returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct DocumentFilter {
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    pub doc_type: Option<DocumentType>,
    pub status: Option<DocumentStatus>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// By creation time; the default lists the newest first.
    pub oldest_first: bool,
    pub offset: i64,
    pub limit: i64,
}

/// A document without its body, as lists show it.
#[derive(Debug, Clone)]
pub struct DocumentSummary {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    pub doc_type: DocumentType,
    pub title: String,
    pub content_version: i32,
    pub status: DocumentStatus,
    pub signed_by: Option<Uuid>,
    pub signed_at: Option<DateTime<Utc>>,
    pub registry_id: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One content version of a document.
#[derive(Debug, Clone)]
pub struct DocumentVersion {
    pub content_version: i32,
    pub title: String,
    /// `None` in listings of the history.
    pub body: Option<String>,
    pub body_bytes: i32,
    pub edited_by: String,
    pub created_at: DateTime<Utc>,
}

fn corrupt(column: &str) -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("documents.{column} holds an unknown value"))
}

fn document_from_row(row: &Row) -> StoreResult<Document> {
    let signature = match (
        row.get::<_, Option<Uuid>>("signed_by"),
        row.get::<_, Option<DateTime<Utc>>>("signed_at"),
        row.get::<_, Option<Vec<u8>>>("signature"),
        row.get::<_, Option<Vec<u8>>>("checksum"),
    ) {
        (Some(signer_id), Some(signed_at), Some(signature), Some(checksum)) => {
            Some(SignatureRecord {
                signer_id,
                signed_at,
                signature,
                certificate_thumbprint: row
                    .get::<_, Option<String>>("certificate_thumbprint")
                    .unwrap_or_default(),
                checksum: checksum.try_into().map_err(|_| corrupt("checksum"))?,
            })
        }
        _ => None,
    };
    Ok(Document {
        id: row.get("id"),
        patient_id: row.get("patient_id"),
        appointment_id: row.get("appointment_id"),
        author_id: row.get("author_id"),
        doc_type: DocumentType::parse(row.get("doc_type")).ok_or_else(|| corrupt("doc_type"))?,
        title: row.get("title"),
        body: Arc::from(row.get::<_, &str>("body")),
        content_version: row.get("content_version"),
        status: DocumentStatus::parse(row.get("status")).ok_or_else(|| corrupt("status"))?,
        signature,
        registry_id: row.get("registry_id"),
        registry_reason: row.get("registry_reason"),
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

pub(super) fn summary_from_row(row: &Row) -> StoreResult<DocumentSummary> {
    Ok(DocumentSummary {
        id: row.get("id"),
        patient_id: row.get("patient_id"),
        appointment_id: row.get("appointment_id"),
        author_id: row.get("author_id"),
        doc_type: DocumentType::parse(row.get("doc_type")).ok_or_else(|| corrupt("doc_type"))?,
        title: row.get("title"),
        content_version: row.get("content_version"),
        status: DocumentStatus::parse(row.get("status")).ok_or_else(|| corrupt("status"))?,
        signed_by: row.get("signed_by"),
        signed_at: row.get("signed_at"),
        registry_id: row.get("registry_id"),
        version: row.get("version"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn version_from_row(row: &Row, with_body: bool) -> DocumentVersion {
    DocumentVersion {
        content_version: row.get("content_version"),
        title: row.get("title"),
        body: with_body.then(|| row.get("body")),
        body_bytes: row.get("body_bytes"),
        edited_by: row.get("edited_by"),
        created_at: row.get("created_at"),
    }
}

async fn record_document_event(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &RequestContext,
    document: &Document,
    event: &DocumentEvent,
) -> StoreResult<()> {
    record_change(
        tx,
        ctx,
        ChangeRecord {
            aggregate_type: KIND,
            aggregate_id: document.id,
            patient_id: document.patient_id,
            event_type: event.event_type(),
            audit_action: event.audit_action(),
            version: document.version,
            payload: event.payload(document),
        },
    )
    .await
}

async fn insert_version(
    tx: &deadpool_postgres::Transaction<'_>,
    document: &Document,
    ctx: &RequestContext,
) -> StoreResult<()> {
    let statement = tx
        .prepare_cached(include_str!("sql/document_version_insert.sql"))
        .await?;
    tx.execute(
        &statement,
        &[
            &document.id,
            &document.content_version,
            &document.title,
            &&*document.body,
            &ctx.actor_id,
        ],
    )
    .await?;
    Ok(())
}

impl PgStore {
    /// Creates a draft (content version 1). The patient must exist and not be archived,
    /// the author must be a doctor, and an appointment, if named, must be the patient's.
    pub async fn insert_document(
        &self,
        id: Uuid,
        draft: &NewDocument,
        ctx: &RequestContext,
    ) -> StoreResult<Document> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        ensure_active_patient(&tx, draft.patient_id, "the patient is archived").await?;
        if let Some(appointment_id) = draft.appointment_id {
            let statement = tx
                .prepare_cached(include_str!("sql/appointment_patient.sql"))
                .await?;
            let owner = tx.query_opt(&statement, &[&appointment_id]).await?;
            match owner.map(|row| row.get::<_, Uuid>(0)) {
                None => {
                    return Err(StoreError::Unprocessable {
                        field: "appointmentId",
                        message: "no such appointment",
                    });
                }
                Some(patient_id) if patient_id != draft.patient_id => {
                    return Err(StoreError::Unprocessable {
                        field: "appointmentId",
                        message: "the appointment is another patient's",
                    });
                }
                Some(_) => {}
            }
        }
        let insert = tx
            .prepare_cached(include_str!("sql/document_insert.sql"))
            .await?;
        let row = tx
            .query_one(
                &insert,
                &[
                    &id,
                    &draft.patient_id,
                    &draft.appointment_id,
                    &draft.author_id,
                    &draft.doc_type.as_str(),
                    &draft.title,
                    &draft.body,
                ],
            )
            .await
            .map_err(|error| match StoreError::from(error) {
                StoreError::Unprocessable {
                    field: "authorId", ..
                } => StoreError::Unprocessable {
                    field: "authorId",
                    message: "no such doctor",
                },
                other => other,
            })?;
        let document = document_from_row(&row)?;
        insert_version(&tx, &document, ctx).await?;
        record_document_event(&tx, ctx, &document, &DocumentEvent::Created).await?;
        tx.commit().await?;
        Ok(document)
    }

    pub async fn load_document(&self, id: Uuid) -> StoreResult<Option<Document>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/document_select.sql"))
            .await?;
        client
            .query_opt(&statement, &[&id])
            .await?
            .as_ref()
            .map(document_from_row)
            .transpose()
    }

    /// Stores a new content version of a draft.
    pub async fn edit_document(
        &self,
        current: &Document,
        title: &str,
        body: &str,
        event: &DocumentEvent,
        ctx: &RequestContext,
    ) -> StoreResult<Document> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/document_edit.sql"))
            .await?;
        let row = tx
            .query_opt(&statement, &[&current.id, &current.version, &title, &body])
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let document = document_from_row(&row)?;
        insert_version(&tx, &document, ctx).await?;
        record_document_event(&tx, ctx, &document, event).await?;
        tx.commit().await?;
        Ok(document)
    }

    /// Signs a draft: stores signer, time, signature and checksum; the row becomes
    /// immutable.
    pub async fn sign_document(
        &self,
        current: &Document,
        signature: &SignatureInput,
        checksum: &[u8; 32],
        ctx: &RequestContext,
    ) -> StoreResult<Document> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/document_sign.sql"))
            .await?;
        let row = tx
            .query_opt(
                &statement,
                &[
                    &current.id,
                    &current.version,
                    &signature.signer_id,
                    &signature.signature,
                    &signature.certificate_thumbprint,
                    &checksum.as_slice(),
                ],
            )
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let document = document_from_row(&row)?;
        record_document_event(&tx, ctx, &document, &DocumentEvent::Signed).await?;
        tx.commit().await?;
        Ok(document)
    }

    /// Records what the registry said.
    pub async fn record_registry_outcome(
        &self,
        current: &Document,
        outcome: &RegistryOutcome,
        next_status: DocumentStatus,
        ctx: &RequestContext,
    ) -> StoreResult<Document> {
        let (registry_id, reason, event) = match outcome {
            RegistryOutcome::Sent => (None, None, DocumentEvent::RegistrySent),
            RegistryOutcome::Accepted { registry_id } => (
                Some(registry_id.as_str()),
                None,
                DocumentEvent::RegistryAccepted,
            ),
            RegistryOutcome::Rejected { reason } => {
                (None, Some(reason.as_str()), DocumentEvent::RegistryRejected)
            }
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(include_str!("sql/document_registry.sql"))
            .await?;
        let row = tx
            .query_opt(
                &statement,
                &[
                    &current.id,
                    &current.version,
                    &next_status.as_str(),
                    &registry_id,
                    &reason,
                ],
            )
            .await?
            .ok_or(StoreError::VersionConflict)?;
        let document = document_from_row(&row)?;
        record_document_event(&tx, ctx, &document, &event).await?;
        tx.commit().await?;
        Ok(document)
    }

    pub async fn list_documents(
        &self,
        filter: &DocumentFilter,
    ) -> StoreResult<Page<DocumentSummary>> {
        let doc_type = filter.doc_type.map(DocumentType::as_str);
        let status = filter.status.map(DocumentStatus::as_str);
        let listing = Listing {
            page_sql: if filter.oldest_first {
                reordered(
                    include_str!("sql/document_list.sql"),
                    "created_at DESC, id",
                    &["created_at", "id"],
                    Direction::Ascending,
                )
            } else {
                include_str!("sql/document_list.sql").into()
            },
            count_sql: include_str!("sql/document_count.sql"),
        };
        self.query_page(
            listing,
            &[
                &filter.patient_id,
                &filter.author_id,
                &doc_type,
                &status,
                &filter.from,
                &filter.to,
            ],
            filter.offset,
            filter.limit,
            summary_from_row,
        )
        .await
    }

    /// Returns every content version of a document, oldest first, without bodies.
    pub async fn document_versions(&self, id: Uuid) -> StoreResult<Vec<DocumentVersion>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/document_versions.sql"))
            .await?;
        let rows = client.query(&statement, &[&id]).await?;
        Ok(rows
            .iter()
            .map(|row| version_from_row(row, false))
            .collect())
    }

    /// Returns content version `n` of a document, with its body.
    pub async fn document_version(&self, id: Uuid, n: i32) -> StoreResult<Option<DocumentVersion>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/document_version.sql"))
            .await?;
        Ok(client
            .query_opt(&statement, &[&id, &n])
            .await?
            .map(|row| version_from_row(&row, true)))
    }
}

/// One attempt to submit a document to the federal registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeEvent {
    pub id: i64,
    pub document_id: Uuid,
    pub event_id: Option<Uuid>,
    pub attempt: i32,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub registry_id: Option<String>,
    pub detail: Option<String>,
    pub duration_ms: i32,
    pub occurred_at: DateTime<Utc>,
}

impl PgStore {
    /// Appends one registry submission attempt to `document_exchange_events`.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_exchange_event(
        &self,
        document_id: Uuid,
        event_id: Option<Uuid>,
        attempt: i32,
        outcome: &str,
        http_status: Option<i32>,
        registry_id: Option<&str>,
        detail: Option<&str>,
        duration: std::time::Duration,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO document_exchange_events \
                 (document_id, event_id, attempt, outcome, http_status, registry_id, detail, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        let duration_ms = i32::try_from(duration.as_millis()).unwrap_or(i32::MAX);
        client
            .execute(
                &statement,
                &[
                    &document_id,
                    &event_id,
                    &attempt,
                    &outcome,
                    &http_status,
                    &registry_id,
                    &detail,
                    &duration_ms,
                ],
            )
            .await?;
        Ok(())
    }

    /// A document's registry submission attempts, oldest first.
    pub async fn exchange_events(&self, document_id: Uuid) -> StoreResult<Vec<ExchangeEvent>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, document_id, event_id, attempt, outcome, http_status, registry_id, \
                        detail, duration_ms, occurred_at \
                   FROM document_exchange_events WHERE document_id = $1 ORDER BY id",
            )
            .await?;
        let rows = client.query(&statement, &[&document_id]).await?;
        Ok(rows
            .iter()
            .map(|row| ExchangeEvent {
                id: row.get(0),
                document_id: row.get(1),
                event_id: row.get(2),
                attempt: row.get(3),
                outcome: row.get(4),
                http_status: row.get(5),
                registry_id: row.get(6),
                detail: row.get(7),
                duration_ms: row.get(8),
                occurred_at: row.get(9),
            })
            .collect())
    }
}
