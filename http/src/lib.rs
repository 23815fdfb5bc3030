//! medflow's transports over warp: REST under `/api/v1` with its OpenAPI document and
//! Swagger UI, health probes and Prometheus metrics.
//!
//! Handlers are thin: parse and validate the request into domain values, ask an actor (or
//! the store, for reference data), and map the answer — or the [`Problem`] — to a response.
//! Handlers never return warp rejections for business errors; rejections only mean "no
//! route", and [`recover`] turns the rest of warp's into problems too.

// `Problem` is the error of every handler step and is built once per failed request; boxing
// it would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod access;
pub mod admin;
pub mod appointments;
pub mod audit;
pub mod auth;
pub mod cluster_rate;
mod contract;
pub mod doctors;
pub mod documents;
pub mod extract;
pub mod graphql;
pub mod health;
pub mod openapi;
pub mod patients;
pub mod policy;
pub mod problem;
pub mod reads;
pub mod search;
pub mod server;
pub mod writes;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use medflow_actors::{Appointments, AuditTrail, Documents, Patients, PgStore};
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub use health::ReadinessCheck;
pub use problem::Problem;

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Larger request bodies answer 413.
    pub body_limit_bytes: u64,
    /// Requests running longer answer 503.
    pub request_timeout: Duration,
}

/// What handlers reach: the actors, the store and the process's operational state.
#[derive(Clone)]
pub struct AppState {
    pub patients: Patients,
    pub appointments: Appointments,
    pub documents: Documents,
    /// Records reads of personal and clinical data.
    pub audit: AuditTrail,
    /// Signs the audit tree's heads; its public key checks them (`None`: heads unsigned).
    pub audit_signer: Option<std::sync::Arc<medflow_actors::store::HeadSigner>>,
    /// The CDC pipeline's state, when it runs.
    pub cdc: Option<medflow_actors::cdc::CdcStatusCell>,
    pub store: PgStore,
    pub limits: HttpLimits,
    pub readiness: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    pub shutting_down: Arc<AtomicBool>,
    pub render_metrics: Arc<dyn Fn() -> String + Send + Sync>,
    pub auth: auth::Authenticator,
    pub policy: policy::Policy,
    pub rate_limits: access::RateLimits,
    /// Origins allowed to call the API from a browser; empty: no CORS headers at all.
    pub cors_allowed_origins: Arc<Vec<String>>,
    pub graphql: graphql::GraphqlSettings,
    /// Feeds GraphQL subscriptions from the business topics.
    pub hub: Option<ractor::ActorRef<medflow_actors::bus::hub::HubMessage>>,
    /// The search index, when `search.enabled`.
    pub search: Option<search::SearchService>,
    pub consumer_admin: admin::ConsumerAdmin,
    /// The AsyncAPI document of this configuration's Kafka channels, served beside the
    /// OpenAPI document.
    pub asyncapi: Arc<serde_json::Value>,
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub offset: i64,
    pub limit: i64,
    /// Items matching the filter, over all pages.
    pub total: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, offset: i64, limit: i64, total: i64) -> Self {
        Self {
            items,
            offset,
            limit,
            total,
        }
    }
}

/// Every route of the service, with warp's rejections mapped to problems.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let origins = state.cors_allowed_origins.clone();
    let api = patients::routes(state.clone())
        .or(doctors::routes(state.clone()))
        .unify()
        .or(appointments::routes(state.clone()))
        .unify()
        .or(documents::routes(state.clone()))
        .unify()
        .or(audit::routes(state.clone()))
        .unify()
        .or(admin::routes(state.clone()))
        .unify()
        .or(search::routes(state.clone()))
        .unify()
        .boxed();
    let api = if state.graphql.enabled {
        api.or(graphql::routes(state.clone(), state.graphql.clone()))
            .unify()
            .boxed()
    } else {
        api
    };
    let api = if origins.is_empty() {
        api
    } else {
        let cors = warp::cors()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
            .allow_headers([
                "authorization",
                "content-type",
                "if-match",
                "if-none-match",
                "x-request-id",
                "traceparent",
            ])
            .expose_headers(["etag", "location", "retry-after", "x-request-id"])
            .max_age(600);
        api.with(cors).map(Reply::into_response).boxed()
    };
    let asyncapi = openapi::asyncapi_route(state.asyncapi.clone());
    api.or(health::routes(state))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(asyncapi)
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

/// Turns a handler's result into a response.
pub(crate) fn outcome(result: Result<Response, Problem>) -> Response {
    result.unwrap_or_else(Problem::into_response)
}

/// A JSON response, with an `ETag` when the body is a versioned entity.
pub(crate) fn json_reply(
    status: StatusCode,
    body: &impl Serialize,
    version: Option<i64>,
) -> Response {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return Problem::internal().into_response();
    };
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(version) = version
        && let Ok(value) = HeaderValue::from_str(&extract::etag(version))
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(crate) fn not_modified(etag: &str) -> Response {
    let mut response = Response::default();
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(crate) fn set_location(response: &mut Response, location: &str) {
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
}

/// The raw query string, empty when the request has none.
pub(crate) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Maps warp's rejections (no route, wrong method, body limits) to problems.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let problem = if rejection.is_not_found() {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail("no such resource")
    } else if let Some(bad) = rejection.find::<async_graphql_warp::GraphQLBadRequest>() {
        Problem::bad_request(format!("not a GraphQL request: {}", bad.0))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .detail("the request body exceeds the size limit")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        Problem::new(
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "Length required",
        )
        .detail("send the body with a Content-Length header")
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
    } else if rejection.find::<warp::cors::CorsForbidden>().is_some() {
        Problem::new(
            StatusCode::FORBIDDEN,
            "cors-forbidden",
            "Origin not allowed",
        )
        .detail("this origin may not call the API from a browser")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
    } else if let Some(missing) = rejection.find::<warp::reject::MissingHeader>() {
        Problem::invalid_field(missing.name(), "header is required")
    } else if let Some(invalid) = rejection.find::<warp::reject::InvalidHeader>() {
        Problem::invalid_field(invalid.name(), "header is invalid")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        Problem::bad_request("the query string is invalid")
    } else {
        tracing::error!(rejection = ?rejection, "unhandled rejection");
        Problem::internal()
    };
    Ok(problem.into_response())
}
