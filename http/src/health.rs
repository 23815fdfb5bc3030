//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`.

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

/// The CDC pipeline streams (or stands by for another pod): events reach Kafka.
pub struct CdcCheck(pub CdcStatusCell);

impl ReadinessCheck for CdcCheck {
    fn name(&self) -> &'static str {
        "cdc"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let status = self.0.get();
        Box::pin(async move {
            match status.state {
                CdcState::Starting
                | CdcState::Snapshotting
                | CdcState::Streaming
                | CdcState::Standby => Ok(()),
                CdcState::Stopped | CdcState::Restarting => Err(format!(
                    "cdc is {:?}: {}",
                    status.state,
                    status.last_error.as_deref().unwrap_or("not running")
                )),
            }
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
        (check.name(), outcome)
    }))
    .await;
    let ready = results.iter().all(|(_, outcome)| outcome.is_ok());
    let mut report = serde_json::Map::new();
    for (name, outcome) in results {
        if let Err(reason) = &outcome {
            tracing::warn!(check = name, reason = %reason, "readiness check failed");
        }
        // Reasons go to the log, not to an unauthenticated probe.
        report.insert(
            name.to_owned(),
            json!(if outcome.is_ok() { "ok" } else { "failing" }),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        status,
        &json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": report }),
        None,
    )
}
