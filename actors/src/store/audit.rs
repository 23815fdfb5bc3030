//! The audit log: appending rows, listing them, and the canonical content every row's hash
//! covers. Sealing the rows into the Merkle tree, verifying it and inclusion proofs live in
//! [`super::audit_seal`].
//!
//! Rows are stamped at insert by a trigger (migration `V7__audit_merkle_sealing.sql`) with
//! the SHA-256 of their canonical content; this module rebuilds that content from the stored
//! fields in Rust, so verification does not trust the database's own hashing functions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Listing, Page, PgStore, StoreResult};
use crate::audit_tree::Hash;

/// One audit row as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
    /// SHA-256 of the row's canonical content, stamped at insert (hex).
    pub content_hash: String,
    /// The row's position in the sealed tree; absent until it is sealed.
    pub leaf_index: Option<i64>,
}

/// Which audit rows a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub object_id: Option<Uuid>,
    pub actor_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// The fields of one row that its hash covers, as committed or as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContent {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    /// `details` as PostgreSQL prints the jsonb value.
    pub details_text: String,
    /// The stamp the insert trigger wrote (`None` if the row has none).
    pub stamp: Option<Vec<u8>>,
}

impl AuditContent {
    /// Returns the canonical bytes the row's hash covers (see the migration for the format).
    pub fn canonical(&self) -> Vec<u8> {
        fn field(out: &mut String, value: Option<&str>) {
            match value {
                None => out.push('~'),
                Some(value) => {
                    out.push_str(&value.len().to_string());
                    out.push(':');
                    out.push_str(value);
                }
            }
        }
        let mut out = String::with_capacity(256 + self.details_text.len());
        field(&mut out, Some(&self.id.to_string()));
        field(
            &mut out,
            Some(
                &self
                    .occurred_at
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string(),
            ),
        );
        field(&mut out, Some(&self.actor_id));
        field(&mut out, Some(&self.action));
        field(&mut out, Some(&self.object_type));
        field(&mut out, self.object_id.map(|id| id.to_string()).as_deref());
        field(&mut out, self.client_addr.as_deref());
        field(&mut out, self.request_id.as_deref());
        field(&mut out, Some(&self.details_text));
        out.into_bytes()
    }

    /// SHA-256 of the canonical content: what the insert trigger stamps.
    pub fn content_hash(&self) -> Hash {
        Sha256::digest(self.canonical()).into()
    }

    /// Whether the row carries the stamp its content calls for; `content` is
    /// [`Self::content_hash`], computed once by the caller that needs it too.
    pub fn stamped_with(&self, content: &Hash) -> bool {
        self.stamp.as_deref() == Some(content.as_slice())
    }

    /// Reads an entry from a row with the columns `id, occurred_at, actor_id, action,
    /// object_type, object_id, client_addr, request_id, details_text, content_hash`.
    pub(crate) fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            occurred_at: row.get("occurred_at"),
            actor_id: row.get("actor_id"),
            action: row.get("action"),
            object_type: row.get("object_type"),
            object_id: row.get("object_id"),
            client_addr: row.get("client_addr"),
            request_id: row.get("request_id"),
            details_text: row.get("details_text"),
            stamp: row.get("content_hash"),
        }
    }
}

fn record_from_row(row: &Row) -> AuditRecord {
    AuditRecord {
        id: row.get("id"),
        occurred_at: row.get("occurred_at"),
        actor_id: row.get("actor_id"),
        action: row.get("action"),
        object_type: row.get("object_type"),
        object_id: row.get("object_id"),
        client_addr: row.get("client_addr"),
        request_id: row.get("request_id"),
        details: row.get("details"),
        content_hash: hex::encode(row.get::<_, Vec<u8>>("content_hash")),
        leaf_index: row.get("leaf_index"),
    }
}

/// One audit row to append outside a write transaction (reads of personal data).
#[derive(Debug, Clone)]
pub struct AuditAppend {
    pub actor_id: String,
    pub action: &'static str,
    pub object_type: &'static str,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

impl PgStore {
    /// Appends `rows` in one statement and one transaction (no lock: rows are sealed after
    /// commit). Returns the committed version of each patient, appointment and
    /// document whose read (`*.read`) the rows record, as of the statement's start.
    pub async fn append_audit(&self, rows: &[AuditAppend]) -> StoreResult<Vec<(Uuid, i64)>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/audit_insert_batch.sql"))
            .await?;
        let actors: Vec<&str> = rows.iter().map(|r| r.actor_id.as_str()).collect();
        let actions: Vec<&str> = rows.iter().map(|r| r.action).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.object_type).collect();
        let ids: Vec<Option<Uuid>> = rows.iter().map(|r| r.object_id).collect();
        let addrs: Vec<Option<&str>> = rows.iter().map(|r| r.client_addr.as_deref()).collect();
        let requests: Vec<Option<&str>> = rows.iter().map(|r| r.request_id.as_deref()).collect();
        let details: Vec<&Value> = rows.iter().map(|r| &r.details).collect();
        let read: Vec<Uuid> = rows
            .iter()
            .filter(|r| {
                r.action.ends_with(".read")
                    && matches!(r.object_type, "patient" | "appointment" | "document")
            })
            .filter_map(|r| r.object_id)
            .collect();
        let versions = client
            .query(
                &statement,
                &[
                    &actors, &actions, &types, &ids, &addrs, &requests, &details, &read,
                ],
            )
            .await?;
        Ok(versions
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    /// Returns one page of audit rows matching `filter`, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Page<AuditRecord>> {
        let listing = Listing {
            page_sql: include_str!("sql/audit_list.sql").into(),
            count_sql: include_str!("sql/audit_count.sql"),
        };
        self.query_page(
            listing,
            &[&filter.object_id, &filter.actor_id],
            filter.offset,
            filter.limit,
            |row| Ok(record_from_row(row)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_length_prefixed_with_null_markers() {
        let entry = AuditContent {
            id: 42,
            occurred_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            actor_id: "0195f6a2-0000-7000-8000-000000000001".into(),
            action: "patient.read".into(),
            object_type: "patient".into(),
            object_id: None,
            client_addr: Some("10.0.0.7".into()),
            request_id: None,
            details_text: r#"{"version": 3}"#.into(),
            stamp: None,
        };
        let canonical = String::from_utf8(entry.canonical()).unwrap();
        assert_eq!(
            canonical,
            "2:42\
             27:2026-11-24T10:00:00.123456Z\
             36:0195f6a2-0000-7000-8000-000000000001\
             12:patient.read\
             7:patient\
             ~\
             8:10.0.0.7\
             ~\
             14:{\"version\": 3}"
        );
        assert!(!entry.stamped_with(&entry.content_hash()));
        let stamped = AuditContent {
            stamp: Some(entry.content_hash().to_vec()),
            ..entry
        };
        assert!(stamped.stamped_with(&stamped.content_hash()));
    }
}
