//! Local HTTP stand-ins for the two systems that cannot run here (README, "Stand-ins").
//!
//! - [`OpenSearchStandIn`] answers the OpenSearch REST calls medflow makes with their
//!   documented shapes: `PUT _index_template/{name}`, `POST _bulk` (NDJSON; external
//!   versioning with per-item `409 version_conflict_engine_exception`; a whole request
//!   refused with `429 es_rejected_execution_exception`; an item refused with `400
//!   mapper_parsing_exception` while the others succeed — a `200` with `errors: true`),
//!   `POST {index}/_search` (the bool/multi_match/match/term/range subset medflow sends,
//!   `hits.total.value`, `_version`, `highlight`; `404 index_not_found_exception` before the
//!   first write) and `GET {index}/_doc/{id}`. Its text analysis is an approximation (words
//!   match on their first three letters, names within an edit distance), not Lucene's.
//! - The OpenTelemetry collector stand-in is in `collector.rs` (the helpers start it).
//! - [`RegistryStandIn`] is the federal registry as medflow's client speaks to it (see the
//!   README): it can be told to answer 503, to stall past the client's timeout, to reject
//!   with a reason, or to accept with a registry id; it records every request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::hyper::body::Bytes;
use warp::reply::Response;

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    response
}

fn serve(routes: warp::filters::BoxedFilter<(Response,)>) -> SocketAddr {
    let (address, server) = warp::serve(routes).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    address
}

// ───────────────────────────── OpenSearch ─────────────────────────────

#[derive(Default)]
struct SearchState {
    templates: HashMap<String, Value>,
    /// index → id → (version, source)
    indices: HashMap<String, HashMap<String, (i64, Value)>>,
    reject_bulks: u32,
    mapping_error_marker: Option<String>,
    bulk_requests: u64,
}

#[derive(Clone)]
pub struct OpenSearchStandIn {
    address: SocketAddr,
    state: Arc<Mutex<SearchState>>,
}

impl OpenSearchStandIn {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(SearchState::default()));
        let with_state = {
            let state = state.clone();
            warp::any().map(move || state.clone())
        };
        let template = warp::put()
            .and(warp::path!("_index_template" / String))
            .and(warp::body::json())
            .and(with_state.clone())
            .map(
                |name: String, body: Value, state: Arc<Mutex<SearchState>>| {
                    state.lock().unwrap().templates.insert(name, body);
                    reply(StatusCode::OK, json!({"acknowledged": true}))
                },
            );
        let bulk = warp::post()
            .and(warp::path!("_bulk"))
            .and(warp::body::bytes())
            .and(with_state.clone())
            .map(|body: Bytes, state: Arc<Mutex<SearchState>>| bulk(&state, &body));
        let search = warp::post()
            .and(warp::path!(String / "_search"))
            .and(warp::body::json())
            .and(with_state.clone())
            .map(
                |index: String, body: Value, state: Arc<Mutex<SearchState>>| {
                    search(&state, &index, &body)
                },
            );
        let get = warp::get()
            .and(warp::path!(String / "_doc" / String))
            .and(with_state)
            .map(|index: String, id: String, state: Arc<Mutex<SearchState>>| {
                let state = state.lock().unwrap();
                match state.indices.get(&index).and_then(|docs| docs.get(&id)) {
                    Some((version, source)) => reply(
                        StatusCode::OK,
                        json!({"_index": index, "_id": id, "_version": version, "found": true, "_source": source}),
                    ),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        json!({"_index": index, "_id": id, "found": false}),
                    ),
                }
            });
        let routes = template
            .or(bulk)
            .unify()
            .or(search)
            .unify()
            .or(get)
            .unify()
            .boxed();
        Self {
            address: serve(routes),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn templates(&self) -> HashMap<String, Value> {
        self.state.lock().unwrap().templates.clone()
    }

    pub fn bulk_requests(&self) -> u64 {
        self.state.lock().unwrap().bulk_requests
    }

    /// The next `n` bulk requests are refused as a whole with 429.
    pub fn reject_next_bulks(&self, n: u32) {
        self.state.lock().unwrap().reject_bulks = n;
    }

    /// Items whose title contains `marker` fail with a mapping error.
    pub fn fail_mapping_of(&self, marker: &str) {
        self.state.lock().unwrap().mapping_error_marker = Some(marker.to_owned());
    }
}

fn bulk(state: &Mutex<SearchState>, body: &[u8]) -> Response {
    let mut state = state.lock().unwrap();
    state.bulk_requests += 1;
    if state.reject_bulks > 0 {
        state.reject_bulks -= 1;
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "es_rejected_execution_exception",
                "reason": "rejected execution of coordinating operation"}, "status": 429}),
        );
    }
    let lines: Vec<Value> = match std::str::from_utf8(body).map(|text| {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
    }) {
        Ok(Ok(lines)) => lines,
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"type": "parse_exception", "reason": "malformed bulk body"}, "status": 400}),
            );
        }
    };
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let [action, source] = pair else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"type": "illegal_argument_exception", "reason": "action without a source"}, "status": 400}),
            );
        };
        let meta = &action["index"];
        let index = meta["_index"].as_str().unwrap_or_default().to_owned();
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let version = meta["version"].as_i64().unwrap_or(1);
        let gte = meta["version_type"] == "external_gte";
        let mut item = json!({"_index": index, "_id": id});
        let marker = state.mapping_error_marker.clone();
        if marker.is_some_and(|marker| {
            source["title"]
                .as_str()
                .is_some_and(|title| title.contains(&marker))
        }) {
            item["status"] = json!(400);
            item["error"] = json!({"type": "mapper_parsing_exception",
                "reason": "failed to parse field [title] of type [text]"});
            errors = true;
            items.push(json!({"index": item}));
            continue;
        }
        let docs = state.indices.entry(index.clone()).or_default();
        let current = docs.get(&id).map(|(v, _)| *v);
        let accepted = current.is_none_or(|c| if gte { version >= c } else { version > c });
        if accepted {
            item["_version"] = json!(version);
            item["result"] = json!(if current.is_some() {
                "updated"
            } else {
                "created"
            });
            item["status"] = json!(if current.is_some() { 200 } else { 201 });
            docs.insert(id, (version, source.clone()));
        } else {
            item["status"] = json!(409);
            item["error"] = json!({"type": "version_conflict_engine_exception",
                "reason": format!("[{id}]: version conflict, current version [{}] is higher or equal to the one provided [{version}]", current.unwrap_or_default())});
            errors = true;
        }
        items.push(json!({"index": item}));
    }
    reply(
        StatusCode::OK,
        json!({"took": 1, "errors": errors, "items": items}),
    )
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('ё', "е")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn prefix3(word: &str) -> String {
    word.chars().take(3).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// A name word matches like `fuzziness: AUTO` (0 / 1 / 2 edits by length) or a prefix.
fn name_match(token: &str, word: &str) -> bool {
    let allowed = match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    token.starts_with(word) || levenshtein(token, word) <= allowed
}

fn text_match(token: &str, word: &str) -> bool {
    prefix3(token) == prefix3(word)
}

/// Wraps matching words of `text` in `<em>`, HTML-escaping the rest (`encoder: html`).
fn mark(text: &str, matches: impl Fn(&str) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    let mut word = String::new();
    let escape = |c: char, out: &mut String| match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        '"' => out.push_str("&quot;"),
        c => out.push(c),
    };
    let flush = |word: &mut String, out: &mut String, any: &mut bool| {
        if word.is_empty() {
            return;
        }
        let folded = word.to_lowercase().replace('ё', "е");
        if matches(&folded) {
            *any = true;
            out.push_str("<em>");
            out.push_str(word);
            out.push_str("</em>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut any);
            escape(c, &mut out);
        }
    }
    flush(&mut word, &mut out, &mut any);
    any.then_some(out)
}

fn search(state: &Mutex<SearchState>, index: &str, body: &Value) -> Response {
    let state = state.lock().unwrap();
    let Some(docs) = state.indices.get(index) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "index_not_found_exception", "reason": format!("no such index [{index}]")}, "status": 404}),
        );
    };
    let query = &body["query"]["bool"];
    let filters = query["filter"].as_array().cloned().unwrap_or_default();
    let must = &query["must"][0];
    let (text, fields, names): (String, Vec<String>, bool) =
        if let Some(multi) = must.get("multi_match") {
            (
                multi["query"].as_str().unwrap_or_default().to_owned(),
                multi["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().split('^').next().unwrap().to_owned())
                    .collect(),
                false,
            )
        } else {
            let query_text = must["bool"]["should"][0]["match"]["full_name"]["query"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (query_text, vec!["full_name".to_owned()], true)
        };
    let query_words = words(&text);
    let passes_filters = |source: &Value| {
        filters.iter().all(|filter| {
            if let Some(term) = filter.get("term").and_then(Value::as_object) {
                term.iter().all(|(field, value)| &source[field] == value)
            } else if let Some(range) = filter.get("range").and_then(Value::as_object) {
                range.iter().all(|(field, bounds)| {
                    let Some(at) = source[field]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    else {
                        return false;
                    };
                    let bound = |name: &str| {
                        bounds[name]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    };
                    bound("gte").is_none_or(|from| at >= from)
                        && bound("lt").is_none_or(|to| at < to)
                })
            } else {
                true
            }
        })
    };
    let matches = |token: &str, word: &str| {
        if names {
            name_match(token, word)
        } else {
            text_match(token, word)
        }
    };
    let mut hits: Vec<(f64, &String, &(i64, Value))> = docs
        .iter()
        .filter(|(_, (_, source))| passes_filters(source))
        .filter_map(|(id, doc)| {
            let tokens: Vec<String> = fields
                .iter()
                .flat_map(|field| words(doc.1[field].as_str().unwrap_or_default()))
                .collect();
            let all = query_words
                .iter()
                .all(|word| tokens.iter().any(|token| matches(token, word)));
            let score = tokens
                .iter()
                .filter(|token| query_words.iter().any(|word| matches(token, word)))
                .count() as f64;
            (all && !query_words.is_empty()).then_some((score, id, doc))
        })
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let total = hits.len();
    let from = body["from"].as_u64().unwrap_or(0) as usize;
    let size = body["size"].as_u64().unwrap_or(10) as usize;
    let page: Vec<Value> = hits
        .into_iter()
        .skip(from)
        .take(size)
        .map(|(score, id, (version, source))| {
            let mut highlight = serde_json::Map::new();
            for field in &fields {
                if let Some(marked) = mark(source[field].as_str().unwrap_or_default(), |token| {
                    query_words.iter().any(|word| matches(token, word))
                }) {
                    highlight.insert(field.clone(), json!([marked]));
                }
            }
            json!({"_index": index, "_id": id, "_version": version, "_score": score,
                   "_source": source, "highlight": highlight})
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({"took": 1, "timed_out": false,
               "hits": {"total": {"value": total, "relation": "eq"}, "max_score": null, "hits": page}}),
    )
}

// ───────────────────────────── Federal registry ─────────────────────────────

/// How the registry stand-in answers one request.
#[derive(Debug, Clone)]
pub enum RegistryAnswer {
    Accept,
    /// 503 Service Unavailable.
    Unavailable,
    /// Holds the request this long before accepting (past the client's timeout).
    Stall(Duration),
    /// 422 with this reason.
    Reject(String),
}

#[derive(Debug, Clone)]
pub struct RegistryRequest {
    pub idempotency_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct EntityHostState {
    script: VecDeque<RegistryAnswer>,
    requests: Vec<RegistryRequest>,
    accepted: u64,
}

#[derive(Clone)]
pub struct RegistryStandIn {
    address: SocketAddr,
    tls: bool,
    state: Arc<Mutex<EntityHostState>>,
}

/// The test CA, server and client certificates for the mutual-TLS registry.
pub fn registry_fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry")
}

impl RegistryStandIn {
    /// Answers the scripted answers in order, then accepts; plain HTTP.
    pub async fn start(script: Vec<RegistryAnswer>) -> Self {
        Self::start_with(script, false).await
    }

    /// The same over HTTPS with the test CA's server certificate, refusing any client
    /// without a certificate from that CA (`tests/fixtures/registry/`).
    pub async fn start_mutual_tls(script: Vec<RegistryAnswer>) -> Self {
        Self::start_with(script, true).await
    }

    async fn start_with(script: Vec<RegistryAnswer>, tls: bool) -> Self {
        let state = Arc::new(Mutex::new(EntityHostState {
            script: script.into(),
            ..Default::default()
        }));
        let with_state = {
            let state = state.clone();
            warp::any().map(move || state.clone())
        };
        let submit = warp::post()
            .and(warp::path!("remd" / "v1" / "documents"))
            .and(warp::header::optional::<String>("idempotency-key"))
            .and(warp::body::json())
            .and(with_state)
            .then(
                |key: Option<String>, body: Value, state: Arc<Mutex<EntityHostState>>| async move {
                    let answer = {
                        let mut state = state.lock().unwrap();
                        state.requests.push(RegistryRequest {
                            idempotency_key: key,
                            body: body.clone(),
                        });
                        state.script.pop_front().unwrap_or(RegistryAnswer::Accept)
                    };
                    let accept = |state: &Mutex<EntityHostState>| {
                        let mut state = state.lock().unwrap();
                        state.accepted += 1;
                        reply(
                            StatusCode::CREATED,
                            json!({"registryId": format!("REMD-{:06}", state.accepted)}),
                        )
                    };
                    match answer {
                        RegistryAnswer::Accept => accept(&state),
                        RegistryAnswer::Unavailable => reply(
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({"error": "maintenance"}),
                        ),
                        RegistryAnswer::Stall(delay) => {
                            tokio::time::sleep(delay).await;
                            accept(&state)
                        }
                        RegistryAnswer::Reject(reason) => {
                            reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"reason": reason}))
                        }
                    }
                },
            );
        let address = if tls {
            let fixtures = registry_fixtures();
            let (address, server) = warp::serve(submit.boxed())
                .tls()
                .cert_path(fixtures.join("server.pem"))
                .key_path(fixtures.join("server.key"))
                .client_auth_required_path(fixtures.join("ca.pem"))
                .bind_ephemeral(([127, 0, 0, 1], 0));
            tokio::spawn(server);
            address
        } else {
            serve(submit.boxed())
        };
        Self {
            address,
            tls,
            state,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/remd/v1/documents", self.address)
    }

    pub fn requests(&self) -> Vec<RegistryRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}
