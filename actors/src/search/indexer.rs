//! `SearchIndexer`: the consumer handler that turns Debezium change events of `patients` and
//! `documents` into index operations.
//!
//! - `c`/`u`/`r` → upsert with the row's `version`; an archived patient → a delete at that
//!   version; `d` or a tombstone → a final delete.
//! - `documents` keeps PostgreSQL's default replica identity, so an update that leaves a
//!   large (TOASTed) body untouched carries Debezium's "unavailable" placeholder instead of
//!   the body. Such a change is indexed from the committed row as PostgreSQL holds it now
//!   (its version is at least the event's, so versioning still holds).
//! - A malformed event is a permanent failure (dead letter); an index that is unreachable or
//!   overloaded is transient (retry schedule).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{DocumentEntry, IndexError, IndexOp, Kind, PatientEntry, SearchIndex};
use crate::PgStore;
use crate::cdc::envelope::UNAVAILABLE;
use crate::consume::{Handler, HandlerError, Inbound, Outcomes};

/// The consumer group's name (the topic prefix is added).
pub const GROUP: &str = "medflow.search-indexer";

pub struct SearchIndexer {
    pub index: Arc<dyn SearchIndex>,
    /// Reads a document whose event lacks its (unchanged, TOASTed) body.
    pub store: PgStore,
}

/// What one message asks of the index.
enum Parsed {
    Op(IndexOp),
    /// A document update without its body: index the row as committed now.
    Reload(Uuid),
    /// Not ours (another table), or nothing to do.
    Skip,
}

impl Handler for SearchIndexer {
    fn handle<'a>(&'a self, batch: &'a [Inbound]) -> BoxFuture<'a, Outcomes> {
        async move {
            let mut outcomes: Outcomes = vec![Ok(()); batch.len()];
            let mut ops = Vec::with_capacity(batch.len());
            let mut owners = Vec::with_capacity(batch.len());
            for (i, message) in batch.iter().enumerate() {
                let parsed = match parse(message) {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        outcomes[i] = Err(HandlerError::Permanent(error));
                        continue;
                    }
                };
                let op = match parsed {
                    Parsed::Op(op) => op,
                    Parsed::Skip => continue,
                    Parsed::Reload(id) => match self.store.load_document(id).await {
                        Ok(Some(document)) => IndexOp::Document(DocumentEntry {
                            id: document.id,
                            version: document.version,
                            patient_id: document.patient_id,
                            author_id: document.author_id,
                            doc_type: document.doc_type.as_str().to_owned(),
                            status: document.status.as_str().to_owned(),
                            title: document.title.clone(),
                            body: document.body.to_string(),
                            created_at: document.created_at,
                        }),
                        Ok(None) => IndexOp::Delete {
                            kind: Kind::Document,
                            id,
                            version: i64::MAX,
                        },
                        Err(error) => {
                            outcomes[i] = Err(HandlerError::transient(error));
                            continue;
                        }
                    },
                };
                ops.push(op);
                owners.push(i);
            }
            if ops.is_empty() {
                return outcomes;
            }
            let results = self.index.apply(&ops).await;
            for (position, owner) in owners.into_iter().enumerate() {
                outcomes[owner] = match results.get(position) {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(IndexError::Permanent(message))) => {
                        Err(HandlerError::Permanent(message.clone()))
                    }
                    Some(Err(IndexError::Transient(message))) => {
                        Err(HandlerError::Transient(message.clone()))
                    }
                    None => Err(HandlerError::transient("the index gave no result")),
                };
            }
            outcomes
        }
        .boxed()
    }
}

fn table_of(topic: &str) -> Option<Kind> {
    if topic.ends_with(".public.patients") {
        Some(Kind::Patient)
    } else if topic.ends_with(".public.documents") {
        Some(Kind::Document)
    } else {
        None
    }
}

fn parse(message: &Inbound) -> Result<Parsed, String> {
    let Some(kind) = table_of(&message.topic) else {
        return Ok(Parsed::Skip);
    };
    let Some(payload) = &message.payload else {
        // The tombstone after a delete: the key names the row.
        let key: Value = message
            .key
            .as_deref()
            .and_then(|key| serde_json::from_slice(key).ok())
            .ok_or("tombstone without a JSON key")?;
        let id = uuid_field(key.as_object().ok_or("key is not an object")?, "id")?;
        return Ok(Parsed::Op(IndexOp::Delete {
            kind,
            id,
            version: i64::MAX,
        }));
    };
    let envelope: Value =
        serde_json::from_slice(payload).map_err(|error| format!("not JSON: {error}"))?;
    let op = envelope["op"].as_str().ok_or("no op")?;
    if op == "d" {
        let before = envelope["before"]
            .as_object()
            .ok_or("delete without before")?;
        return Ok(Parsed::Op(IndexOp::Delete {
            kind,
            id: uuid_field(before, "id")?,
            version: i64::MAX,
        }));
    }
    if !matches!(op, "c" | "u" | "r") {
        return Err(format!("unknown op {op:?}"));
    }
    let row = envelope["after"]
        .as_object()
        .ok_or("change without after")?;
    let id = uuid_field(row, "id")?;
    let version = row
        .get("version")
        .and_then(Value::as_i64)
        .ok_or("version missing")?;
    match kind {
        Kind::Patient => {
            if !row.get("archived_at").is_none_or(Value::is_null) {
                return Ok(Parsed::Op(IndexOp::Delete { kind, id, version }));
            }
            let days = row
                .get("birth_date")
                .and_then(Value::as_i64)
                .ok_or("birth_date missing")?;
            let birth_date = NaiveDate::default()
                .checked_add_signed(chrono::Duration::days(days))
                .ok_or("birth_date out of range")?;
            Ok(Parsed::Op(IndexOp::Patient(PatientEntry {
                id,
                version,
                first_name: text_field(row, "first_name")?,
                middle_name: row
                    .get("middle_name")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                last_name: text_field(row, "last_name")?,
                birth_date,
            })))
        }
        Kind::Document => {
            let unavailable = ["title", "body"]
                .iter()
                .any(|name| row.get(*name).and_then(Value::as_str) == Some(UNAVAILABLE));
            if unavailable {
                return Ok(Parsed::Reload(id));
            }
            let created_at = row
                .get("created_at")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or("created_at missing")?;
            Ok(Parsed::Op(IndexOp::Document(DocumentEntry {
                id,
                version,
                patient_id: uuid_field(row, "patient_id")?,
                author_id: uuid_field(row, "author_id")?,
                doc_type: text_field(row, "doc_type")?,
                status: text_field(row, "status")?,
                title: text_field(row, "title")?,
                body: text_field(row, "body")?,
                created_at,
            })))
        }
    }
}

fn text_field(row: &Map<String, Value>, name: &str) -> Result<String, String> {
    row.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{name} missing"))
}

fn uuid_field(row: &Map<String, Value>, name: &str) -> Result<Uuid, String> {
    row.get(name)
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{name} is not a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(topic: &str, payload: Option<Value>, key: Option<Value>) -> Inbound {
        Inbound {
            topic: topic.into(),
            source_topic: topic.into(),
            partition: 0,
            offset: 0,
            key: key.map(|k| serde_json::to_vec(&k).unwrap()),
            payload: payload.map(|p| serde_json::to_vec(&p).unwrap()),
            headers: vec![],
            attempt: 0,
            not_before_ms: None,
        }
    }

    #[test]
    fn patient_changes_become_upserts_and_archives_deletes() {
        let id = Uuid::new_v4();
        let row = json!({"id": id, "first_name": "Анна", "middle_name": null,
            "last_name": "Иванова", "birth_date": 5551, "archived_at": null, "version": 3});
        let Ok(Parsed::Op(IndexOp::Patient(p))) = parse(&message(
            "medflow.public.patients",
            Some(json!({"op": "u", "after": row, "before": null})),
            None,
        )) else {
            panic!("not an upsert")
        };
        assert_eq!(p.birth_date, NaiveDate::from_ymd_opt(1985, 3, 14).unwrap());
        assert_eq!(p.version, 3);
        let mut archived = row.clone();
        archived["archived_at"] = json!("2026-11-25T10:00:00.000000Z");
        archived["version"] = json!(4);
        assert!(matches!(
            parse(&message(
                "medflow.public.patients",
                Some(json!({"op": "u", "after": archived})),
                None
            )),
            Ok(Parsed::Op(IndexOp::Delete { version: 4, .. }))
        ));
        assert!(matches!(
            parse(&message(
                "medflow.public.patients",
                None,
                Some(json!({"id": id}))
            )),
            Ok(Parsed::Op(IndexOp::Delete {
                version: i64::MAX,
                ..
            }))
        ));
        assert!(matches!(
            parse(&message(
                "medflow.public.doctors",
                Some(json!({"op": "c"})),
                None
            )),
            Ok(Parsed::Skip)
        ));
        assert!(
            parse(&message(
                "medflow.public.patients",
                Some(json!({"op": "u", "after": {"id": "x"}})),
                None
            ))
            .is_err()
        );
    }

    #[test]
    fn a_document_without_its_toasted_body_is_reloaded() {
        let id = Uuid::new_v4();
        let row = json!({"id": id, "version": 5, "body": UNAVAILABLE, "title": "t"});
        assert!(matches!(
            parse(&message("medflow.public.documents", Some(json!({"op": "u", "after": row})), None)),
            Ok(Parsed::Reload(found)) if found == id
        ));
    }
}
