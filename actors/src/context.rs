//! Who asked, from where, as part of which request: recorded with every audited access and
//! carried into outbox events as the trace parent.

/// The caller of one operation, as the transport established it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The authenticated principal (until authentication lands: the `X-Actor-Id` header).
    pub actor_id: String,
    /// The request id echoed in `X-Request-Id` and written to logs.
    pub request_id: String,
    /// The client's network address.
    pub client_addr: Option<String>,
    /// The W3C `traceparent` of the incoming request, if any.
    pub traceparent: Option<String>,
}

impl RequestContext {
    /// Returns a context for work the system does on its own behalf (consumers, tests).
    pub fn system(component: &str) -> Self {
        Self {
            actor_id: format!("system:{component}"),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_addr: None,
            traceparent: None,
        }
    }
}
