//! The audit log: listing entries and verifying its hash chain.
//!
//! Rows are chained by a trigger (migration `V2__audit_hash_chain.sql`); this module rebuilds
//! every row's canonical content from its stored fields and recomputes the chain in Rust, so
//! the verification does not trust the database's own hashing functions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Listing, Page, PgStore, StoreResult};

/// Rows fetched per round trip while verifying.
const VERIFY_BATCH: i64 = 5_000;

/// One audit row as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
    pub hash: String,
}

/// Which audit rows a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub object_id: Option<Uuid>,
    pub actor_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// The outcome of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// Every row checked matches its hash and links to its predecessor.
    pub valid: bool,
    /// Rows checked (up to and including the first broken one).
    pub rows_checked: u64,
    /// The last intact row's sequence number and hash: an operator may record them outside
    /// the database, which also makes a truncated tail detectable.
    pub head_seq: i64,
    pub head_hash: String,
    /// The first row that does not verify, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The fields of one row that its hash covers, as stored.
#[derive(Debug, Clone)]
pub struct ChainedRow {
    pub chain_seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub client_addr: Option<String>,
    pub request_id: Option<String>,
    /// `details` as PostgreSQL prints the jsonb value.
    pub details_text: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl ChainedRow {
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
        field(&mut out, Some(&self.chain_seq.to_string()));
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

    /// Returns SHA-256(prev_hash ‖ canonical content).
    pub fn expected_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(&self.prev_hash);
        hasher.update(self.canonical());
        hasher.finalize().into()
    }
}

/// Walks rows in chain order and reports the first one that does not verify.
#[derive(Debug)]
pub struct ChainVerifier {
    rows_checked: u64,
    head_seq: i64,
    head_hash: Vec<u8>,
    broken: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            rows_checked: 0,
            head_seq: 0,
            head_hash: vec![0; 32],
            broken: None,
        }
    }
}

impl ChainVerifier {
    /// Checks the next row; returns `false` once the chain is broken.
    pub fn check(&mut self, row: &ChainedRow) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.rows_checked += 1;
        let reason = if row.chain_seq != self.head_seq + 1 {
            Some(format!(
                "sequence jumps from {} to {}: rows are missing",
                self.head_seq, row.chain_seq
            ))
        } else if row.prev_hash != self.head_hash {
            Some("the row does not link to its predecessor's hash".to_owned())
        } else if row.hash != row.expected_hash() {
            Some("the row's content does not match its hash".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.broken = Some((row.chain_seq, reason));
                false
            }
            None => {
                self.head_seq = row.chain_seq;
                self.head_hash = row.hash.clone();
                true
            }
        }
    }

    pub fn report(self) -> ChainReport {
        let (broken_at_seq, reason) = match self.broken {
            Some((seq, reason)) => (Some(seq), Some(reason)),
            None => (None, None),
        };
        ChainReport {
            valid: broken_at_seq.is_none(),
            rows_checked: self.rows_checked,
            head_seq: self.head_seq,
            head_hash: hex::encode(&self.head_hash),
            broken_at_seq,
            reason,
        }
    }
}

fn record_from_row(row: &Row) -> AuditRecord {
    AuditRecord {
        seq: row.get("chain_seq"),
        occurred_at: row.get("occurred_at"),
        actor_id: row.get("actor_id"),
        action: row.get("action"),
        object_type: row.get("object_type"),
        object_id: row.get("object_id"),
        client_addr: row.get("client_addr"),
        request_id: row.get("request_id"),
        details: row.get("details"),
        hash: hex::encode(row.get::<_, Vec<u8>>("hash")),
    }
}

fn chained_from_row(row: &Row) -> ChainedRow {
    ChainedRow {
        chain_seq: row.get("chain_seq"),
        occurred_at: row.get("occurred_at"),
        actor_id: row.get("actor_id"),
        action: row.get("action"),
        object_type: row.get("object_type"),
        object_id: row.get("object_id"),
        client_addr: row.get("client_addr"),
        request_id: row.get("request_id"),
        details_text: row.get("details_text"),
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
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
    /// Appends `rows` in one statement and one transaction, so a batch takes the hash
    /// chain's lock once. Returns the committed version of each patient, appointment and
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

    /// Walks the whole hash chain in batches and reports the first broken row, if any.
    pub async fn verify_audit_chain(&self) -> StoreResult<ChainReport> {
        let client = self.client().await?;
        let batch = client
            .prepare_cached(include_str!("sql/audit_chain_batch.sql"))
            .await?;
        let mut verifier = ChainVerifier::default();
        let mut after = 0_i64;
        loop {
            let rows = client.query(&batch, &[&after, &VERIFY_BATCH]).await?;
            let Some(last) = rows.last() else { break };
            after = last.get("chain_seq");
            for row in &rows {
                if !verifier.check(&chained_from_row(row)) {
                    return Ok(verifier.report());
                }
            }
        }
        Ok(verifier.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: Vec<u8>) -> ChainedRow {
        let mut row = ChainedRow {
            chain_seq: seq,
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
            prev_hash: prev,
            hash: Vec::new(),
        };
        row.hash = row.expected_hash().to_vec();
        row
    }

    #[test]
    fn canonical_form_is_length_prefixed_with_null_markers() {
        let canonical = String::from_utf8(row(1, vec![0; 32]).canonical()).unwrap();
        assert_eq!(
            canonical,
            "1:1\
             27:2026-11-24T10:00:00.123456Z\
             36:0195f6a2-0000-7000-8000-000000000001\
             12:patient.read\
             7:patient\
             ~\
             8:10.0.0.7\
             ~\
             14:{\"version\": 3}"
        );
    }

    #[test]
    fn an_intact_chain_verifies_and_any_change_breaks_it() {
        let first = row(1, vec![0; 32]);
        let second = row(2, first.hash.clone());
        let mut verifier = ChainVerifier::default();
        assert!(verifier.check(&first) && verifier.check(&second));
        let report = verifier.report();
        assert!(report.valid);
        assert_eq!(report.head_hash, hex::encode(&second.hash));

        let mut tampered = second.clone();
        tampered.action = "patient.update".into();
        let mut verifier = ChainVerifier::default();
        assert!(verifier.check(&first));
        assert!(!verifier.check(&tampered));
        let report = verifier.report();
        assert_eq!(report.broken_at_seq, Some(2));
        assert_eq!(report.head_seq, 1);

        let third = row(3, second.hash.clone());
        let mut verifier = ChainVerifier::default();
        assert!(verifier.check(&first));
        assert!(!verifier.check(&third), "a missing row is detected");
    }
}
