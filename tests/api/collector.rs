//! A stand-in for an OpenTelemetry collector's OTLP/HTTP trace receiver (`POST /v1/traces`,
//! OTLP's JSON encoding: `resourceSpans[].scopeSpans[].spans[]` with hex
//! `traceId`/`spanId`/`parentSpanId`), one per test process, answering 200 `{}` (a full
//! success) and keeping the spans for the tests to read (README, "Stand-ins").

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response
}

/// The process's trace collector: every application the tests start exports its sampled
/// spans here (`helpers::spawn_app_on`).
pub struct Collector {
    pub url: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

/// Spans kept at most (the oldest go first).
const COLLECTOR_CAPACITY: usize = 100_000;

/// Starts the collector on first use, on a thread and runtime of its own (each test has
/// its own runtime; the collector outlives them).
pub fn collector() -> &'static Collector {
    static COLLECTOR: std::sync::OnceLock<Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let kept = spans.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let route = warp::post()
                    .and(warp::path!("v1" / "traces"))
                    .and(warp::body::json())
                    .map(move |request: Value| {
                        let mut kept = kept.lock().unwrap();
                        for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                            let service = resource["resource"]["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|attribute| attribute["key"] == "service.name")
                                .map(|attribute| attribute["value"]["stringValue"].clone())
                                .unwrap_or(Value::Null);
                            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                                for span in scope["spans"].as_array().into_iter().flatten() {
                                    let mut span = span.clone();
                                    span["service"] = service.clone();
                                    kept.push(span);
                                }
                            }
                        }
                        let excess = kept.len().saturating_sub(COLLECTOR_CAPACITY);
                        kept.drain(..excess);
                        reply(StatusCode::OK, json!({}))
                    })
                    .boxed();
                let (address, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
                sender.send(address).unwrap();
                server.await;
            });
        });
        let address = receiver.recv().expect("the collector starts");
        Collector {
            url: format!("http://{address}/v1/traces"),
            spans,
        }
    })
}

impl Collector {
    /// The spans received so far of the trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span["traceId"].as_str() == Some(trace_id))
            .cloned()
            .collect()
    }
}
