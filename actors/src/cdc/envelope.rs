//! Turns decoded row changes into Kafka records in Debezium's wire format, and outbox rows
//! into business events (DESIGN.md, "Events").
//!
//! Column values follow Debezium's PostgreSQL defaults where JSON allows: booleans and
//! integers as JSON values, `date` as days since the epoch, `timestamp` as microseconds since
//! the epoch, `timestamptz` as an ISO-8601 string in UTC, `json`/`jsonb` as their text,
//! `bytea` as base64; `numeric` as a string (`decimal.handling.mode=string`). The replication
//! session pins `DateStyle=ISO` and `TimeZone=UTC`, which the parsers rely on.

use base64::Engine;
use chrono::{NaiveDate, NaiveDateTime};
use serde_json::{Map, Value, json};

use super::pgoutput::{Datum, Relation};
use crate::bus::producer::OutgoingRecord;

/// Debezium's placeholder for an unchanged TOASTed value it did not receive.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a PostgreSQL time (µs since 2000-01-01) to Unix milliseconds.
pub fn pg_time_to_unix_ms(pg_micros: i64) -> i64 {
    (pg_micros + PG_EPOCH_OFFSET_MICROS) / 1000
}

/// Returns one column value as Debezium writes it.
pub fn value_json(type_oid: u32, text: &str) -> Value {
    let parsed = match type_oid {
        16 => Some(Value::Bool(text == "t")),
        20 | 21 | 23 => text.parse::<i64>().ok().map(Value::from),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        1082 => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(|date| Value::from((date - NaiveDate::default()).num_days())),
        1114 => NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|time| Value::from(time.and_utc().timestamp_micros())),
        1184 => parse_timestamptz(text)
            .map(|time| Value::from(time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())),
        17 => text
            .strip_prefix("\\x")
            .and_then(|hex_digits| hex::decode(hex_digits).ok())
            .map(|bytes| Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::from(text))
}

pub(crate) fn parse_timestamptz(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    // ISO DateStyle prints `2026-11-24 10:00:00.123456+00` (minutes only when non-zero).
    let bytes = text.as_bytes();
    let hours_only = bytes.len() > 3
        && matches!(bytes[bytes.len() - 3], b'+' | b'-')
        && bytes[bytes.len() - 2..].iter().all(u8::is_ascii_digit);
    let normalised = if hours_only {
        format!("{text}:00")
    } else {
        text.to_owned()
    };
    chrono::DateTime::parse_from_str(&normalised, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|time| time.to_utc())
}

/// A row as a JSON object, by column name.
pub fn row_json(relation: &Relation, values: &[Datum]) -> Map<String, Value> {
    relation
        .columns
        .iter()
        .zip(values)
        .map(|(column, datum)| {
            let value = match datum {
                Datum::Null => Value::Null,
                Datum::Unchanged => Value::from(UNAVAILABLE),
                Datum::Text(text) => value_json(column.type_oid, text),
            };
            (column.name.clone(), value)
        })
        .collect()
}

/// The Debezium release whose PostgreSQL envelope the change records follow, in Debezium's
/// own form (`source.version`); medflow's version travels in the `medflow-version` header.
pub const DEBEZIUM_VERSION: &str = "2.7.0.Final";

/// Where a change happened, for the envelope's `source`.
#[derive(Debug, Clone)]
pub struct SourceInfo<'a> {
    /// The logical server name (Debezium's `topic.prefix`).
    pub name: &'a str,
    pub db: &'a str,
    pub lsn: u64,
    /// The end of the last transaction committed before this change (Debezium's
    /// `lastCommitLsn`, the first half of `sequence`); `None` when not known.
    pub last_commit_lsn: Option<u64>,
    pub tx_id: u32,
    pub ts_ms: i64,
    /// `"first"` on the snapshot's first row, `"true"` while snapshotting, `"last"` on its
    /// last row, `"false"` when streaming (Debezium's markers).
    pub snapshot: &'a str,
    /// The change's place in its transaction, with transaction metadata enabled.
    pub transaction: Option<TransactionPosition<'a>>,
}

/// The envelope's `transaction` block (Debezium's `provide.transaction.metadata`).
#[derive(Debug, Clone, Copy)]
pub struct TransactionPosition<'a> {
    /// `<txId>:<commit LSN>`, the same on the transaction's `BEGIN` and `END` records.
    pub id: &'a str,
    /// The change's position among all of its transaction's changes, from 1.
    pub total_order: u64,
    /// Its position among its transaction's changes of the same table, from 1.
    pub data_collection_order: u64,
}

/// The Debezium operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// The records of one row change on `medflow.public.<table>`: the envelope, and after a
/// delete, a tombstone with the same key.
pub fn change_records(
    topic: String,
    relation: &Relation,
    op: Op,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    source: &SourceInfo<'_>,
    now_ms: i64,
) -> Vec<OutgoingRecord> {
    let image = after.as_ref().or(before.as_ref());
    let key: Map<String, Value> = relation
        .columns
        .iter()
        .filter(|column| column.key)
        .map(|column| {
            let value = image
                .and_then(|row| row.get(&column.name))
                .cloned()
                .unwrap_or(Value::Null);
            (column.name.clone(), value)
        })
        .collect();
    let key = serde_json::to_vec(&key).ok();
    let mut envelope = json!({
        "before": before,
        "after": after,
        "source": {
            "version": DEBEZIUM_VERSION,
            "connector": "postgresql",
            "name": source.name,
            "ts_ms": source.ts_ms,
            "snapshot": source.snapshot,
            "db": source.db,
            "schema": relation.schema,
            "table": relation.table,
            "sequence": sequence(source.last_commit_lsn, source.lsn),
            "txId": source.tx_id,
            "lsn": source.lsn,
            // Debezium fills it only with `xmin.fetch.interval.ms` set; pgoutput never says.
            "xmin": Value::Null,
        },
        "op": op.code(),
        "ts_ms": now_ms,
    });
    if let (Some(position), Some(object)) = (source.transaction, envelope.as_object_mut()) {
        object.insert(
            "transaction".into(),
            json!({
                "id": position.id,
                "total_order": position.total_order,
                "data_collection_order": position.data_collection_order,
            }),
        );
    }
    let mut records = vec![OutgoingRecord {
        topic: topic.clone(),
        key: key.clone(),
        payload: serde_json::to_vec(&envelope).ok(),
        headers: vec![(
            "medflow-version".to_owned(),
            env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
        )],
    }];
    if op == Op::Delete {
        records.push(OutgoingRecord {
            topic,
            key,
            payload: None,
            headers: Vec::new(),
        });
    }
    records
}

/// A transaction's boundary on the transaction topic (`<server_name>.transaction`), as
/// Debezium writes it: `BEGIN` with null counts, `END` with the number of change events and
/// their count per table (`<schema>.<table>`). The key is `{"id": …}`.
pub fn transaction_record(
    topic: String,
    id: &str,
    ts_ms: i64,
    end: Option<&std::collections::BTreeMap<String, u64>>,
) -> OutgoingRecord {
    let (status, event_count, data_collections) = match end {
        None => ("BEGIN", Value::Null, Value::Null),
        Some(counts) => (
            "END",
            Value::from(counts.values().sum::<u64>()),
            counts
                .iter()
                .map(|(collection, count)| {
                    json!({"data_collection": collection, "event_count": count})
                })
                .collect(),
        ),
    };
    let value = json!({
        "status": status,
        "id": id,
        "ts_ms": ts_ms,
        "event_count": event_count,
        "data_collections": data_collections,
    });
    OutgoingRecord {
        topic,
        key: serde_json::to_vec(&json!({ "id": id })).ok(),
        payload: serde_json::to_vec(&value).ok(),
        headers: vec![(
            "medflow-version".to_owned(),
            env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
        )],
    }
}

/// Debezium's `source.sequence`: a JSON array of two decimal LSN strings, as a string —
/// the last commit's end (or null) and this change's position.
fn sequence(last_commit_lsn: Option<u64>, lsn: u64) -> String {
    let pair = [
        last_commit_lsn.map(|lsn| lsn.to_string()),
        Some(lsn.to_string()),
    ];
    serde_json::to_string(&pair).unwrap_or_default()
}

/// Why an outbox row cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox row unusable: {0}")]
pub struct OutboxError(pub String);

/// The business event of an inserted outbox row (as [`row_json`] decoded it), on the topic
/// named by its event type.
pub fn outbox_record(
    topic_prefix: &str,
    row: &Map<String, Value>,
) -> Result<OutgoingRecord, OutboxError> {
    let text = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| OutboxError(format!("{name} is missing")))
    };
    let event_id = text("id")?;
    let event_type = text("event_type")?;
    let aggregate_id = text("aggregate_id")?;
    let patient_id = row.get("patient_id").and_then(Value::as_str);
    let payload: Value = serde_json::from_str(text("payload")?)
        .map_err(|error| OutboxError(format!("payload is not JSON: {error}")))?;
    let value = json!({
        "eventId": event_id,
        "eventType": event_type,
        "eventTimestamp": row.get("created_at").cloned().unwrap_or(Value::Null),
        "aggregateType": text("aggregate_type")?,
        "aggregateId": aggregate_id,
        "patientId": patient_id,
        "version": row.get("version").cloned().unwrap_or(Value::Null),
        "payload": payload,
    });
    let mut headers = vec![
        ("eventType".to_owned(), event_type.as_bytes().to_vec()),
        ("eventId".to_owned(), event_id.as_bytes().to_vec()),
    ];
    if let Some(traceparent) = row.get("traceparent").and_then(Value::as_str) {
        headers.push(("traceparent".to_owned(), traceparent.as_bytes().to_vec()));
    }
    Ok(OutgoingRecord {
        topic: format!("{topic_prefix}{event_type}"),
        // Every event about one patient lands in one partition, in commit order.
        key: Some(patient_id.unwrap_or(aggregate_id).as_bytes().to_vec()),
        payload: serde_json::to_vec(&value).ok(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::pgoutput::decode;

    #[test]
    fn values_follow_debeziums_defaults() {
        assert_eq!(value_json(16, "t"), json!(true));
        assert_eq!(value_json(20, "42"), json!(42));
        assert_eq!(value_json(1082, "1970-01-02"), json!(1));
        assert_eq!(value_json(1082, "1985-03-14"), json!(5551));
        assert_eq!(
            value_json(1184, "2026-11-24 10:00:00.5+00"),
            json!("2026-11-24T10:00:00.500000Z")
        );
        assert_eq!(
            value_json(1184, "2026-11-24 13:00:00+03"),
            json!("2026-11-24T10:00:00.000000Z")
        );
        assert_eq!(value_json(1114, "1970-01-01 00:00:01"), json!(1_000_000));
        assert_eq!(
            value_json(1184, "2026-11-24 07:00:00-03:30"),
            json!("2026-11-24T10:30:00.000000Z")
        );
        assert_eq!(value_json(17, "\\x0102"), json!("AQI="));
        assert_eq!(value_json(1700, "12.50"), json!("12.50"));
        assert_eq!(value_json(3802, r#"{"a": 1}"#), json!(r#"{"a": 1}"#));
        assert_eq!(value_json(2950, "7d9f…"), json!("7d9f…"));
    }

    /// The test relation (`patients`: `id`, `last_name`) and one row of it.
    fn patient_row() -> (Relation, Map<String, Value>) {
        let crate::cdc::pgoutput::PgOutput::Relation(relation) =
            decode(crate::cdc::pgoutput::tests::relation_message()).unwrap()
        else {
            panic!("the test message is a relation")
        };
        let row = row_json(
            &relation,
            &[Datum::Text("p-1".into()), Datum::Text("Иванова".into())],
        );
        (relation, row)
    }

    #[test]
    fn a_delete_is_an_envelope_then_a_tombstone_with_the_same_key() {
        let (relation, before) = patient_row();
        let source = SourceInfo {
            name: "medflow",
            db: "medflow",
            lsn: 100,
            last_commit_lsn: Some(90),
            tx_id: 7,
            ts_ms: 1,
            snapshot: "false",
            transaction: None,
        };
        let records = change_records(
            "medflow.public.patients".into(),
            &relation,
            Op::Delete,
            Some(before),
            None,
            &source,
            2,
        );
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].key.as_deref(),
            Some(br#"{"id":"p-1"}"#.as_slice())
        );
        assert_eq!(records[1].key, records[0].key);
        assert_eq!(records[1].payload, None);
        let envelope: Value = serde_json::from_slice(records[0].payload.as_ref().unwrap()).unwrap();
        assert_eq!(envelope["op"], "d");
        assert_eq!(envelope["after"], Value::Null);
        assert_eq!(envelope["before"]["last_name"], "Иванова");
        assert_eq!(envelope["source"]["table"], "patients");
        assert_eq!(envelope["source"]["lsn"], 100);
    }

    /// The `source` block of Debezium 2.x's PostgreSQL connector, field by field as its
    /// documentation lists them (`ts_us`/`ts_ns` of 2.6+ aside), with the value types a
    /// consumer parses: `sequence` a string holding a JSON array of two LSN strings.
    #[test]
    fn the_source_block_has_debeziums_fields_and_types() {
        let (relation, after) = patient_row();
        for (snapshot, last_commit_lsn, sequence) in [
            ("false", Some(24_023_119), r#"["24023119","24023128"]"#),
            ("first", None, r#"[null,"24023128"]"#),
            ("last", None, r#"[null,"24023128"]"#),
        ] {
            let source = SourceInfo {
                name: "fulfillment",
                db: "postgres",
                lsn: 24_023_128,
                last_commit_lsn,
                tx_id: 555,
                ts_ms: 1_559_033_904_863,
                snapshot,
                transaction: None,
            };
            let records = change_records(
                "fulfillment.public.patients".into(),
                &relation,
                Op::Create,
                None,
                Some(after.clone()),
                &source,
                1_559_033_904_863,
            );
            let envelope: Value =
                serde_json::from_slice(records[0].payload.as_ref().unwrap()).unwrap();
            let documented = [
                "version",
                "connector",
                "name",
                "ts_ms",
                "snapshot",
                "db",
                "sequence",
                "schema",
                "table",
                "txId",
                "lsn",
                "xmin",
            ];
            let source = envelope["source"].as_object().unwrap();
            let mut keys: Vec<&str> = source.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut expected = documented.to_vec();
            expected.sort_unstable();
            assert_eq!(keys, expected);
            let version = source["version"].as_str().unwrap();
            assert!(version.ends_with(".Final"), "Debezium's form: {version}");
            assert_eq!(source["connector"], "postgresql");
            assert_eq!(source["name"], "fulfillment");
            assert_eq!(source["ts_ms"], 1_559_033_904_863_i64);
            assert_eq!(source["snapshot"], snapshot);
            assert_eq!(source["db"], "postgres");
            assert_eq!(source["sequence"], sequence);
            let pair: Vec<Option<String>> =
                serde_json::from_str(source["sequence"].as_str().unwrap()).unwrap();
            assert_eq!(pair.len(), 2);
            assert_eq!(source["schema"], "public");
            assert_eq!(source["table"], "patients");
            assert_eq!(source["txId"], 555);
            assert_eq!(source["lsn"], 24_023_128);
            assert_eq!(source["xmin"], Value::Null);
            let mut top: Vec<&str> = envelope
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            top.sort_unstable();
            assert_eq!(top, ["after", "before", "op", "source", "ts_ms"]);
            assert_eq!(envelope["op"], "c");
            let headers: Vec<&str> = records[0].headers.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                headers,
                ["medflow-version"],
                "medflow names itself in a header"
            );
        }
    }

    /// Debezium's transaction metadata, as its documentation shows it: the envelope's
    /// `transaction` block, and `BEGIN`/`END` records keyed by the transaction id.
    #[test]
    fn transaction_metadata_has_debeziums_fields() {
        let (relation, after) = patient_row();
        let source = SourceInfo {
            name: "fulfillment",
            db: "postgres",
            lsn: 53_195_829,
            last_commit_lsn: None,
            tx_id: 571,
            ts_ms: 1_580_390_884_335,
            snapshot: "false",
            transaction: Some(TransactionPosition {
                id: "571:53195832",
                total_order: 1,
                data_collection_order: 1,
            }),
        };
        let records = change_records(
            "fulfillment.public.patients".into(),
            &relation,
            Op::Create,
            None,
            Some(after),
            &source,
            1_580_390_884_335,
        );
        let envelope: Value = serde_json::from_slice(records[0].payload.as_ref().unwrap()).unwrap();
        assert_eq!(
            envelope["transaction"],
            json!({"id": "571:53195832", "total_order": 1, "data_collection_order": 1})
        );

        let begin = transaction_record("fulfillment.transaction".into(), "571:53195832", 1, None);
        let mut counts = std::collections::BTreeMap::new();
        counts.insert("s1.a".to_owned(), 1);
        counts.insert("s2.a".to_owned(), 1);
        let end = transaction_record(
            "fulfillment.transaction".into(),
            "571:53195832",
            2,
            Some(&counts),
        );
        let value = |record: &OutgoingRecord| -> Value {
            serde_json::from_slice(record.payload.as_ref().unwrap()).unwrap()
        };
        assert_eq!(
            value(&begin),
            json!({"status": "BEGIN", "id": "571:53195832", "ts_ms": 1,
                   "event_count": null, "data_collections": null})
        );
        assert_eq!(
            value(&end),
            json!({"status": "END", "id": "571:53195832", "ts_ms": 2, "event_count": 2,
                   "data_collections": [
                       {"data_collection": "s1.a", "event_count": 1},
                       {"data_collection": "s2.a", "event_count": 1}]})
        );
        assert_eq!(
            begin.key.as_deref(),
            Some(br#"{"id":"571:53195832"}"#.as_slice())
        );
        assert_eq!(end.key, begin.key);
    }

    #[test]
    fn an_outbox_row_becomes_a_keyed_business_event_with_headers() {
        let row: Map<String, Value> = serde_json::from_value(json!({
            "id": "e-1", "aggregate_type": "patient", "aggregate_id": "p-1", "patient_id": "p-1",
            "event_type": "PatientCreated", "version": 1,
            "payload": r#"{"id": "p-1", "firstName": "Анна"}"#,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "created_at": "2026-11-24T10:00:00.000000Z",
        }))
        .unwrap();
        let record = outbox_record("", &row).unwrap();
        assert_eq!(record.topic, "PatientCreated");
        assert_eq!(record.key.as_deref(), Some(b"p-1".as_slice()));
        let names: Vec<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["eventType", "eventId", "traceparent"]);
        let value: Value = serde_json::from_slice(record.payload.as_ref().unwrap()).unwrap();
        assert_eq!(value["payload"]["firstName"], "Анна");
        assert_eq!(value["eventTimestamp"], "2026-11-24T10:00:00.000000Z");
        let mut broken = row.clone();
        broken.insert("payload".into(), json!("{not json"));
        assert!(outbox_record("", &broken).is_err());
    }
}
