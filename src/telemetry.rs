//! Logs (tracing, JSON or pretty), OpenTelemetry traces and the Prometheus recorder,
//! installed once per process.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use medflow_actors::internal_events::{METRICS, MetricKind};

use crate::config::{LogFormat, LogSettings};

/// Where spans go. Export is off unless an OTLP endpoint is configured; trace context is
/// propagated either way (a request's `traceparent` continues into the outbox, Kafka, the
/// consumers and the subscription hub).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceExport {
    /// The OTLP/HTTP endpoint; `None`: spans are not exported.
    pub endpoint: Option<String>,
    /// `http/json` instead of the default `http/protobuf`.
    pub json: bool,
    /// Record only traces a caller marked sampled (`traceparent` flag 01), as when export is
    /// off; otherwise the standard `OTEL_TRACES_SAMPLER` applies (default: parent-based,
    /// always on).
    pub parent_decides: bool,
}

impl TraceExport {
    /// The standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended), `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (`http/protobuf` or `http/json`); `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn export off. The exporter itself reads
    /// `OTEL_EXPORTER_OTLP_HEADERS` and `…_TIMEOUT`; the resource `OTEL_SERVICE_NAME`
    /// (default `medflow`) and `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`TraceExport::from_env`] over any source of variables.
    fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        Self {
            endpoint: endpoint.filter(|_| !disabled),
            json: protocol.as_deref() == Some("http/json"),
            parent_decides: false,
        }
    }
}

static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: log lines (filtered by `settings.level`) and
/// OpenTelemetry spans (medflow's request, consume and subscription spans). A second call
/// (tests) keeps the first.
pub fn init_logging(settings: &LogSettings) {
    init(settings, TraceExport::from_env());
}

/// [`init_logging`] with an explicit trace export (tests point it at a stand-in collector).
pub fn init(settings: &LogSettings, export: TraceExport) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = tracer_provider(&export);
    let spans = Targets::new()
        .with_target("medflow", Level::INFO)
        .with_target("medflow_http", Level::INFO)
        .with_target("medflow_actors", Level::INFO);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("medflow"))
        .with_filter(spans);
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    if installed.is_ok() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(endpoint) = &export.endpoint {
            tracing::info!(endpoint = %endpoint, json = export.json, "exporting traces over OTLP");
        }
        let _ = TRACER_PROVIDER.set(provider);
    }
}

fn tracer_provider(export: &TraceExport) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("medflow");
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporter = export.endpoint.as_ref().and_then(|endpoint| {
        let protocol = if export.json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        };
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_protocol(protocol)
            .build()
            .inspect_err(|error| eprintln!("medflow: traces are not exported: {error}"))
            .ok()
    });
    match exporter {
        Some(exporter) => {
            builder = builder.with_batch_exporter(exporter);
            if export.parent_decides {
                builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
            }
        }
        // Nothing leaves the process: record only what a caller asked to be sampled (ids
        // are still made and propagated).
        None => {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        }
    }
    builder.build()
}

/// Exports the spans ended so far (tests), or does nothing without export.
pub fn flush_traces() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// Exports what is left and stops the exporter (at the end of `serve`).
pub fn shutdown_traces() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Returns the process's Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                // A count of rows, not seconds.
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("medflow_audit_batch_rows".into()),
                        &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a library's test); keep the handle
            // working either way.
            let _ = metrics::set_global_recorder(recorder);
            register_catalogue();
            handle
        })
        .clone()
}

/// Describes every metric (HELP, unit) and registers the series whose labels are known at
/// start, at zero: `/metrics` shows them before they first happen.
fn register_catalogue() {
    for (name, kind, help) in METRICS {
        let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
        match (kind, unit) {
            (MetricKind::Counter, _) => metrics::describe_counter!(*name, *help),
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(*name, unit, *help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(*name, *help),
            (MetricKind::Histogram, Some(unit)) => metrics::describe_histogram!(*name, unit, *help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(*name, *help),
        }
        if matches!(kind, MetricKind::Counter) && !name.starts_with("medflow_consumer_") {
            match *name {
                "medflow_entity_actor_passivations_total"
                | "medflow_entity_actor_crashes_total" => {
                    for entity in medflow_actors::ENTITY_KINDS {
                        metrics::counter!(*name, "kind" => entity).increment(0);
                    }
                }
                "medflow_supervisor_restarts_total" => {
                    for child in medflow_supervisors::supervised_children() {
                        metrics::counter!(*name, "child" => child).increment(0);
                    }
                }
                // An alert's `increase()` needs the series before its first increment.
                "medflow_audit_tampering_seen_total" => {
                    for operation in ["update", "delete", "truncate", "unstamped insert"] {
                        metrics::counter!(*name, "operation" => operation).increment(0);
                    }
                }
                "medflow_audit_seal_rounds_total" => {
                    for outcome in ["sealed", "idle", "busy", "failed"] {
                        metrics::counter!(*name, "outcome" => outcome).increment(0);
                    }
                }
                // Labelled by method, route and status: known when they happen.
                "medflow_http_requests_total" => {}
                _ => metrics::counter!(*name).increment(0),
            }
        }
    }
    // A histogram's handle taken now is rendered from the start (empty buckets); the
    // request duration's routes are known only when requests come.
    let _ = metrics::histogram!("medflow_audit_batch_rows");
    for kind in [
        medflow_actors::search::Kind::Patient,
        medflow_actors::search::Kind::Document,
    ] {
        let _ = metrics::histogram!("medflow_search_seconds", "type" => kind.as_str());
    }
    for entity in medflow_actors::ENTITY_KINDS {
        metrics::gauge!("medflow_entity_actors_live", "kind" => entity).increment(0.0);
        metrics::gauge!("medflow_entity_states_idle", "kind" => entity).increment(0.0);
    }
    metrics::gauge!("medflow_degraded", "component" => "cdc").increment(0.0);
    for name in [
        "medflow_audit_sealing_lag_seconds",
        "medflow_cdc_lag_bytes",
        "medflow_cdc_lag_ms",
        "medflow_cdc_outbox_rows",
        "medflow_subscriptions",
        "medflow_graphql_ws_connections",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(vars: &[(&str, &str)]) -> TraceExport {
        TraceExport::from_vars(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn the_standard_otel_variables_decide_the_export() {
        assert_eq!(export(&[]).endpoint, None, "off by default");
        let base = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(
            base.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert!(!base.json);
        let traces = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        assert_eq!(
            traces.endpoint.as_deref(),
            Some("http://traces:4318/v1/traces")
        );
        assert!(traces.json);
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let export = export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                off,
            ]);
            assert_eq!(export.endpoint, None, "{off:?}");
        }
    }
}
