//! The HTTP server around the routes: it gives every request an id (the client's valid
//! `X-Request-Id` or a new one), a tracing span, a deadline and a log line with metrics, and
//! it stops gracefully — no new connections, in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::{Service, make_service_fn, service_fn};
use hyper::{Body, Request};
use tracing::Instrument;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use medflow_actors::internal_events::{RequestServed, emit};
use medflow_actors::trace;

use crate::extract::{RequestMeta, header_token};
use crate::problem::Problem;

const REQUEST_ID_HEADER: &str = "x-request-id";

/// An accepted connection that reads as closed once the server stops accepting, if no byte
/// has arrived on it yet. Hyper's graceful shutdown closes idle keep-alive connections but
/// keeps a connection that never carried a request (a client's pre-opened spare) and would
/// answer its first request after the actors stopped; this closes such a connection instead.
struct Connection {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    used: bool,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.used && self.stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.used = true;
        }
        read
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then waits for in-flight requests.
/// While `draining` is set, every response carries `Connection: close`: keep-alive clients
/// reconnect (through their load balancer, to an instance that is not stopping).
pub async fn serve(
    listener: std::net::TcpListener,
    routes: BoxedFilter<(Response,)>,
    request_timeout: Duration,
    draining: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let incoming = futures::stream::unfold(
        (listener, stopped_rx),
        |(listener, stopped)| async move {
            let (stream, peer) = loop {
                match listener.accept().await {
                    Ok(accepted) => break accepted,
                    // Out of file descriptors and the like: hyper's own acceptor waits too.
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot accept a connection; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let mut watch = stopped.clone();
            let connection = Connection {
                stream,
                peer,
                used: false,
                stopping: Box::pin(async move {
                    let _ = watch.wait_for(|stopped| *stopped).await;
                }),
            };
            Some((Ok::<_, std::io::Error>(connection), (listener, stopped)))
        },
    );
    let shutdown = async move {
        shutdown.await;
        let _ = stopped_tx.send(true);
    };
    let service = warp::service(routes);
    let make_service = make_service_fn(move |connection: &Connection| {
        let peer = connection.peer;
        let service = service.clone();
        let draining = draining.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |request| {
                let draining = draining.clone();
                let response = handle(service.clone(), peer, request_timeout, request);
                async move {
                    let mut response = response.await?;
                    // Not on a WebSocket upgrade, whose `Connection: upgrade` it would replace.
                    if draining.load(Ordering::Relaxed)
                        && response.status() != StatusCode::SWITCHING_PROTOCOLS
                    {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            }))
        }
    });
    hyper::Server::builder(hyper::server::accept::from_stream(incoming))
        .http1_header_read_timeout(Duration::from_secs(10))
        .serve(make_service)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn handle<S>(
    mut service: S,
    peer: SocketAddr,
    timeout: Duration,
    mut request: Request<Body>,
) -> Result<Response, Infallible>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let request_id = header_token(request.headers(), REQUEST_ID_HEADER)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let method = request.method().clone();
    // The path only: query strings may carry personal data (name filters).
    let path = request.uri().path().to_owned();
    let route = route_template(&path);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        request_id = %request_id,
        method = %method,
        path = %path,
        status = tracing::field::Empty,
    );
    // The client's trace continues here (or one starts); what this request writes to the
    // outbox carries the traceparent naming this span.
    let incoming = header_token(request.headers(), trace::TRACEPARENT);
    trace::continue_from(&span, incoming.as_deref());
    request.extensions_mut().insert(RequestMeta {
        request_id: request_id.clone(),
        client_addr: Some(peer),
        traceparent: trace::traceparent_of(&span),
    });
    let mut response = async {
        match tokio::time::timeout(timeout, service.call(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => {
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "Request timed out",
                )
                .detail("the request did not complete in time; it may or may not have been applied")
                .into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    add_security_headers(&path, response.headers_mut());
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allowed) = allowed_methods(&path)
    {
        response.headers_mut().insert(header::ALLOW, allowed);
    }
    let status = response.status();
    span.record("status", status.as_u16());
    let elapsed = started.elapsed();
    span.in_scope(|| {
        emit(RequestServed {
            method: method.as_str(),
            route: route_label(&path, route, status),
            status: status.as_u16(),
            elapsed,
        })
    });
    Ok(response)
}

/// Headers that keep browsers from sniffing, framing, caching or leaking what the API returns
/// (patients' data); Swagger UI under `/docs` keeps its scripts.
fn add_security_headers(path: &str, headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A page of ours (GraphiQL) sets its own policy; Swagger UI keeps its scripts.
    if !path.starts_with("/docs") && !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if path.starts_with("/api/") && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The methods a path answers (RFC 9110 §15.5.6: a 405 says them in `Allow`): the OpenAPI
/// document's operations on the path's template, and `/graphql`'s.
fn allowed_methods(path: &str) -> Option<HeaderValue> {
    static ROUTES: std::sync::LazyLock<Vec<(Vec<String>, String)>> =
        std::sync::LazyLock::new(|| {
            let document = crate::openapi::document();
            let mut routes: Vec<(Vec<String>, String)> = document["paths"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(template, item)| {
                    let methods: Vec<String> = ["get", "put", "post", "patch", "delete"]
                        .iter()
                        .filter(|method| item.get(**method).is_some())
                        .map(|method| method.to_ascii_uppercase())
                        .collect();
                    (
                        template.split('/').map(str::to_owned).collect(),
                        methods.join(", "),
                    )
                })
                .collect();
            routes.push((vec![String::new(), "graphql".into()], "GET, POST".into()));
            routes
        });
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES
        .iter()
        .find(|(template, _)| {
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .and_then(|(_, methods)| HeaderValue::from_str(methods).ok())
}

/// A bounded metrics label for a path: ids become `{id}`, unrouted paths are `other`.
/// The route `path` names, ids replaced by `{id}` (Swagger UI's files all `/docs`).
fn route_template(path: &str) -> String {
    if path.starts_with("/docs/") {
        return "/docs".into();
    }
    path.split('/')
        .map(|segment| {
            if Uuid::parse_str(segment).is_ok() {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The metrics label of a request to `path` (whose route is `template`) answered `status`:
/// a path that matched no route is `other` (or `/docs`), so label values stay bounded.
fn route_label(path: &str, template: String, status: StatusCode) -> String {
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        return if path.starts_with("/docs") {
            "/docs".into()
        } else {
            "other".into()
        };
    }
    template
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_405_names_the_methods_the_path_answers() {
        let id = Uuid::new_v4();
        let allowed = |path: &str| allowed_methods(path).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allowed("/api/v1/doctors").as_deref(), Some("GET, POST"));
        assert_eq!(
            allowed(&format!("/api/v1/patients/{id}")).as_deref(),
            Some("GET, PUT, PATCH, DELETE")
        );
        assert_eq!(
            allowed(&format!("/api/v1/appointments/{id}/cancel")).as_deref(),
            Some("POST")
        );
        assert_eq!(allowed("/graphql").as_deref(), Some("GET, POST"));
        assert_eq!(allowed("/nowhere"), None);
    }

    #[test]
    fn route_labels_are_bounded() {
        let id = Uuid::new_v4();
        let label = |path: &str, status| route_label(path, route_template(path), status);
        assert_eq!(
            label(&format!("/api/v1/patients/{id}"), StatusCode::OK),
            "/api/v1/patients/{id}"
        );
        assert_eq!(
            label("/api/v1/patients/nonsense", StatusCode::NOT_FOUND),
            "other"
        );
        assert_eq!(label("/docs/swagger-ui.css", StatusCode::OK), "/docs");
    }
}
