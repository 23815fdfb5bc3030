//! The OpenSearch adapter of the search port (the `opensearch` crate).
//!
//! - Two index templates, `<prefix>-patients` and `<prefix>-documents`, put at start: a
//!   Russian text analyzer (standard tokenizer, `ё` → `е`, lower case, Russian stop words and
//!   stemmer) for titles and clinical text, and a name analyzer (standard tokenizer, `ё` →
//!   `е`, lower case) for names, matched with `fuzziness: AUTO` and by prefix. The indices are
//!   created from them on first write.
//! - Writes are `_bulk` requests with `version_type=external` and the row version; they are
//!   searchable after the index's refresh interval (1 s by default) — waiting for it on each
//!   request (`refresh=wait_for`) would cap a consumer at one batch per interval. A 200
//!   answer can still carry failed items, so every item is inspected: `409` (a newer version
//!   is indexed) means stale, `429`/`5xx` transient, anything else (a mapping error)
//!   permanent.
//! - A delete indexes a tombstone (`live: false`) at its version instead of deleting: a real
//!   delete's version is forgotten after `index.gc_deletes` (60 s), and a late event could
//!   then resurrect the document.
//! - A whole request answered `429` or `5xx`, a timeout or an unreachable cluster is tried
//!   again after a short backoff, then transient.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use opensearch::auth::Credentials;
use opensearch::http::request::JsonBody;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::indices::IndicesPutIndexTemplateParts;
use opensearch::{BulkParts, OpenSearch, SearchParts};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Applied, IndexError, IndexOp, Kind, SearchHit, SearchIndex, SearchQuery, SearchResults,
};

/// The version written for a row that no longer exists (OpenSearch's external versions must
/// stay below 2^63 - 1).
const FINAL_VERSION: i64 = 1_000_000_000_000_000_000;
/// Tries of one bulk request refused as a whole (429, 5xx, unreachable), with a backoff
/// growing by `BULK_BACKOFF` each time.
const BULK_ATTEMPTS: u32 = 3;
const BULK_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct OpenSearchSettings {
    /// `http(s)://[user:password@]host:port`.
    pub url: String,
    pub index_prefix: String,
    pub timeout: Duration,
}

pub struct OpenSearchIndex {
    client: OpenSearch,
    patients: String,
    documents: String,
}

impl OpenSearchIndex {
    /// Connects and puts the index templates (idempotent).
    pub async fn connect(settings: OpenSearchSettings) -> anyhow::Result<Self> {
        let mut url = url::Url::parse(&settings.url)?;
        let credentials = (!url.username().is_empty()).then(|| {
            Credentials::Basic(
                url.username().to_owned(),
                url.password().unwrap_or_default().to_owned(),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(settings.timeout)
            .disable_proxy();
        if let Some(credentials) = credentials {
            builder = builder.auth(credentials);
        }
        let index = Self {
            client: OpenSearch::new(builder.build()?),
            patients: format!("{}-patients", settings.index_prefix),
            documents: format!("{}-documents", settings.index_prefix),
        };
        index.put_templates().await?;
        Ok(index)
    }

    fn index_of(&self, kind: Kind) -> &str {
        match kind {
            Kind::Patient => &self.patients,
            Kind::Document => &self.documents,
        }
    }

    async fn put_templates(&self) -> anyhow::Result<()> {
        let analysis = json!({
            "char_filter": {"yo": {"type": "mapping", "mappings": ["ё => е", "Ё => Е"]}},
            "analyzer": {
                "medflow_name": {"type": "custom", "tokenizer": "standard",
                    "char_filter": ["yo"], "filter": ["lowercase"]},
                "medflow_text": {"type": "custom", "tokenizer": "standard",
                    "char_filter": ["yo"],
                    "filter": ["lowercase", "russian_stop", "russian_stemmer"]}
            },
            "filter": {
                "russian_stop": {"type": "stop", "stopwords": "_russian_"},
                "russian_stemmer": {"type": "stemmer", "language": "russian"}
            }
        });
        let templates = [
            (
                &self.patients,
                json!({
                    "dynamic": "strict",
                    "properties": {
                        "live": {"type": "boolean"},
                        "full_name": {"type": "text", "analyzer": "medflow_name"},
                        "birth_date": {"type": "date", "format": "yyyy-MM-dd"}
                    }
                }),
            ),
            (
                &self.documents,
                json!({
                    "dynamic": "strict",
                    "properties": {
                        "live": {"type": "boolean"},
                        "patient_id": {"type": "keyword"},
                        "author_id": {"type": "keyword"},
                        "doc_type": {"type": "keyword"},
                        "status": {"type": "keyword"},
                        "title": {"type": "text", "analyzer": "medflow_text"},
                        "body": {"type": "text", "analyzer": "medflow_text"},
                        "created_at": {"type": "date"}
                    }
                }),
            ),
        ];
        for (name, mappings) in templates {
            let body = json!({
                "index_patterns": [name],
                "template": {
                    "settings": {"analysis": analysis},
                    "mappings": mappings
                }
            });
            let response = self
                .client
                .indices()
                .put_index_template(IndicesPutIndexTemplateParts::Name(name))
                .body(body)
                .send()
                .await?;
            let status = response.status_code();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                anyhow::bail!("index template {name} refused ({status}): {text}");
            }
        }
        Ok(())
    }

    fn source(op: &IndexOp) -> Value {
        match op {
            IndexOp::Patient(p) => json!({
                "live": true,
                "full_name": p.full_name(),
                "birth_date": p.birth_date.to_string(),
            }),
            IndexOp::Document(d) => json!({
                "live": true,
                "patient_id": d.patient_id,
                "author_id": d.author_id,
                "doc_type": d.doc_type,
                "status": d.status,
                "title": d.title,
                "body": d.body,
                "created_at": d.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            }),
            IndexOp::Delete { .. } => json!({"live": false}),
        }
    }

    async fn apply_ops(&self, ops: &[IndexOp]) -> Vec<Result<Applied, IndexError>> {
        let mut body: Vec<Value> = Vec::with_capacity(ops.len() * 2);
        for op in ops {
            let version = if op.version() == i64::MAX {
                FINAL_VERSION
            } else {
                op.version()
            };
            // `external` for upserts (strictly newer wins); a delete may repeat the version
            // it archived at (`external_gte`).
            let version_type = match op {
                IndexOp::Delete { .. } => "external_gte",
                _ => "external",
            };
            body.push(json!({"index": {
                "_index": self.index_of(op.kind()),
                "_id": op.id(),
                "version": version,
                "version_type": version_type,
            }}));
            body.push(Self::source(op));
        }
        let all = |error: IndexError| vec![Err(error); ops.len()];
        // A refused or failed request as a whole is tried again after a short backoff
        // before its operations go to the consumer's retry stages.
        let mut attempt = 0;
        let text = loop {
            attempt += 1;
            let lines: Vec<JsonBody<&Value>> = body.iter().map(JsonBody::new).collect();
            let outcome = match self.client.bulk(BulkParts::None).body(lines).send().await {
                Ok(response) => {
                    let status = response.status_code().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    if status == 429 || status >= 500 {
                        Err(format!("bulk answered {status}"))
                    } else if status >= 400 {
                        let kind = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["error"]["type"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        return all(IndexError::Permanent(format!(
                            "bulk answered {status} {kind}"
                        )));
                    } else {
                        Ok(text)
                    }
                }
                Err(error) => Err(error.to_string()),
            };
            match outcome {
                Ok(text) => break text,
                Err(error) if attempt >= BULK_ATTEMPTS => {
                    return all(IndexError::Transient(error));
                }
                Err(error) => {
                    tracing::warn!(attempt, error = %error, "bulk request failed; trying again");
                    tokio::time::sleep(BULK_BACKOFF * attempt).await;
                }
            }
        };
        let Ok(answer) = serde_json::from_str::<Value>(&text) else {
            return all(IndexError::Transient("bulk answer is not JSON".into()));
        };
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        (0..ops.len())
            .map(|i| {
                let Some(item) = items.get(i) else {
                    return Err(IndexError::Transient("bulk answer lacks an item".into()));
                };
                let result = item
                    .as_object()
                    .and_then(|object| object.values().next())
                    .cloned()
                    .unwrap_or(Value::Null);
                bulk_item_outcome(&result)
            })
            .collect()
    }

    async fn search_query(&self, query: &SearchQuery) -> Result<SearchResults, IndexError> {
        let mut filters = vec![json!({"term": {"live": true}})];
        let (must, highlight_fields) = match query.kind {
            Kind::Patient => (
                json!({"bool": {"should": [
                    {"match": {"full_name": {"query": query.text, "fuzziness": "AUTO", "operator": "and"}}},
                    {"match_phrase_prefix": {"full_name": {"query": query.text}}}
                ], "minimum_should_match": 1}}),
                json!({"full_name": {}}),
            ),
            Kind::Document => {
                if let Some(patient) = query.patient_id {
                    filters.push(json!({"term": {"patient_id": patient}}));
                }
                if let Some(author) = query.author_id {
                    filters.push(json!({"term": {"author_id": author}}));
                }
                if let Some(doc_type) = &query.doc_type {
                    filters.push(json!({"term": {"doc_type": doc_type}}));
                }
                if query.from.is_some() || query.to.is_some() {
                    let mut range = serde_json::Map::new();
                    if let Some(from) = query.from {
                        range.insert("gte".into(), json!(from.to_rfc3339()));
                    }
                    if let Some(to) = query.to {
                        range.insert("lt".into(), json!(to.to_rfc3339()));
                    }
                    filters.push(json!({"range": {"created_at": range}}));
                }
                (
                    json!({"multi_match": {"query": query.text, "fields": ["title^2", "body"], "operator": "and"}}),
                    json!({"title": {"number_of_fragments": 0}, "body": {"fragment_size": 200, "number_of_fragments": 1}}),
                )
            }
        };
        let body = json!({
            "from": query.offset,
            "size": query.limit,
            "version": true,
            "track_total_hits": true,
            "query": {"bool": {"must": [must], "filter": filters}},
            "highlight": {"encoder": "html", "pre_tags": ["<em>"], "post_tags": ["</em>"], "fields": highlight_fields}
        });
        let index = self.index_of(query.kind);
        let response = self
            .client
            .search(SearchParts::Index(&[index]))
            .body(body)
            .send()
            .await
            .map_err(|error| IndexError::Transient(error.to_string()))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.unwrap_or_default();
        if status == 404 {
            // Nothing was indexed yet: the index does not exist.
            return Ok(SearchResults {
                total: 0,
                hits: Vec::new(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(IndexError::Transient(format!("search answered {status}")));
        }
        let answer: Value = serde_json::from_str(&text)
            .map_err(|_| IndexError::Transient("search answer is not JSON".into()))?;
        let total = answer["hits"]["total"]["value"]
            .as_u64()
            .or_else(|| answer["hits"]["total"].as_u64())
            .unwrap_or(0);
        let hits = answer["hits"]["hits"]
            .as_array()
            .map(|hits| {
                hits.iter()
                    .filter_map(|hit| parse_hit(query.kind, hit))
                    .collect()
            })
            .unwrap_or_default();
        Ok(SearchResults { total, hits })
    }
}

/// The outcome of one bulk item (`{"status": …, "error": {…}}`).
fn bulk_item_outcome(item: &Value) -> Result<Applied, IndexError> {
    let status = item["status"].as_u64().unwrap_or(0);
    let reason = || {
        let error = &item["error"];
        // OpenSearch may quote the offending value ("Preview of field's value: …"): that is
        // personal data, and this text travels to logs and the dead-letter headers.
        let text = error["reason"].as_str().unwrap_or("");
        let text = text
            .split("Preview of field's value")
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        format!(
            "{} ({status}): {}",
            error["type"].as_str().unwrap_or("error"),
            text.trim_end_matches([' ', '.'])
        )
    };
    match status {
        200..=299 => Ok(Applied::Written),
        409 => Ok(Applied::Stale),
        429 | 500..=599 => Err(IndexError::Transient(reason())),
        _ => Err(IndexError::Permanent(reason())),
    }
}

fn parse_hit(kind: Kind, hit: &Value) -> Option<SearchHit> {
    let source = &hit["_source"];
    let text = |name: &str| source[name].as_str().map(str::to_owned);
    let uuid = |name: &str| source[name].as_str().and_then(|t| t.parse::<Uuid>().ok());
    let id: Uuid = hit["_id"].as_str()?.parse().ok()?;
    let mut highlights = BTreeMap::new();
    if let Some(fields) = hit["highlight"].as_object() {
        for (field, fragments) in fields {
            let name = if field == "full_name" {
                "fullName".to_owned()
            } else {
                field.clone()
            };
            let fragments: Vec<String> = fragments
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            highlights.insert(name, fragments);
        }
    }
    let mut result = SearchHit::new(
        kind,
        id,
        hit["_score"].as_f64().unwrap_or(0.0) as f32,
        hit["_version"].as_i64().unwrap_or(0),
    );
    result.highlights = highlights;
    match kind {
        Kind::Patient => {
            result.full_name = text("full_name");
            result.birth_date = text("birth_date").and_then(|t| t.parse::<NaiveDate>().ok());
            result.patient_id = Some(id);
        }
        Kind::Document => {
            result.title = text("title");
            result.document_type = text("doc_type");
            result.status = text("status");
            result.patient_id = uuid("patient_id");
            result.author_id = uuid("author_id");
            result.created_at = text("created_at")
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc));
        }
    }
    Some(result)
}

impl SearchIndex for OpenSearchIndex {
    fn name(&self) -> &'static str {
        "opensearch"
    }

    fn apply<'a>(&'a self, ops: &'a [IndexOp]) -> BoxFuture<'a, Vec<Result<Applied, IndexError>>> {
        async move {
            if ops.is_empty() {
                return Vec::new();
            }
            self.apply_ops(ops).await
        }
        .boxed()
    }

    fn search<'a>(
        &'a self,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchResults, IndexError>> {
        self.search_query(query).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_are_classified() {
        assert_eq!(
            bulk_item_outcome(&json!({"status": 201})),
            Ok(Applied::Written)
        );
        assert_eq!(
            bulk_item_outcome(
                &json!({"status": 409, "error": {"type": "version_conflict_engine_exception"}})
            ),
            Ok(Applied::Stale)
        );
        assert!(matches!(
            bulk_item_outcome(
                &json!({"status": 429, "error": {"type": "es_rejected_execution_exception"}})
            ),
            Err(IndexError::Transient(_))
        ));
        assert!(matches!(
            bulk_item_outcome(&json!({"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse"}})),
            Err(IndexError::Permanent(reason)) if reason.contains("mapper_parsing_exception")
        ));
        let Err(IndexError::Permanent(reason)) = bulk_item_outcome(&json!({"status": 400,
            "error": {"type": "mapper_parsing_exception",
                "reason": "failed to parse field [birth_date] of type [date]. Preview of field's value: '1985-03-14'"}}))
        else {
            panic!("a mapping error is permanent")
        };
        assert!(!reason.contains("1985"), "no value quoted: {reason}");
    }
}
