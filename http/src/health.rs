//! `/healthz` (the process is alive), `/readyz` (this instance can serve its API) and
//! `/metrics`.
//!
//! Readiness answers one question: may the Service route requests here? Only what this
//! instance needs to serve its API decides it (PostgreSQL). What every pod shares — the
//! broker, the CDC pipeline — would fail on all pods at once and empty the Service, so its
//! trouble is reported as `degraded` (200, in the body and in `medflow_degraded`) instead.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use medflow_actors::PgStore;
use medflow_actors::cdc::{CdcState, CdcStatusCell};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::{AppState, json_reply};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency `/readyz` asks about.
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether a failure makes this instance unready (`true`) or only degraded.
    fn required(&self) -> bool {
        true
    }
    /// Resolves to `Err(reason)` when the dependency is not usable.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// PostgreSQL answers a query.
pub struct DatabaseCheck(pub PgStore);

impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|error| error.to_string()) })
    }
}

/// The CDC pipeline streams (or stands by for another pod) and has been stable for a while:
/// events reach Kafka. Its failure degrades the service; it does not make a pod unready.
pub struct CdcCheck(pub CdcStatusCell);

impl ReadinessCheck for CdcCheck {
    fn name(&self) -> &'static str {
        "cdc"
    }

    fn required(&self) -> bool {
        false
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let status = self.0.get();
        Box::pin(async move {
            if status.healthy() {
                return Ok(());
            }
            let state: CdcState = status.state;
            Err(format!(
                "cdc is {state:?}: {}",
                status.last_error.as_deref().unwrap_or("not streaming yet")
            ))
        })
    }
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({ "status": "alive" }), None));
    let ready_state = state.clone();
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let state = ready_state.clone();
        async move { readiness(&state).await }
    });
    let metrics_state = state;
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let mut response = Response::new((metrics_state.render_metrics)().into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}

async fn readiness(state: &AppState) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "shutting_down" }),
            None,
        );
    }
    let checks: &[Arc<dyn ReadinessCheck>] = &state.readiness;
    let results = join_all(checks.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        };
        (check.name(), check.required(), outcome)
    }))
    .await;
    let ready = results
        .iter()
        .all(|(_, required, outcome)| outcome.is_ok() || !required);
    let degraded = results.iter().any(|(_, _, outcome)| outcome.is_err());
    let mut report = serde_json::Map::new();
    for (name, required, outcome) in results {
        if let Err(reason) = &outcome {
            tracing::warn!(check = name, required, reason = %reason, "readiness check failed");
        }
        // Reasons go to the log, not to an unauthenticated probe.
        let verdict = match (&outcome, required) {
            (Ok(()), _) => "ok",
            (Err(_), true) => "failing",
            (Err(_), false) => "degraded",
        };
        report.insert(name.to_owned(), json!(verdict));
    }
    let (status, word) = match (ready, degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (true, true) => (StatusCode::OK, "degraded"),
        (true, false) => (StatusCode::OK, "ready"),
    };
    json_reply(status, &json!({ "status": word, "checks": report }), None)
}
