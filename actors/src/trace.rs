//! W3C trace context across medflow's boundaries. A request's span continues the
//! client's `traceparent` (or starts a trace); the traceparent naming that span is stored
//! with the outbox row and travels as a Kafka header; consumers and the subscription hub
//! continue it. Spans go to OpenTelemetry through the `tracing` layer the binary installs
//! (exported over OTLP when the standard `OTEL_*` variables ask for it); without that
//! layer these functions change nothing and return `None`.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and field name.
pub const TRACEPARENT: &str = "traceparent";

struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[derive(Default)]
struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

fn context_of(traceparent: Option<&str>) -> Option<opentelemetry::Context> {
    let context = TraceContextPropagator::new().extract(&One(traceparent));
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of `traceparent` when it is a valid W3C trace parent; otherwise
/// `span` starts (or continues, from the current span) a trace of its own. Call before the
/// span is first entered.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = context_of(traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to the trace of `traceparent` (a batch handles messages of many traces).
pub fn link_to(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(context) = context_of(traceparent) {
        span.add_link(context.span().span_context().clone());
    }
}

/// The `traceparent` that names `span`, to hand on; `None` without the OpenTelemetry layer.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.remove(TRACEPARENT)
}
