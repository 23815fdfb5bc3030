//! GraphQL over the same actors, store and policy as REST: `POST /graphql` (bearer token as
//! for `/api/v1`), GraphiQL on `GET /graphql` when enabled.
//!
//! Every resolver authorises with the caller's [`Caller`] and the one [`Policy`]
//! (crate::policy::Policy); a forbidden field is an error on that field. Nested objects load
//! through per-request DataLoaders ([`loaders`]), so a page of parents with their children
//! costs a constant number of queries. Errors carry `extensions.code`, the REST problem's
//! slug (`not-found`, `forbidden`, `validation-error`, …), and `extensions.status`.

mod graphiql;
pub mod loaders;
mod mutation;
mod nulls;
mod query;
pub mod subscription;

use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::{ErrorExtensions, Schema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::access::{self, Caller};
use crate::problem::Problem;
use crate::{AppState, outcome};

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use subscription::SubscriptionRoot;

/// The limits and switches of the GraphQL endpoint.
#[derive(Debug, Clone)]
pub struct GraphqlSettings {
    pub enabled: bool,
    /// Serve the schema to introspection queries.
    pub introspection: bool,
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// Queries nested deeper are refused before they run.
    pub max_depth: usize,
    /// Queries whose cost (fields × requested page sizes) is higher are refused.
    pub max_complexity: usize,
    /// `first` of a connection or nested list at most.
    pub max_page_size: i64,
    /// An operation running longer answers with a `timeout` error.
    pub timeout: Duration,
    /// Subscriptions one WebSocket connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// How often an idle WebSocket gets a keep-alive (a ping, or `ka` on `graphql-ws`).
    pub keepalive: Duration,
}

pub type MedflowSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema's SDL, as committed in `http/schema.graphql` (a test keeps them equal) and
/// served at `GET /graphql/schema.graphql` when introspection is enabled.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Builds the schema with its limits.
pub fn schema(state: &AppState, settings: &GraphqlSettings) -> MedflowSchema {
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state.clone())
        .data(settings.clone())
        .limit_depth(settings.max_depth)
        .limit_complexity(settings.max_complexity)
        .extension(nulls::FieldErrorNulls);
    if !settings.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// A problem as a GraphQL error: the message is its detail (or title), `extensions` carry
/// `code` (the REST problem slug), `status` and the offending `fields`.
pub fn gql_error(problem: Problem) -> async_graphql::Error {
    let message = problem
        .detail
        .clone()
        .unwrap_or_else(|| problem.title.to_owned());
    async_graphql::Error::new(message).extend_with(|_, extensions| {
        extensions.set("code", problem.slug);
        extensions.set("status", problem.status);
        if let Some(version) = problem.current_version {
            extensions.set("currentVersion", version);
        }
        if !problem.errors.is_empty() {
            let fields: Vec<async_graphql::Value> = problem
                .errors
                .iter()
                .map(|error| {
                    async_graphql::Value::from_json(serde_json::to_value(error).unwrap_or_default())
                        .unwrap_or_default()
                })
                .collect();
            extensions.set("fields", fields);
        }
    })
}

/// `?` on problems and domain errors inside resolvers.
pub(crate) trait OrGql<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> OrGql<T> for Result<T, Problem> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(gql_error)
    }
}

impl<T> OrGql<T> for Result<T, medflow_actors::Error> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|error| gql_error(Problem::from(error)))
    }
}

/// The caller and state of the request being resolved.
pub(crate) fn request<'a>(
    ctx: &'a async_graphql::Context<'_>,
) -> async_graphql::Result<(&'a AppState, &'a Caller)> {
    Ok((ctx.data::<AppState>()?, ctx.data::<Caller>()?))
}

/// A requested page size, checked against the limit.
pub(crate) fn page_size(
    ctx: &async_graphql::Context<'_>,
    first: Option<i32>,
    default: i64,
) -> async_graphql::Result<i64> {
    let max = ctx.data::<GraphqlSettings>()?.max_page_size;
    let first = first.map_or(default.min(max), i64::from);
    if !(1..=max).contains(&first) {
        return Err(gql_error(Problem::invalid_field(
            "first",
            format!("must be from 1 to {max}"),
        )));
    }
    Ok(first)
}

/// Refuses variables holding U+0000 (which PostgreSQL cannot store) before anything runs,
/// naming the variable's path; literals in the document are caught where they are parsed.
fn nul_in_variables(request: &async_graphql::Request) -> Option<Problem> {
    fn holds_nul(value: &async_graphql::Value) -> bool {
        match value {
            async_graphql::Value::String(text) => text.contains('\0'),
            async_graphql::Value::List(items) => items.iter().any(holds_nul),
            async_graphql::Value::Object(fields) => fields
                .iter()
                .any(|(key, item)| key.contains('\0') || holds_nul(item)),
            _ => false,
        }
    }
    // The common case scans without copying; only a hit is converted to name the path.
    if !request.variables.values().any(holds_nul) {
        return None;
    }
    let variables = request.variables.clone().into_value().into_json().ok()?;
    nul_variables_problem(&variables)
}

/// The refusal of GraphQL variables holding U+0000, naming the first such variable (over
/// HTTP and on the WebSocket alike).
fn nul_variables_problem(variables: &serde_json::Value) -> Option<Problem> {
    let path = crate::extract::nul_path(variables)?;
    Some(Problem::invalid_field(
        format!("variables.{path}"),
        medflow_actors::domain::NUL_REFUSED,
    ))
}

/// `POST /graphql`, the WebSocket at `/graphql/ws` and, when enabled, GraphiQL on
/// `GET /graphql`.
pub fn routes(state: AppState, settings: GraphqlSettings) -> BoxedFilter<(Response,)> {
    let schema = schema(&state, &settings);
    // The SDL of the schema served here (equal to `sdl()`, which a test keeps committed).
    let served_sdl = bytes::Bytes::from(schema.sdl());
    let websocket = subscription::routes(state.clone(), schema.clone());
    let timeout = settings.timeout;
    let execute = warp::path!("graphql")
        .and(warp::post())
        .and(warp::body::content_length_limit(
            state.limits.body_limit_bytes,
        ))
        .and(access::caller(&state))
        .and(async_graphql_warp::graphql(schema))
        .and(warp::any().map(move || state.clone()))
        .then(
            move |caller: Result<Caller, Problem>,
                  (schema, request): (MedflowSchema, async_graphql::Request),
                  state: AppState| async move {
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(problem) => return outcome(Err(problem)),
                };
                if let Some(problem) = nul_in_variables(&request) {
                    let mut error = gql_error(problem).into_server_error(Default::default());
                    classify(&mut error);
                    return json_response(&async_graphql::Response::from_errors(vec![error]));
                }
                let loader = DataLoader::new(
                    loaders::StoreLoader::new(state, caller.clone()),
                    tokio::spawn,
                )
                .delay(loaders::BATCH_DELAY);
                let request = request.data(caller).data(loader);
                let mut response =
                    match tokio::time::timeout(timeout, schema.execute(request)).await {
                        Ok(response) => response,
                        Err(_) => {
                            let mut error = async_graphql::ServerError::new(
                                format!("the operation ran longer than {} ms", timeout.as_millis()),
                                None,
                            );
                            let mut extensions = async_graphql::ErrorExtensionValues::default();
                            extensions.set("code", "timeout");
                            error.extensions = Some(extensions);
                            async_graphql::Response::from_errors(vec![error])
                        }
                    };
                for error in &mut response.errors {
                    classify(error);
                }
                json_response(&response)
            },
        );
    let graphiql = graphiql::routes(settings.graphiql);
    let introspection = settings.introspection;
    let schema_file = warp::path!("graphql" / "schema.graphql")
        .and(warp::get())
        .and_then(move || {
            let served_sdl = served_sdl.clone();
            async move {
                if !introspection {
                    return Err(warp::reject::not_found());
                }
                let mut response = Response::new(served_sdl.into());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok::<_, warp::Rejection>(response)
            }
        });
    websocket
        .or(execute)
        .unify()
        .or(graphiql)
        .unify()
        .or(schema_file)
        .unify()
        .boxed()
}

/// Gives the errors async-graphql raises itself (parsing, validation, limits) a code too.
fn classify(error: &mut async_graphql::ServerError) {
    let coded = error
        .extensions
        .as_ref()
        .is_some_and(|extensions| extensions.get("code").is_some());
    if coded {
        return;
    }
    let code = if !error.path.is_empty() {
        // Raised while resolving a field without a problem of ours behind it.
        "internal-error"
    } else if error.message.contains("nested too deep") {
        "query-too-deep"
    } else if error.message.contains("too complex") {
        "query-too-complex"
    } else {
        "invalid-query"
    };
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

fn json_response(response: &async_graphql::Response) -> Response {
    let body = serde_json::to_vec(response).unwrap_or_default();
    let mut reply = Response::new(body.into());
    *reply.status_mut() = StatusCode::OK;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

#[cfg(test)]
mod tests {
    /// The committed SDL is the schema served: a change to the schema shows in review.
    /// Regenerate with `cargo run -q -- graphql-schema > http/schema.graphql`.
    #[test]
    fn the_committed_sdl_is_the_schema() {
        let committed = include_str!("../../schema.graphql");
        assert!(
            super::sdl() == committed,
            "http/schema.graphql differs from the schema: regenerate it with \
             `cargo run -q -- graphql-schema > http/schema.graphql` and review the diff"
        );
    }
}
