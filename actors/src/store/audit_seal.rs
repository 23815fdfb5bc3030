//! Sealing the audit log into its Merkle tree, verifying the tree, and inclusion proofs.
//!
//! Writers append audit rows without any lock. A sealing round, run by one instance at a
//! time (the others skip while the sealing advisory lock is held), reads the rows committed
//! since the last round from the WAL through the sealer's logical replication slot (SQL
//! decoding functions, `pgoutput`), in commit order, appends their leaves to the tree,
//! stores the completed subtrees and a (signed) tree head, and records the position it
//! reached — all in one transaction. The slot is moved to that position at the start of the
//! next round, so a round that fails or an instance killed mid-round leaves the slot where
//! it was and the next round seals the same rows once: no gap, no duplicate.
//!
//! Rows committed before the slot existed (at first start, after the migration from the
//! hash chain, or after a switchover to a standby that has no slot) are sealed from the
//! table first ("backfill"), in chain order then id order; rows the WAL then brings again
//! are skipped by id.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use super::audit::AuditContent;
use super::{PgStore, StoreError, StoreResult};
use crate::audit_tree::{self, Frontier, Hash, NodeKey};
use crate::cdc::envelope::parse_timestamptz;
use crate::cdc::pgoutput::{Datum, PgOutput, Relation, decode};

/// The publication the sealer decodes (created by the migration).
pub const AUDIT_PUBLICATION: &str = "medflow_audit";

/// The transaction-scoped advisory lock a sealing round holds: one sealer at a time.
pub const AUDIT_SEAL_LOCK: i64 = 0x6d65_6466_6c6f_7773;

/// Leaves read per round trip while verifying.
const VERIFY_BATCH: i64 = 5_000;
/// Unsealed rows examined at most by one verification.
const TAIL_LIMIT: i64 = 10_000;

/// Signs tree heads with an Ed25519 key kept outside the database, so nobody with database
/// rights alone can forge a head over altered leaves.
#[derive(Clone)]
pub struct HeadSigner {
    key: SigningKey,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl HeadSigner {
    /// A signer from the base64 of a 32-byte Ed25519 seed.
    pub fn from_base64_seed(seed: &str) -> anyhow::Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(seed.trim())
            .map_err(|_| anyhow::anyhow!("the audit signing key is not base64"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the audit signing key must be 32 bytes (base64)"))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The first 8 bytes of SHA-256 of the public key, hex: which key signed a head.
    pub fn key_id(&self) -> String {
        key_id(&self.verifying_key())
    }

    fn sign(&self, size: u64, sealed_at: DateTime<Utc>, root: &Hash) -> Vec<u8> {
        self.key
            .sign(&head_message(size, sealed_at, root))
            .to_bytes()
            .to_vec()
    }
}

fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// The bytes a tree head's signature covers: a context string, the size (u64 big-endian),
/// the sealing time (microseconds since the Unix epoch, i64 big-endian) and the root.
pub fn head_message(size: u64, sealed_at: DateTime<Utc>, root: &Hash) -> Vec<u8> {
    let mut message = b"medflow audit tree head v1\0".to_vec();
    message.extend(size.to_be_bytes());
    message.extend(sealed_at.timestamp_micros().to_be_bytes());
    message.extend(root);
    message
}

/// How sealing runs.
#[derive(Debug, Clone)]
pub struct SealSettings {
    /// The sealer's logical replication slot (one per database).
    pub slot: String,
    /// Changes decoded per round at most (whole transactions: a round may take more).
    pub batch_changes: i32,
    pub signer: Option<Arc<HeadSigner>>,
}

/// What a sealing round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealOutcome {
    /// Another instance is sealing.
    Busy,
    /// Nothing new was committed.
    Idle,
    /// Leaves were sealed; `more` is waiting.
    Sealed { more: bool },
}

/// What the WAL showed besides rows written by the trigger: only someone bypassing the
/// append-only triggers can update, delete or truncate audit rows, or insert one whose stamp
/// does not match its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampering {
    pub operation: &'static str,
    pub audit_id: Option<i64>,
}

/// One head of the tree as stored.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeHead {
    pub tree_size: i64,
    /// Hex.
    pub root_hash: String,
    pub sealed_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Ed25519 over [`head_message`], base64; absent when no signing key is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The first problem a verification found, naming the entry where it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditProblem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf_index: Option<i64>,
    pub reason: String,
}

/// The outcome of verifying the sealed tree and the unsealed tail.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub valid: bool,
    /// Leaves checked by this verification, from `verifiedFrom` on.
    pub verified_from: i64,
    pub leaves_checked: u64,
    pub heads_checked: u64,
    /// The newest head, as verified (absent while nothing is sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<TreeHead>,
    /// Whether heads are signed and their signatures were checked.
    pub signed: bool,
    /// Hex Ed25519 public key that signs the heads, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Committed rows not sealed yet (at most 10,000 are examined).
    pub unsealed_rows: u64,
    /// Seconds since the oldest unsealed row was written (0 when none is waiting).
    pub sealing_lag_seconds: f64,
    /// The first problem found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<AuditProblem>,
}

/// An entry's inclusion proof in the newest head (RFC 9162 §2.1.3).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    pub entry_id: i64,
    pub leaf_index: i64,
    /// SHA-256 of the entry's canonical content (hex).
    pub content_hash: String,
    /// SHA-256(0x00 ‖ leaf index as u64 big-endian ‖ content hash) (hex).
    pub leaf_hash: String,
    pub head: TreeHead,
    /// Sibling hashes from the leaf up (hex).
    pub audit_path: Vec<String>,
}

/// Why an inclusion proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("no such audit entry")]
    NotFound,
    #[error("the entry is not sealed yet")]
    NotSealed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hash_of(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

fn head_from_row(row: &tokio_postgres::Row) -> TreeHead {
    TreeHead {
        tree_size: row.get("tree_size"),
        root_hash: hex::encode(row.get::<_, Vec<u8>>("root_hash")),
        sealed_at: row.get("sealed_at"),
        key_id: row.get("key_id"),
        signature: row
            .get::<_, Option<Vec<u8>>>("signature")
            .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// An audit entry from a decoded `audit_log` tuple.
fn entry_from_tuple(relation: &Relation, values: &[Datum]) -> Result<AuditContent, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        let index = relation
            .columns
            .iter()
            .position(|column| column.name == name)
            .ok_or_else(|| format!("audit_log has no column {name}"))?;
        match values.get(index) {
            Some(Datum::Text(value)) => Ok(Some(value.as_str())),
            Some(Datum::Null) => Ok(None),
            _ => Err(format!("audit_log.{name} is missing from the change")),
        }
    };
    let required = |name: &str| -> Result<String, String> {
        text(name)?
            .map(str::to_owned)
            .ok_or_else(|| format!("audit_log.{name} is null"))
    };
    let id = required("id")?
        .parse()
        .map_err(|_| "audit_log.id is not a number".to_owned())?;
    let occurred_at = parse_timestamptz(&required("occurred_at")?)
        .ok_or_else(|| "audit_log.occurred_at is not a timestamp".to_owned())?;
    let object_id = text("object_id")?
        .map(|value| value.parse::<Uuid>())
        .transpose()
        .map_err(|_| "audit_log.object_id is not a uuid".to_owned())?;
    let stamp = text("content_hash")?
        .and_then(|value| value.strip_prefix("\\x"))
        .and_then(|value| hex::decode(value).ok());
    Ok(AuditContent {
        id,
        occurred_at,
        actor_id: required("actor_id")?,
        action: required("action")?,
        object_type: required("object_type")?,
        object_id,
        client_addr: text("client_addr")?.map(str::to_owned),
        request_id: text("request_id")?.map(str::to_owned),
        details_text: required("details")?,
        stamp,
    })
}

/// The audit rows of the transactions committed after `sealed_lsn` in the decoded messages,
/// in commit order; the position reached; and whatever else the WAL showed of the log.
fn committed_entries(
    messages: &[Bytes],
    sealed_lsn: u64,
) -> Result<(Vec<AuditContent>, u64, Vec<Tampering>), String> {
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut entries = Vec::new();
    let mut tampering = Vec::new();
    let mut open: Vec<AuditContent> = Vec::new();
    let mut reached = sealed_lsn;
    let is_log = |relations: &HashMap<u32, Relation>, id: u32| {
        relations
            .get(&id)
            .is_some_and(|relation| relation.table == "audit_log")
    };
    let key_of = |relations: &HashMap<u32, Relation>, id: u32, values: &[Datum]| {
        relations.get(&id).and_then(|relation| {
            let index = relation.columns.iter().position(|c| c.name == "id")?;
            match values.get(index) {
                Some(Datum::Text(value)) => value.parse().ok(),
                _ => None,
            }
        })
    };
    for message in messages {
        match decode(message.clone()).map_err(|error| error.to_string())? {
            PgOutput::Relation(relation) => {
                relations.insert(relation.id, relation);
            }
            PgOutput::Begin { .. } => open.clear(),
            PgOutput::Insert { relation, new } if is_log(&relations, relation) => {
                open.push(entry_from_tuple(&relations[&relation], &new)?);
            }
            PgOutput::Update { relation, new, .. } if is_log(&relations, relation) => {
                tampering.push(Tampering {
                    operation: "update",
                    audit_id: key_of(&relations, relation, &new),
                });
            }
            PgOutput::Delete { relation, old } if is_log(&relations, relation) => {
                tampering.push(Tampering {
                    operation: "delete",
                    audit_id: key_of(&relations, relation, &old),
                });
            }
            PgOutput::Truncate { relations: ids }
                if ids.iter().any(|id| is_log(&relations, *id)) =>
            {
                tampering.push(Tampering {
                    operation: "truncate",
                    audit_id: None,
                });
            }
            PgOutput::Commit { end_lsn, .. } => {
                if end_lsn > sealed_lsn {
                    entries.append(&mut open);
                    reached = reached.max(end_lsn);
                }
                open.clear();
            }
            _ => {}
        }
    }
    Ok((entries, reached, tampering))
}

/// The seal state's row, locked.
struct SealState {
    frontier: Frontier,
    sealed_lsn: u64,
    backfill_pending: bool,
    unsealed_from: i64,
}

/// A frontier's nodes as stored (`bytea[]`); [`frontier_from`] reads them back.
fn frontier_rows(frontier: &Frontier) -> Vec<Vec<u8>> {
    frontier.nodes().iter().map(|node| node.to_vec()).collect()
}

fn frontier_from(size: i64, nodes: Vec<Vec<u8>>) -> StoreResult<Frontier> {
    let nodes: Option<Vec<Hash>> = nodes.iter().map(|node| hash_of(node)).collect();
    nodes
        .and_then(|nodes| Frontier::from_parts(u64::try_from(size).ok()?, nodes))
        .ok_or_else(|| {
            StoreError::Unexpected(anyhow::anyhow!("a stored audit frontier is malformed"))
        })
}

impl PgStore {
    /// Runs one sealing round (see the module documentation). Returns what it did and what
    /// the WAL showed of changes to the log other than inserts.
    pub async fn seal_audit(
        &self,
        settings: &SealSettings,
    ) -> StoreResult<(SealOutcome, Vec<Tampering>)> {
        let mut client = self.client().await?;
        let slot_exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&settings.slot],
            )
            .await?
            .is_some();
        if !slot_exists {
            // Recorded first, so a crash between the two still backfills what the new slot
            // will not carry.
            client
                .execute("UPDATE audit_seal_state SET backfill_pending = true", &[])
                .await?;
            match client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&settings.slot],
                )
                .await
            {
                Ok(_) => crate::internal_events::emit(crate::internal_events::AuditSlotCreated {
                    slot: &settings.slot,
                }),
                Err(error) if error.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'")
            .await?;
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&AUDIT_SEAL_LOCK])
            .await?
            .get(0);
        if !ours {
            return Ok((SealOutcome::Busy, Vec::new()));
        }
        let row = tx
            .query_one(
                "SELECT tree_size, frontier, sealed_lsn::text AS sealed_lsn, backfill_pending,
                        unsealed_from
                   FROM audit_seal_state WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?;
        let mut state = SealState {
            frontier: frontier_from(row.get("tree_size"), row.get("frontier"))?,
            sealed_lsn: parse_lsn(row.get("sealed_lsn")).unwrap_or_default(),
            backfill_pending: row.get("backfill_pending"),
            unsealed_from: row.get("unsealed_from"),
        };
        let (entries, more, mut tampering) = if state.backfill_pending {
            let rows = tx
                .query(
                    "SELECT a.id, a.occurred_at, a.actor_id, a.action, a.object_type, a.object_id,
                            a.client_addr, a.request_id, a.details::text AS details_text,
                            a.content_hash
                       FROM audit_log a
                      WHERE NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)
                      ORDER BY a.chain_seq NULLS LAST, a.id
                      LIMIT $1",
                    &[&i64::from(settings.batch_changes)],
                )
                .await?;
            let more = rows.len() as i64 >= i64::from(settings.batch_changes);
            state.backfill_pending = more;
            (
                rows.iter().map(AuditContent::from_row).collect::<Vec<_>>(),
                more,
                Vec::new(),
            )
        } else {
            // The previous round committed its position; the slot follows only now, so it
            // never passes what is not sealed.
            tx.execute(
                "SELECT pg_replication_slot_advance(slot_name, $2::text::pg_lsn)
                   FROM pg_replication_slots
                  WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&settings.slot, &lsn_text(state.sealed_lsn)],
            )
            .await?;
            let rows = tx
                .query(
                    "SELECT data FROM pg_logical_slot_peek_binary_changes(
                        $1, NULL, $2, 'proto_version', '1', 'publication_names', $3)",
                    &[&settings.slot, &settings.batch_changes, &AUDIT_PUBLICATION],
                )
                .await?;
            let more = rows.len() as i64 >= i64::from(settings.batch_changes);
            let messages: Vec<Bytes> = rows
                .iter()
                .map(|row| Bytes::from(row.get::<_, Vec<u8>>(0)))
                .collect();
            let (entries, reached, tampering) = committed_entries(&messages, state.sealed_lsn)
                .map_err(|error| {
                    StoreError::Unexpected(anyhow::anyhow!(
                        "decoding the audit log's changes: {error}"
                    ))
                })?;
            state.sealed_lsn = reached;
            (entries, more, tampering)
        };
        let sealed = self
            .append_leaves(&tx, &mut state, entries, settings, &mut tampering)
            .await?;
        tx.execute(
            "UPDATE audit_seal_state
                SET tree_size = $1, frontier = $2, sealed_lsn = $3::text::pg_lsn,
                    backfill_pending = $4, unsealed_from = $5",
            &[
                &(state.frontier.size() as i64),
                &frontier_rows(&state.frontier),
                &lsn_text(state.sealed_lsn),
                &state.backfill_pending,
                &state.unsealed_from,
            ],
        )
        .await?;
        tx.commit().await?;
        let outcome = if sealed == 0 && !more {
            SealOutcome::Idle
        } else {
            SealOutcome::Sealed { more }
        };
        Ok((outcome, tampering))
    }

    /// Appends the entries not sealed yet as leaves, with their completed subtrees and a
    /// head; returns how many were appended, and adds the entries not stamped by the trigger
    /// to `tampering`.
    async fn append_leaves(
        &self,
        tx: &Transaction<'_>,
        state: &mut SealState,
        entries: Vec<AuditContent>,
        settings: &SealSettings,
        tampering: &mut Vec<Tampering>,
    ) -> StoreResult<u64> {
        let ids: Vec<i64> = entries.iter().map(|entry| entry.id).collect();
        let already: std::collections::HashSet<i64> = if ids.is_empty() {
            Default::default()
        } else {
            tx.query(
                "SELECT audit_id FROM audit_leaves WHERE audit_id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect()
        };
        let mut seen = std::collections::HashSet::new();
        let (mut indexes, mut audit_ids, mut contents, mut leaves) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut levels, mut positions, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        for entry in entries {
            if already.contains(&entry.id) || !seen.insert(entry.id) {
                continue;
            }
            // The leaf seals the content as committed. A row whose stamp does not match it
            // was written bypassing the trigger: it is sealed all the same, reported, and
            // verification names it.
            let content = entry.content_hash();
            if !entry.stamped_with(&content) {
                tampering.push(Tampering {
                    operation: "unstamped insert",
                    audit_id: Some(entry.id),
                });
            }
            let index = state.frontier.size();
            let leaf = audit_tree::leaf_hash(index, &content);
            for ((level, position), hash) in state.frontier.push(leaf) {
                levels.push(i16::from(level));
                positions.push(position as i64);
                hashes.push(hash.to_vec());
            }
            indexes.push(index as i64);
            audit_ids.push(entry.id);
            contents.push(content.to_vec());
            leaves.push(leaf.to_vec());
        }
        if indexes.is_empty() {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO audit_leaves (leaf_index, audit_id, content_hash, leaf_hash)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::bytea[])",
            &[&indexes, &audit_ids, &contents, &leaves],
        )
        .await?;
        if !levels.is_empty() {
            tx.execute(
                "INSERT INTO audit_nodes (level, idx, hash)
                 SELECT * FROM unnest($1::int2[], $2::int8[], $3::bytea[])",
                &[&levels, &positions, &hashes],
            )
            .await?;
        }
        let size = state.frontier.size();
        let root = state.frontier.root();
        let now = Utc::now();
        let sealed_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let (key_id, signature) = match &settings.signer {
            Some(signer) => (
                Some(signer.key_id()),
                Some(signer.sign(size, sealed_at, &root)),
            ),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO audit_tree_heads (tree_size, root_hash, sealed_at, key_id, signature)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &(size as i64),
                &root.to_vec(),
                &sealed_at,
                &key_id,
                &signature,
            ],
        )
        .await?;
        // Where the unsealed tail now starts: the first row from the old start on that is
        // not sealed, or past the last row.
        state.unsealed_from = tx
            .query_one(
                "SELECT coalesce(
                    (SELECT a.id FROM audit_log a
                      WHERE a.id >= $1
                        AND NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)
                      ORDER BY a.id LIMIT 1),
                    (SELECT coalesce(max(id), 0) + 1 FROM audit_log))",
                &[&state.unsealed_from],
            )
            .await?
            .get(0);
        crate::internal_events::emit(crate::internal_events::AuditEntriesSealed {
            count: indexes.len() as u64,
        });
        Ok(indexes.len() as u64)
    }

    /// Seconds since the oldest committed row that is not sealed yet was written (0 if none).
    pub async fn audit_sealing_lag(&self) -> StoreResult<f64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(a.occurred_at)), 0)::float8
                   FROM audit_log a
                  WHERE a.id >= (SELECT unsealed_from FROM audit_seal_state)
                    AND NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Verifies what was sealed since the last verified head (from the first leaf when
    /// `full`) and the unsealed tail, and records the new verified head when all is well.
    pub async fn verify_audit(
        &self,
        key: Option<&VerifyingKey>,
        full: bool,
    ) -> StoreResult<AuditReport> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        // Resumes from where the last verification ended (one snapshot for the whole walk).
        let checkpoint = tx
            .query_one(
                "SELECT tree_size, frontier FROM audit_verify_state WHERE id = 1",
                &[],
            )
            .await?;
        let mut frontier = if full {
            Frontier::default()
        } else {
            frontier_from(checkpoint.get("tree_size"), checkpoint.get("frontier"))?
        };
        let verified_from = frontier.size() as i64;
        let heads = tx
            .query(
                "SELECT tree_size, root_hash, sealed_at, key_id, signature
                   FROM audit_tree_heads WHERE tree_size >= $1 ORDER BY tree_size",
                &[&verified_from.max(1)],
            )
            .await?;
        let mut report = AuditReport {
            valid: true,
            verified_from,
            leaves_checked: 0,
            heads_checked: 0,
            head: None,
            signed: key.is_some(),
            public_key: key.map(|key| hex::encode(key.as_bytes())),
            unsealed_rows: 0,
            sealing_lag_seconds: 0.0,
            problem: None,
        };
        let mut heads = heads.iter().peekable();
        let mut verified = frontier.clone();
        let mut problem = None;
        // The checkpoint itself must match the head it was taken at.
        if frontier.size() > 0 {
            if let Some(head) =
                heads.next_if(|head| head.get::<_, i64>("tree_size") == verified_from)
            {
                problem = check_head(head, &frontier, key);
                report.heads_checked += 1;
            } else {
                problem = Some(AuditProblem {
                    entry_id: None,
                    leaf_index: None,
                    reason: format!(
                        "the tree head of size {verified_from}, verified before, is gone"
                    ),
                });
            }
        }
        let batch = tx
            .prepare(include_str!("sql/audit_leaves_batch.sql"))
            .await?;
        'leaves: while problem.is_none() {
            let rows = tx
                .query(&batch, &[&(frontier.size() as i64), &VERIFY_BATCH])
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                if let Some(found) = check_leaf(row, frontier.size()) {
                    problem = Some(found);
                    break 'leaves;
                }
                let index = frontier.size();
                let content = hash_of(&row.get::<_, Vec<u8>>("sealed_content")).unwrap_or_default();
                frontier.push(audit_tree::leaf_hash(index, &content));
                report.leaves_checked += 1;
                while let Some(head) =
                    heads.next_if(|head| head.get::<_, i64>("tree_size") as u64 <= frontier.size())
                {
                    report.heads_checked += 1;
                    let size = head.get::<_, i64>("tree_size") as u64;
                    problem = if size < frontier.size() {
                        Some(AuditProblem {
                            entry_id: None,
                            leaf_index: None,
                            reason: format!("tree heads are out of order at size {size}"),
                        })
                    } else {
                        check_head(head, &frontier, key).map(|mut found| {
                            found.leaf_index = Some(index as i64);
                            found.entry_id = Some(row.get("audit_id"));
                            found
                        })
                    };
                    if problem.is_some() {
                        break 'leaves;
                    }
                    verified = frontier.clone();
                    report.head = Some(head_from_row(head));
                }
            }
        }
        if problem.is_none() {
            if let Some(head) = heads.next() {
                problem = Some(AuditProblem {
                    entry_id: None,
                    leaf_index: None,
                    reason: format!(
                        "the tree head of size {} covers leaves that are missing",
                        head.get::<_, i64>("tree_size")
                    ),
                });
            } else if verified.size() < frontier.size() {
                problem = Some(AuditProblem {
                    entry_id: None,
                    leaf_index: Some(verified.size() as i64),
                    reason:
                        "leaves from here on are covered by no tree head (added outside the sealer)"
                            .to_owned(),
                });
            }
        }
        if report.head.is_none() && verified.size() > 0 {
            report.head = tx
                .query_opt(
                    "SELECT tree_size, root_hash, sealed_at, key_id, signature
                       FROM audit_tree_heads WHERE tree_size = $1",
                    &[&(verified.size() as i64)],
                )
                .await?
                .as_ref()
                .map(head_from_row);
        }
        // The unsealed tail: not in the tree yet, so only each row's stamp can be checked.
        let tail = tx
            .query(
                include_str!("sql/audit_unsealed.sql"),
                &[
                    &tx.query_one("SELECT unsealed_from FROM audit_seal_state", &[])
                        .await?
                        .get::<_, i64>(0),
                    &TAIL_LIMIT,
                ],
            )
            .await?;
        report.unsealed_rows = tail.len() as u64;
        if let Some(oldest) = tail
            .iter()
            .map(|row| row.get::<_, DateTime<Utc>>("occurred_at"))
            .min()
        {
            report.sealing_lag_seconds =
                ((Utc::now() - oldest).num_milliseconds().max(0) as f64) / 1000.0;
        }
        if problem.is_none() {
            problem = tail.iter().map(AuditContent::from_row).find_map(|entry| {
                (!entry.stamped_with(&entry.content_hash())).then(|| AuditProblem {
                    entry_id: Some(entry.id),
                    leaf_index: None,
                    reason: "the entry (not sealed yet) does not match its stamp: it was altered, or written bypassing the audit trigger".to_owned(),
                })
            });
        }
        report.valid = problem.is_none();
        report.problem = problem;
        if report.valid && verified.size() > 0 {
            let recorded = tx
                .execute(
                    "UPDATE audit_verify_state
                        SET tree_size = $1, frontier = $2, verified_at = clock_timestamp()
                      WHERE tree_size < $1",
                    &[&(verified.size() as i64), &frontier_rows(&verified)],
                )
                .await;
            match recorded {
                // A verification running at the same time recorded its head first: this
                // one's result stands; its checkpoint is not needed.
                Err(error) if error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                    return Ok(report);
                }
                other => {
                    other?;
                }
            }
        }
        tx.commit().await?;
        Ok(report)
    }

    /// The inclusion proof of audit entry `id` in the newest tree head.
    pub async fn audit_inclusion_proof(&self, id: i64) -> Result<InclusionProof, ProofError> {
        let client = self.client().await.map_err(StoreError::from)?;
        let leaf = client
            .query_opt(
                "SELECT leaf_index, content_hash, leaf_hash FROM audit_leaves WHERE audit_id = $1",
                &[&id],
            )
            .await
            .map_err(StoreError::from)?;
        let Some(leaf) = leaf else {
            let exists = client
                .query_opt("SELECT 1 FROM audit_log WHERE id = $1", &[&id])
                .await
                .map_err(StoreError::from)?
                .is_some();
            return Err(if exists {
                ProofError::NotSealed
            } else {
                ProofError::NotFound
            });
        };
        let head = client
            .query_one(
                "SELECT tree_size, root_hash, sealed_at, key_id, signature
                   FROM audit_tree_heads ORDER BY tree_size DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(StoreError::from)?;
        let index: i64 = leaf.get("leaf_index");
        let size: i64 = head.get("tree_size");
        let keys = audit_tree::inclusion_nodes(index as u64, size as u64);
        let nodes = load_nodes(&**client, &keys).await?;
        let path =
            audit_tree::inclusion_proof(index as u64, size as u64, &nodes).ok_or_else(|| {
                StoreError::Unexpected(anyhow::anyhow!(
                    "a subtree of the audit tree is missing (verify the log)"
                ))
            })?;
        Ok(InclusionProof {
            entry_id: id,
            leaf_index: index,
            content_hash: hex::encode(leaf.get::<_, Vec<u8>>("content_hash")),
            leaf_hash: hex::encode(leaf.get::<_, Vec<u8>>("leaf_hash")),
            head: head_from_row(&head),
            audit_path: path.iter().map(hex::encode).collect(),
        })
    }
}

/// The stored subtrees `keys` (level 0 from the leaves).
async fn load_nodes(
    client: &impl GenericClient,
    keys: &[NodeKey],
) -> StoreResult<HashMap<NodeKey, Hash>> {
    let leaves: Vec<i64> = keys
        .iter()
        .filter(|(level, _)| *level == 0)
        .map(|(_, index)| *index as i64)
        .collect();
    let (levels, positions): (Vec<i16>, Vec<i64>) = keys
        .iter()
        .filter(|(level, _)| *level > 0)
        .map(|(level, index)| (i16::from(*level), *index as i64))
        .unzip();
    let rows = client
        .query(
            "SELECT 0::int2 AS level, leaf_index AS idx, leaf_hash AS hash
               FROM audit_leaves WHERE leaf_index = ANY($1)
             UNION ALL
             SELECT n.level, n.idx, n.hash
               FROM audit_nodes n
               JOIN unnest($2::int2[], $3::int8[]) AS k(level, idx)
                 ON n.level = k.level AND n.idx = k.idx",
            &[&leaves, &levels, &positions],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let hash = hash_of(&row.get::<_, Vec<u8>>("hash"))?;
            Some((
                (
                    row.get::<_, i16>("level") as u8,
                    row.get::<_, i64>("idx") as u64,
                ),
                hash,
            ))
        })
        .collect())
}

/// Checks one sealed leaf against the row it seals; `expected` is its position.
fn check_leaf(row: &tokio_postgres::Row, expected: u64) -> Option<AuditProblem> {
    let index: i64 = row.get("leaf_index");
    let audit_id: i64 = row.get("audit_id");
    let named = |reason: &str| {
        Some(AuditProblem {
            entry_id: Some(audit_id),
            leaf_index: Some(index),
            reason: reason.to_owned(),
        })
    };
    if index as u64 != expected {
        return Some(AuditProblem {
            entry_id: None,
            leaf_index: Some(expected as i64),
            reason: format!("leaf {expected} is missing (the next stored leaf is {index})"),
        });
    }
    let sealed: Vec<u8> = row.get("sealed_content");
    let leaf: Vec<u8> = row.get("leaf_hash");
    let Some(content) = hash_of(&sealed) else {
        return named("the leaf's content hash is malformed");
    };
    if leaf != audit_tree::leaf_hash(index as u64, &content) {
        return named(
            "the leaf does not match its entry at this position: leaves were moved or replaced",
        );
    }
    if row.get::<_, Option<i64>>("id").is_none() {
        return named("the entry was deleted after it was committed");
    }
    let entry = AuditContent::from_row(row);
    let current = entry.content_hash();
    if current != content {
        return named(
            "the entry was altered after it was committed: its content differs from what was sealed",
        );
    }
    if !entry.stamped_with(&current) {
        return named(
            "the entry does not match its stamp: it was written bypassing the audit trigger",
        );
    }
    None
}

/// Checks a head against the tree rebuilt up to its size, and its signature.
fn check_head(
    head: &tokio_postgres::Row,
    frontier: &Frontier,
    key: Option<&VerifyingKey>,
) -> Option<AuditProblem> {
    let size: i64 = head.get("tree_size");
    let root: Vec<u8> = head.get("root_hash");
    let problem = |reason: String| {
        Some(AuditProblem {
            entry_id: None,
            leaf_index: None,
            reason,
        })
    };
    if root != frontier.root() {
        return problem(format!(
            "the tree head of size {size} does not match the sealed leaves: entries were reordered, inserted or removed"
        ));
    }
    if let Some(key) = key {
        let signature: Option<Vec<u8>> = head.get("signature");
        let sealed_at: DateTime<Utc> = head.get("sealed_at");
        let valid = signature
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .is_some_and(|signature| {
                key.verify(
                    &head_message(size as u64, sealed_at, &frontier.root()),
                    &signature,
                )
                .is_ok()
            });
        if !valid {
            return problem(format!(
                "the tree head of size {size} is not signed by the configured key"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_and_parse_as_postgresql_writes_them() {
        assert_eq!(lsn_text(0x1_6B3D_8A40), "1/6B3D8A40");
        assert_eq!(parse_lsn("1/6B3D8A40"), Some(0x1_6B3D_8A40));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn a_signed_head_verifies_with_its_key_only() {
        let signer = HeadSigner::from_base64_seed(
            &base64::engine::general_purpose::STANDARD.encode([7; 32]),
        )
        .unwrap();
        let at = Utc::now();
        let root = [3; 32];
        let signature = Signature::from_slice(&signer.sign(5, at, &root)).unwrap();
        assert!(
            signer
                .verifying_key()
                .verify(&head_message(5, at, &root), &signature)
                .is_ok()
        );
        assert!(
            signer
                .verifying_key()
                .verify(&head_message(6, at, &root), &signature)
                .is_err()
        );
        assert_eq!(signer.key_id().len(), 16);
        assert!(HeadSigner::from_base64_seed("c2hvcnQ=").is_err());
    }
}
