//! The AsyncAPI 3.0 document of every Kafka channel medflow uses under a configuration:
//! business topics, change topics, the transaction topic, and each consumer group's retry
//! and dead-letter topics — keys, headers and a payload schema per event type. Built from
//! the channel catalogue ([`crate::channels`]) and the domain's names; served at
//! `GET /api/v1/asyncapi.json` and printed by `medflow asyncapi`. An end-to-end test checks
//! real events of every type against it, and `@asyncapi/parser` validates it.

use medflow_actors::cdc::envelope::DEBEZIUM_VERSION;
use medflow_actors::consume::{
    H_ATTEMPT, H_ERROR, H_NOT_BEFORE, H_ORIGINAL_TOPIC, H_REPLAYED_FROM,
};
use medflow_actors::domain::{AppointmentAction, AppointmentStatus, DocumentStatus, DocumentType};
use serde_json::{Map, Value, json};

use crate::channels::{Channel, ChannelKind, channels};
use crate::config::Settings;

const KAFKA_BINDING_VERSION: &str = "0.5.0";

/// The document for `settings` (topic prefix, server name, retry schedule and groups are
/// the configuration's).
pub fn document(settings: &Settings) -> Value {
    let all = channels(settings);
    let mut channel_map = Map::new();
    let mut operations = Map::new();
    let consumed: Vec<(String, Vec<String>)> = settings
        .consumer_specs()
        .into_iter()
        .map(|spec| (settings.kafka().topic(&spec.name), spec.topics))
        .collect();
    let hub_reads_business = settings.graphql.enabled && settings.graphql.subscriptions;
    for channel in &all {
        // A channel's id is its topic: unique, and fit for an operation id.
        let id = channel.address.clone();
        channel_map.insert(
            id.clone(),
            channel_object(settings, channel, &all, &consumed),
        );
        let reference = json!({ "$ref": format!("#/channels/{}", escape(&id)) });
        operations.insert(
            format!("send.{id}"),
            json!({
                "action": "send",
                "channel": reference,
                "summary": send_summary(&channel.kind),
            }),
        );
        let readers: Vec<&str> = consumed
            .iter()
            .filter(|(group, sources)| {
                sources.contains(&channel.address)
                    || matches!(&channel.kind, ChannelKind::Retry { group: g, .. } if g == group)
            })
            .map(|(group, _)| group.as_str())
            .chain(
                (hub_reads_business && matches!(channel.kind, ChannelKind::Business { .. }))
                    .then_some("the GraphQL subscription hub"),
            )
            .collect();
        if !readers.is_empty() {
            operations.insert(
                format!("receive.{id}"),
                json!({
                    "action": "receive",
                    "channel": reference,
                    "summary": format!("Read by {}", readers.join(", ")),
                }),
            );
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "id": "urn:medflow:events",
        "info": {
            "title": "medflow events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What medflow writes to Kafka and reads from it. Every write is one \
                PostgreSQL transaction; the CDC reader streams the WAL to the change topics \
                (Debezium's PostgreSQL envelope) and routes outbox rows to the business \
                topics, at least once and in commit order per key. Consumers de-duplicate by \
                `eventId` (business events) or by the row's version (change events). Each of \
                medflow's consumer groups retries a failed message through its own delayed \
                retry topics, then its dead-letter topic.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": settings.kafka.brokers,
                "protocol": "kafka",
                "description": "The configured bootstrap brokers (kafka.brokers).",
            }
        },
        "channels": channel_map,
        "operations": operations,
        "components": {
            "messages": messages(),
            "schemas": schemas(),
        },
    })
}

/// JSON Pointer escaping (RFC 6901) of a map key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

fn channel_object(
    settings: &Settings,
    channel: &Channel,
    all: &[Channel],
    consumed: &[(String, Vec<String>)],
) -> Value {
    let messages: Map<String, Value> = match &channel.kind {
        ChannelKind::Change { .. } => [
            ("change".to_owned(), message_ref("ChangeEvent")),
            ("tombstone".to_owned(), message_ref("Tombstone")),
        ]
        .into_iter()
        .collect(),
        ChannelKind::Transaction => {
            [("transaction".to_owned(), message_ref("TransactionBoundary"))]
                .into_iter()
                .collect()
        }
        ChannelKind::Business { event } => [((*event).to_owned(), message_ref(event))]
            .into_iter()
            .collect(),
        ChannelKind::Retry { group, .. } | ChannelKind::DeadLetter { group } => {
            // The group's source messages, unchanged, with the retry headers added.
            let sources = consumed
                .iter()
                .find(|(name, _)| name == group)
                .map(|(_, sources)| sources.as_slice())
                .unwrap_or_default();
            let dead = matches!(channel.kind, ChannelKind::DeadLetter { .. });
            let mut messages = Map::new();
            for source in all.iter().filter(|c| sources.contains(&c.address)) {
                let names: Vec<String> = match &source.kind {
                    ChannelKind::Change { .. } => vec!["ChangeEvent".into()],
                    ChannelKind::Business { event } => vec![(*event).to_owned()],
                    _ => Vec::new(),
                };
                for name in names {
                    // One message per source topic: its headers name that topic.
                    let key = format!(
                        "{}.{}",
                        if dead { "deadLetter" } else { "retried" },
                        source.address
                    );
                    messages.insert(key, retried_message(&name, dead, source));
                }
            }
            messages
        }
    };
    json!({
        "address": channel.address,
        "title": channel.address,
        "description": channel.kind.describe(),
        "messages": messages,
        "bindings": {
            "kafka": {
                "topic": channel.address,
                "partitions": settings.kafka.partitions,
                "replicas": settings.kafka.replication_factor,
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    })
}

/// A source message as it travels on a retry or dead-letter topic: its key and value
/// unchanged, its headers plus the retry headers.
fn retried_message(name: &str, dead: bool, source: &Channel) -> Value {
    let mut headers = retry_headers(dead);
    if let Some(original) = headers.pointer_mut("/properties") {
        original[H_ORIGINAL_TOPIC]["const"] = json!(source.address);
    }
    json!({
        "name": if dead { format!("DeadLetter{name}") } else { format!("Retried{name}") },
        "title": format!("{name} from {}", source.address),
        "contentType": "application/json",
        "headers": headers,
        "payload": message_payload(name),
    })
}

fn retry_headers(dead: bool) -> Value {
    let mut required = vec![H_ORIGINAL_TOPIC, H_ATTEMPT, H_ERROR];
    if !dead {
        required.push(H_NOT_BEFORE);
    }
    json!({
        "type": "object",
        "description": "The original message's headers are kept; these are added.",
        "required": required,
        "properties": {
            H_ORIGINAL_TOPIC: { "type": "string", "description": "The topic the message first arrived on" },
            H_ATTEMPT: { "type": "string", "pattern": "^[1-9][0-9]*$", "description": "Failed attempts so far (decimal)" },
            H_ERROR: { "type": "string", "description": "The last failure, as the handler described it" },
            H_NOT_BEFORE: { "type": "string", "pattern": "^[0-9]+$", "description": "Unix milliseconds before which the retry is not processed" },
            H_REPLAYED_FROM: { "type": "string", "description": "On a replayed message: the dead-letter topic it came from" },
        },
    })
}

/// The payload a message named `name` carries (a schema reference).
fn message_payload(name: &str) -> Value {
    match name {
        "ChangeEvent" => json!({ "$ref": "#/components/schemas/ChangeEnvelope" }),
        event => json!({ "$ref": format!("#/components/schemas/{event}") }),
    }
}

fn send_summary(kind: &ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Change { .. } | ChannelKind::Transaction => {
            "Written by the CDC reader from the WAL"
        }
        ChannelKind::Business { .. } => "Written by the CDC reader from the outbox",
        ChannelKind::Retry { .. } => "Written by the group's consumer when a message fails",
        ChannelKind::DeadLetter { .. } => {
            "Written by the group's consumer when a message fails for good"
        }
    }
}

/// What each business event is about, and its key's meaning.
const BUSINESS: [(&str, &str); 11] = [
    ("PatientCreated", "A patient was registered"),
    ("PatientUpdated", "A patient's data changed"),
    ("PatientDeleted", "A patient was archived"),
    ("AppointmentScheduled", "An appointment was booked"),
    (
        "AppointmentStatusChanged",
        "An appointment was started, completed, cancelled or rescheduled",
    ),
    ("DocumentCreated", "A document draft was created"),
    (
        "DocumentUpdated",
        "A draft was edited, or the document was sent to the registry",
    ),
    ("DocumentSigned", "A document was signed"),
    (
        "DocumentRegistryAccepted",
        "The federal registry accepted a document",
    ),
    (
        "DocumentRegistryRejected",
        "The federal registry rejected a document",
    ),
    (
        "ErrorOccurred",
        "An outbox row could not be published as its event (CDC_UNPUBLISHABLE_EVENT)",
    ),
];

fn messages() -> Value {
    let mut messages = Map::new();
    for (event, summary) in BUSINESS {
        let error = event == "ErrorOccurred";
        messages.insert(
            event.to_owned(),
            json!({
                "name": event,
                "title": event,
                "summary": summary,
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "required": if error { json!(["eventType"]) } else { json!(["eventType", "eventId"]) },
                    "properties": {
                        "eventType": { "type": "string", "const": event },
                        "eventId": { "type": "string", "format": "uuid" },
                        "traceparent": {
                            "type": "string",
                            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                            "description": "W3C trace context of the request that made the change, when it had one",
                        },
                    },
                },
                "payload": message_payload(event),
                "correlationId": { "location": "$message.payload#/eventId" },
                "bindings": {
                    "kafka": {
                        "key": if error {
                            json!({ "type": "null", "description": "No key" })
                        } else {
                            json!({ "type": "string", "format": "uuid", "description": "The patient's id (the aggregate's id for events about no patient)" })
                        },
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            }),
        );
    }
    messages.insert(
        "ChangeEvent".into(),
        json!({
            "name": "ChangeEvent",
            "title": "Debezium change event",
            "summary": "A row inserted (c), updated (u), deleted (d) or read by the initial snapshot (r)",
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": { "medflow-version": { "type": "string", "description": "The medflow release that wrote it" } },
            },
            "payload": { "$ref": "#/components/schemas/ChangeEnvelope" },
            "bindings": {
                "kafka": {
                    "key": { "type": "string", "contentMediaType": "application/json", "description": "The row's primary key as a JSON object, e.g. {\"id\": \"…\"}" },
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }),
    );
    messages.insert(
        "Tombstone".into(),
        json!({
            "name": "Tombstone",
            "title": "Tombstone",
            "summary": "Follows a delete with the same key and no value, so compaction may drop the row",
            "payload": { "type": "null" },
            "bindings": { "kafka": { "key": { "type": "string", "contentMediaType": "application/json" }, "bindingVersion": KAFKA_BINDING_VERSION } },
        }),
    );
    messages.insert(
        "TransactionBoundary".into(),
        json!({
            "name": "TransactionBoundary",
            "title": "Transaction boundary",
            "summary": "BEGIN (null counts) or END (change events per table) of a transaction",
            "contentType": "application/json",
            "payload": { "$ref": "#/components/schemas/TransactionBoundary" },
            "bindings": { "kafka": { "key": { "type": "string", "contentMediaType": "application/json", "description": "{\"id\": <transaction id>}" }, "bindingVersion": KAFKA_BINDING_VERSION } },
        }),
    );
    Value::Object(messages)
}

fn names(all: &[&str]) -> Value {
    json!(all)
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

/// An event value: the envelope the integration profile fixes, around `payload`.
fn event(event_type: &str, aggregate: &str, payload: Value) -> Value {
    object(
        &[
            "eventId",
            "eventType",
            "eventTimestamp",
            "aggregateType",
            "aggregateId",
            "patientId",
            "version",
            "payload",
        ],
        json!({
            "eventId": { "type": "string", "format": "uuid" },
            "eventType": { "const": event_type },
            "eventTimestamp": { "type": "string", "format": "date-time" },
            "aggregateType": { "const": aggregate },
            "aggregateId": { "type": "string", "format": "uuid" },
            "patientId": { "type": "string", "format": "uuid", "description": "The patient the event is about" },
            "version": { "type": "integer", "minimum": 1, "description": "The aggregate's version after the change" },
            "payload": payload,
        }),
    )
}

fn schemas() -> Value {
    let uuid = json!({ "type": "string", "format": "uuid" });
    let nullable_uuid = json!({ "type": ["string", "null"], "format": "uuid" });
    let time = json!({ "type": "string", "format": "date-time" });
    let nullable = |ty: &str| json!({ "type": [ty, "null"] });
    let appointment_status = json!({ "enum": names(AppointmentStatus::names()) });
    let document = |extra: &[(&str, Value)], required: &[&str]| {
        let mut properties = json!({
            "id": uuid,
            "patientId": uuid,
            "type": { "enum": names(DocumentType::names()) },
            "status": { "enum": names(DocumentStatus::names()) },
            "contentVersion": { "type": "integer", "minimum": 1 },
            "contentUri": { "type": "string", "pattern": "^/api/v1/documents/[0-9a-f-]{36}$", "description": "Where consumers read the document (payloads carry no clinical text)" },
        });
        for (name, schema) in extra {
            properties[*name] = schema.clone();
        }
        let mut all = vec![
            "id",
            "patientId",
            "type",
            "status",
            "contentVersion",
            "contentUri",
        ];
        all.extend_from_slice(required);
        object(&all, properties)
    };
    let appointment = |changed: bool| {
        let mut properties = json!({
            "id": uuid,
            "patientId": uuid,
            "doctorId": uuid,
            "scheduledDate": time,
            "durationMinutes": { "type": "integer", "minimum": 5, "maximum": 240 },
            "status": appointment_status,
        });
        let mut required = vec![
            "id",
            "patientId",
            "doctorId",
            "scheduledDate",
            "durationMinutes",
            "status",
        ];
        if changed {
            properties["previousStatus"] = appointment_status.clone();
            properties["action"] = json!({ "enum": AppointmentAction::EVENT_NAMES });
            properties["reason"] =
                json!({ "type": "string", "description": "A cancellation's reason" });
            required.extend(["previousStatus", "action"]);
        }
        object(&required, properties)
    };
    let patient = object(
        &[
            "id",
            "firstName",
            "middleName",
            "lastName",
            "birthDate",
            "email",
            "snils",
            "omsPolicy",
            "archivedAt",
            "version",
            "createdAt",
            "updatedAt",
        ],
        json!({
            "id": uuid,
            "firstName": { "type": "string" },
            "middleName": nullable("string"),
            "lastName": { "type": "string" },
            "birthDate": { "type": "string", "format": "date" },
            "email": nullable("string"),
            "snils": { "type": ["string", "null"], "pattern": "^[0-9]{11}$" },
            "omsPolicy": { "type": ["string", "null"], "pattern": "^[0-9]{16}$" },
            "archivedAt": { "type": ["string", "null"], "format": "date-time" },
            "version": { "type": "integer", "minimum": 1 },
            "createdAt": time,
            "updatedAt": time,
        }),
    );
    let updated_fields_object = json!({ "type": "object", "description": "The changed fields with their new values (null: cleared)" });
    let updated_fields_list = json!({ "type": "array", "items": { "type": "string" }, "minItems": 1, "description": "The names of the changed fields" });
    json!({
        "PatientCreated": event("PatientCreated", "patient", patient),
        "PatientUpdated": event("PatientUpdated", "patient", object(&["id", "updatedFields"], json!({ "id": uuid, "updatedFields": updated_fields_object }))),
        "PatientDeleted": event("PatientDeleted", "patient", object(&["id"], json!({ "id": uuid }))),
        "AppointmentScheduled": event("AppointmentScheduled", "appointment", appointment(false)),
        "AppointmentStatusChanged": event("AppointmentStatusChanged", "appointment", appointment(true)),
        "DocumentCreated": event("DocumentCreated", "document", document(&[
            ("createdAt", time.clone()),
            ("authorId", uuid.clone()),
            ("appointmentId", nullable_uuid.clone()),
        ], &["createdAt", "authorId", "appointmentId"])),
        "DocumentUpdated": event("DocumentUpdated", "document", document(&[("updatedFields", updated_fields_list)], &["updatedFields"])),
        "DocumentSigned": event("DocumentSigned", "document", document(&[
            ("signerId", uuid.clone()),
            ("signedAt", time.clone()),
            ("checksum", json!({ "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the signed canonical content, hex" })),
        ], &["signerId", "signedAt", "checksum"])),
        "DocumentRegistryAccepted": event("DocumentRegistryAccepted", "document", document(&[("registryId", json!({ "type": "string", "minLength": 1 }))], &["registryId"])),
        "DocumentRegistryRejected": event("DocumentRegistryRejected", "document", document(&[("reason", json!({ "type": "string", "minLength": 1 }))], &["reason"])),
        "ErrorOccurred": object(
            &["eventId", "eventType", "eventTimestamp", "aggregateType", "aggregateId", "patientId", "version", "payload"],
            json!({
                "eventId": uuid,
                "eventType": { "const": "ErrorOccurred" },
                "eventTimestamp": time,
                "aggregateType": { "const": "outbox" },
                "aggregateId": { "description": "The outbox row's id, or the change's LSN" },
                "patientId": nullable_uuid,
                "version": { "type": "null" },
                "payload": object(&["errorCode", "errorMessage", "relatedEvent"], json!({
                    "errorCode": { "const": "CDC_UNPUBLISHABLE_EVENT" },
                    "errorMessage": { "type": "string" },
                    "relatedEvent": { "description": "The outbox row's id, or the change's LSN" },
                })),
            }),
        ),
        "ChangeEnvelope": {
            "type": "object",
            "additionalProperties": false,
            "required": ["before", "after", "source", "op", "ts_ms"],
            "description": "Debezium's PostgreSQL envelope without schema: row images use Debezium's value conventions (dates as days since the epoch, timestamps as ISO-8601 strings, numerics as numbers, UUIDs and text as strings)",
            "properties": {
                "before": { "type": ["object", "null"], "description": "The row before an update or delete (the replica identity's columns)" },
                "after": { "type": ["object", "null"], "description": "The row after an insert, update or snapshot read" },
                "source": object(
                    &["version", "connector", "name", "ts_ms", "snapshot", "db", "schema", "table", "sequence", "txId", "lsn", "xmin"],
                    json!({
                        "version": { "const": DEBEZIUM_VERSION },
                        "connector": { "const": "postgresql" },
                        "name": { "type": "string", "description": "The logical server name (cdc.server_name)" },
                        "ts_ms": { "type": "integer", "description": "Commit time, Unix milliseconds" },
                        "snapshot": { "enum": ["first", "true", "last", "false"] },
                        "db": { "type": "string" },
                        "schema": { "type": "string" },
                        "table": { "type": "string" },
                        "sequence": { "type": "string", "description": "JSON [lastCommitLsn, lsn] as strings" },
                        "txId": { "type": "integer" },
                        "lsn": { "type": "integer" },
                        "xmin": { "type": "null" },
                    }),
                ),
                "op": { "enum": ["c", "u", "d", "r"] },
                "ts_ms": { "type": "integer", "description": "When medflow processed the change, Unix milliseconds" },
                "transaction": object(&["id", "total_order", "data_collection_order"], json!({
                    "id": { "type": "string" },
                    "total_order": { "type": "integer", "minimum": 1 },
                    "data_collection_order": { "type": "integer", "minimum": 1 },
                })),
            },
        },
        "TransactionBoundary": object(
            &["status", "id", "ts_ms", "event_count", "data_collections"],
            json!({
                "status": { "enum": ["BEGIN", "END"] },
                "id": { "type": "string", "description": "<txId>:<lsn>" },
                "ts_ms": { "type": "integer" },
                "event_count": { "type": ["integer", "null"] },
                "data_collections": {
                    "type": ["array", "null"],
                    "items": object(&["data_collection", "event_count"], json!({
                        "data_collection": { "type": "string" },
                        "event_count": { "type": "integer" },
                    })),
                },
            }),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_and_every_message_it_names_resolves() {
        let mut settings = Settings::load_without_env(None).unwrap();
        settings.registry.url = "https://registry.example/documents".into();
        settings.cdc.provide_transaction_metadata = true;
        let document = document(&settings);
        let channels = document["channels"].as_object().unwrap();
        assert_eq!(channels.len(), crate::channels::channels(&settings).len());
        for (id, channel) in channels {
            assert!(!channel["messages"].as_object().unwrap().is_empty(), "{id}");
            for message in channel["messages"].as_object().unwrap().values() {
                if let Some(reference) = message["$ref"].as_str() {
                    let pointer = reference.trim_start_matches('#');
                    assert!(document.pointer(pointer).is_some(), "{reference}");
                }
            }
        }
        for (id, operation) in document["operations"].as_object().unwrap() {
            let reference = operation["channel"]["$ref"].as_str().unwrap();
            let key = reference.trim_start_matches("#/channels/");
            assert!(channels.contains_key(key), "{id} → {reference}");
        }
        // Every business event has a message and a schema.
        for event in medflow_actors::cdc::reader::EVENT_TYPES {
            assert!(
                document["components"]["messages"][event].is_object(),
                "{event}"
            );
            assert!(
                document["components"]["schemas"][event].is_object(),
                "{event}"
            );
        }
        // The registry submitter's retry topics carry DocumentSigned with retry headers.
        let retried =
            &channels["medflow.registry-submitter.retry.1m"]["messages"]["retried.DocumentSigned"];
        assert_eq!(
            retried["headers"]["properties"][H_ORIGINAL_TOPIC]["const"],
            "DocumentSigned"
        );
    }
}
