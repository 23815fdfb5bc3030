//! Subscriptions over WebSocket (`/graphql/ws`, `graphql-transport-ws` and the legacy
//! `graphql-ws`), fed by the [`SubscriptionHub`](medflow_actors::bus::hub::SubscriptionHub).
//!
//! The `connection_init` payload carries the bearer token (`{"Authorization": "Bearer …"}`,
//! also accepted as `authorization`, `token`, or under `headers`); each subscription is
//! authorised with the same policy as the REST reads of the same data. A connection may hold
//! up to `max_subscriptions_per_connection`; one whose subscriber cannot keep up is closed
//! (code 1008) without slowing anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::{Context, Json, SimpleObject, Subscription};
use futures::{SinkExt, Stream, StreamExt};
use medflow_actors::bus::hub::{BusEvent, EventFilter, HubMessage};
use tokio::sync::Notify;
use uuid::Uuid;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::ws::Message;
use warp::http::HeaderMap;
use warp::reply::Response;

use super::{MedflowSchema, OrGql, gql_error, request};
use crate::AppState;
use crate::extract::RequestMeta;
use crate::policy::{Action, Target};
use crate::problem::Problem;

/// A business event as a subscription delivers it.
#[derive(SimpleObject)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub event_timestamp: String,
    pub aggregate_type: String,
    pub aggregate_id: Json<serde_json::Value>,
    pub patient_id: Option<Uuid>,
    pub version: Option<i64>,
    /// The event's payload, as on the Kafka topic.
    pub payload: Json<serde_json::Value>,
    /// The payload, typed by the event's aggregate.
    pub data: EventData,
}

/// A typed business-event payload.
#[derive(async_graphql::Union)]
pub enum EventData {
    Patient(PatientEventData),
    Appointment(AppointmentEventData),
    Document(DocumentEventData),
    Other(OtherEventData),
}

/// `PatientCreated` (the whole record), `PatientUpdated` (`updatedFields`: each changed
/// field with its new value), `PatientDeleted` (the id).
#[derive(SimpleObject)]
pub struct PatientEventData {
    pub id: Uuid,
    pub updated_fields: Option<Vec<UpdatedField>>,
    pub first_name: Option<String>,
    pub middle_name: Option<String>,
    pub last_name: Option<String>,
    pub birth_date: Option<chrono::NaiveDate>,
    pub email: Option<String>,
}

/// One changed field and its new value (null: cleared).
#[derive(SimpleObject)]
pub struct UpdatedField {
    pub field: String,
    pub value: Option<String>,
}

impl PatientEventData {
    fn parse(payload: &serde_json::Value) -> Option<Self> {
        let text = |name: &str| payload[name].as_str().map(str::to_owned);
        Some(Self {
            id: payload["id"].as_str()?.parse().ok()?,
            updated_fields: payload["updatedFields"].as_object().map(|fields| {
                fields
                    .iter()
                    .map(|(field, value)| UpdatedField {
                        field: field.clone(),
                        value: match value {
                            serde_json::Value::Null => None,
                            serde_json::Value::String(text) => Some(text.clone()),
                            other => Some(other.to_string()),
                        },
                    })
                    .collect()
            }),
            first_name: text("firstName"),
            middle_name: text("middleName"),
            last_name: text("lastName"),
            birth_date: text("birthDate").and_then(|t| t.parse().ok()),
            email: text("email"),
        })
    }
}

/// `AppointmentScheduled` and `AppointmentStatusChanged` (with `previousStatus`, `action`
/// and, for a cancellation, `reason`).
#[derive(SimpleObject, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentEventData {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub scheduled_date: chrono::DateTime<chrono::Utc>,
    pub duration_minutes: Option<i32>,
    pub status: String,
    pub previous_status: Option<String>,
    pub action: Option<String>,
    pub reason: Option<String>,
}

/// Document events: ids and statuses, never clinical text (read it at `contentUri`).
#[derive(SimpleObject, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentEventData {
    pub id: Uuid,
    pub patient_id: Uuid,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub doc_type: String,
    pub status: String,
    pub content_version: Option<i32>,
    pub content_uri: Option<String>,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub author_id: Option<Uuid>,
    pub appointment_id: Option<Uuid>,
    pub updated_fields: Option<Vec<String>>,
    pub signer_id: Option<Uuid>,
    pub signed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub checksum: Option<String>,
    pub registry_id: Option<String>,
    pub reason: Option<String>,
}

/// Any other event (`ErrorOccurred`, or a payload this version does not know).
#[derive(SimpleObject)]
pub struct OtherEventData {
    pub json: Json<serde_json::Value>,
}

impl EventData {
    fn of(event: &BusEvent) -> Self {
        let raw = || {
            EventData::Other(OtherEventData {
                json: Json(event.payload.clone()),
            })
        };
        let payload = event.payload.clone();
        match event.aggregate_type.as_str() {
            "patient" => PatientEventData::parse(&payload)
                .map(EventData::Patient)
                .unwrap_or_else(raw),
            "appointment" => serde_json::from_value(payload)
                .map(EventData::Appointment)
                .unwrap_or_else(|_| raw()),
            "document" => serde_json::from_value(payload)
                .map(EventData::Document)
                .unwrap_or_else(|_| raw()),
            _ => raw(),
        }
    }
}

impl From<&BusEvent> for Event {
    fn from(event: &BusEvent) -> Self {
        Self {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            event_timestamp: event.event_timestamp.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: Json(event.aggregate_id.clone()),
            patient_id: event.patient_id,
            version: event.version,
            payload: Json(event.payload.clone()),
            data: EventData::of(event),
        }
    }
}

/// One WebSocket connection's bookkeeping.
pub struct Connection {
    active: Arc<AtomicUsize>,
    max: usize,
    /// Notified by the hub when a subscriber of this connection is too slow.
    too_slow: Arc<Notify>,
}

/// Counts a subscription of a connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    fn acquire(&self) -> async_graphql::Result<Slot> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.active.clone());
        if before >= self.max {
            return Err(gql_error(
                Problem::new(
                    warp::http::StatusCode::TOO_MANY_REQUESTS,
                    "too-many-subscriptions",
                    "Too many subscriptions",
                )
                .detail(format!(
                    "a connection may hold {} subscriptions at once",
                    self.max
                )),
            ));
        }
        Ok(slot)
    }
}

const AGGREGATE_LIST_ACTION: [(&str, Action); 3] = [
    ("patient", Action::PatientList),
    ("appointment", Action::AppointmentList),
    ("document", Action::DocumentList),
];

fn action_for_type(event_type: &str) -> Action {
    if event_type.starts_with("Patient") {
        Action::PatientRead
    } else if event_type.starts_with("Appointment") {
        Action::AppointmentList
    } else if event_type.starts_with("Document") {
        Action::DocumentList
    } else {
        Action::AuditList
    }
}

async fn subscribe(
    ctx: &Context<'_>,
    filter: EventFilter,
) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
    let (state, _) = request(ctx)?;
    let connection = ctx.data::<Connection>().map_err(|_| {
        gql_error(Problem::bad_request(
            "subscriptions are served over WebSocket at /graphql/ws",
        ))
    })?;
    let slot = connection.acquire()?;
    let hub = state.hub.as_ref().ok_or_else(|| {
        gql_error(
            Problem::new(
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            )
            .detail("subscriptions are not enabled on this instance"),
        )
    })?;
    let on_drop = connection.too_slow.clone();
    let subscription = hub
        .call(
            |reply| HubMessage::Subscribe {
                filter,
                on_drop,
                reply,
            },
            Some(Duration::from_secs(5)),
        )
        .await
        .ok()
        .and_then(|result| match result {
            ractor::rpc::CallResult::Success(subscription) => Some(subscription),
            _ => None,
        })
        .ok_or_else(|| gql_error(Problem::internal()))?;
    Ok(futures::stream::unfold(
        (subscription, slot),
        |(mut subscription, slot)| async move {
            let event = subscription.events.recv().await?;
            Some((Event::from(event.as_ref()), (subscription, slot)))
        },
    ))
}

fn known_types(types: &Option<Vec<String>>) -> async_graphql::Result<()> {
    for name in types.iter().flatten() {
        if !medflow_actors::cdc::reader::EVENT_TYPES.contains(&name.as_str()) {
            return Err(gql_error(Problem::invalid_field(
                "types",
                format!("{name} is not an event type"),
            )));
        }
    }
    Ok(())
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Changes of one patient: `PatientCreated`, `PatientUpdated`, `PatientDeleted`.
    async fn patient_changed(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::PatientRead, Target::Patient(id))
            .gql()?;
        subscribe(
            ctx,
            EventFilter {
                aggregate_type: Some("patient".into()),
                aggregate_id: Some(id),
                ..Default::default()
            },
        )
        .await
    }

    /// Bookings and status changes of a doctor's or a patient's appointments.
    async fn appointment_changed(
        &self,
        ctx: &Context<'_>,
        doctor_id: Option<Uuid>,
        patient_id: Option<Uuid>,
    ) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
        let (_, caller) = request(ctx)?;
        if doctor_id.is_none() && patient_id.is_none() {
            return Err(gql_error(Problem::bad_request(
                "give doctorId, patientId or both",
            )));
        }
        caller
            .authorize(
                Action::AppointmentList,
                patient_id.map_or(Target::Any, Target::Patient),
            )
            .gql()?;
        subscribe(
            ctx,
            EventFilter {
                aggregate_type: Some("appointment".into()),
                patient_id,
                doctor_id,
                ..Default::default()
            },
        )
        .await
    }

    /// Document events of one patient, optionally of some types only.
    async fn document_events(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        types: Option<Vec<String>>,
    ) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::DocumentList, Target::Patient(patient_id))
            .gql()?;
        known_types(&types)?;
        subscribe(
            ctx,
            EventFilter {
                types,
                aggregate_type: Some("document".into()),
                patient_id: Some(patient_id),
                ..Default::default()
            },
        )
        .await
    }

    /// Every event of the given types (all when omitted): for staff allowed to list what
    /// those events are about.
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
    ) -> async_graphql::Result<impl Stream<Item = Event> + use<>> {
        let (_, caller) = request(ctx)?;
        known_types(&types)?;
        match &types {
            Some(types) => {
                for name in types {
                    let action = action_for_type(name);
                    caller.authorize(action, Target::Any).gql()?;
                }
            }
            None => {
                for (_, action) in AGGREGATE_LIST_ACTION {
                    caller.authorize(action, Target::Any).gql()?;
                }
                caller.authorize(Action::AuditList, Target::Any).gql()?;
            }
        }
        subscribe(
            ctx,
            EventFilter {
                types,
                ..Default::default()
            },
        )
        .await
    }
}

/// The bearer token of a `connection_init` payload.
fn init_authorization(payload: &serde_json::Value) -> Option<String> {
    let direct = ["Authorization", "authorization"]
        .iter()
        .find_map(|key| payload[*key].as_str().map(str::to_owned))
        .or_else(|| {
            ["Authorization", "authorization"]
                .iter()
                .find_map(|key| payload["headers"][*key].as_str().map(str::to_owned))
        });
    direct.or_else(|| {
        payload["token"]
            .as_str()
            .map(|token| format!("Bearer {token}"))
    })
}

/// Checks each client message before async-graphql reads it:
/// - graphql-transport-ws: a `subscribe` before `connection_init` ends the connection, and
///   the caller closes it with 4401 Unauthorized (as the protocol specifies; async-graphql
///   itself would answer 1011);
/// - a `subscribe` (or legacy `start`) whose variables hold U+0000 is answered with an
///   `error` for its id naming the variable, as `POST /graphql` refuses it, and dropped.
fn guard_incoming(
    incoming: impl Stream<Item = Result<Message, warp::Error>> + Send + Unpin + 'static,
    mut out: futures::channel::mpsc::Sender<Message>,
    legacy: bool,
    unauthorized: Arc<std::sync::atomic::AtomicBool>,
) -> impl Stream<Item = Result<Message, warp::Error>> + Send + Unpin + 'static {
    let mut initialised = false;
    Box::pin(
        incoming
            .take_while(move |message| {
                let premature = !legacy
                    && !initialised
                    && message
                        .as_ref()
                        .ok()
                        .and_then(|message| message.to_str().ok())
                        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                        .is_some_and(|value| {
                            if value["type"] == "connection_init" {
                                initialised = true;
                            }
                            value["type"] == "subscribe"
                        });
                if premature {
                    unauthorized.store(true, Ordering::Relaxed);
                }
                futures::future::ready(!premature)
            })
            .filter(move |message| {
                let refusal = message
                    .as_ref()
                    .ok()
                    .and_then(|message| message.to_str().ok())
                    .filter(|text| text.contains("\\u0000"))
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                    .filter(|value| matches!(value["type"].as_str(), Some("subscribe" | "start")))
                    .and_then(|value| {
                        let problem = super::nul_variables_problem(&value["payload"]["variables"])?;
                        let error = serde_json::to_value(
                            gql_error(problem).into_server_error(Default::default()),
                        )
                        .ok()?;
                        let payload = if legacy { error } else { serde_json::json!([error]) };
                        Some(serde_json::json!({"id": value["id"], "type": "error", "payload": payload}))
                    });
                let keep = match refusal {
                    Some(reply) => {
                        // A full queue means the connection is being closed for lag anyway.
                        let _ = out.try_send(Message::text(reply.to_string()));
                        false
                    }
                    None => true,
                };
                futures::future::ready(keep)
            }),
    )
}

/// `GET /graphql/ws`: the WebSocket endpoint.
pub fn routes(state: AppState, schema: MedflowSchema) -> BoxedFilter<(Response,)> {
    let settings = state.graphql.clone();
    warp::path!("graphql" / "ws")
        .and(warp::ws())
        .and(async_graphql_warp::graphql_protocol())
        .and(warp::ext::optional::<RequestMeta>())
        .map(
            move |ws: warp::ws::Ws, protocol: async_graphql::http::WebSocketProtocols, meta| {
                let schema = schema.clone();
                let state = state.clone();
                let settings = settings.clone();
                let reply = ws.on_upgrade(move |socket| {
                    serve_connection(socket, schema, protocol, state, settings, meta)
                });
                warp::reply::with_header(
                    reply,
                    "Sec-WebSocket-Protocol",
                    protocol.sec_websocket_protocol(),
                )
                .into_response()
            },
        )
        .boxed()
}

use warp::Reply;

async fn serve_connection(
    socket: warp::ws::WebSocket,
    schema: MedflowSchema,
    protocol: async_graphql::http::WebSocketProtocols,
    state: AppState,
    settings: super::GraphqlSettings,
    meta: Option<RequestMeta>,
) {
    metrics::gauge!("medflow_graphql_ws_connections").increment(1.0);
    let too_slow = Arc::new(Notify::new());
    let mut data = async_graphql::Data::default();
    data.insert(Connection {
        active: Arc::new(AtomicUsize::new(0)),
        max: settings.max_subscriptions_per_connection,
        too_slow: too_slow.clone(),
    });
    let (mut ws_sink, ws_stream) = socket.split();
    // async-graphql writes into a bounded queue; this task drains it to the socket and adds
    // keep-alives, so a stalled socket is noticed here and not inside the executor.
    let (out, mut outgoing) = futures::channel::mpsc::channel::<Message>(16);
    let legacy = protocol == async_graphql::http::WebSocketProtocols::SubscriptionsTransportWS;
    let unauthorized = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws_stream = guard_incoming(ws_stream, out.clone(), legacy, unauthorized.clone());
    let init_state = state.clone();
    // A refused `connection_init` closes with 4403 Forbidden, as graphql-transport-ws
    // specifies (async-graphql itself says 1002).
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let init_refused = refused.clone();
    let serve = async_graphql_warp::GraphQLWebSocket::new_with_pair(
        out.sink_map_err(|_| ()),
        ws_stream,
        schema,
        protocol,
    )
    .with_data(data)
    .on_connection_init(move |payload| async move {
        let mut headers = HeaderMap::new();
        if let Some(value) = init_authorization(&payload)
            .and_then(|value| warp::http::HeaderValue::from_str(&value).ok())
        {
            headers.insert(warp::http::header::AUTHORIZATION, value);
        }
        let caller = crate::access::authenticate(&init_state, meta, &headers)
            .await
            .map_err(|problem| {
                init_refused.store(true, Ordering::Relaxed);
                async_graphql::Error::new(problem.detail.unwrap_or_else(|| problem.title.into()))
            })?;
        let mut data = async_graphql::Data::default();
        data.insert(caller);
        Ok(data)
    })
    .serve();
    let keepalive = settings.keepalive;
    let write = async {
        let mut ticker = tokio::time::interval(keepalive);
        ticker.tick().await;
        loop {
            let message = tokio::select! {
                message = outgoing.next() => match message {
                    Some(message) if message.is_close() && !legacy && refused.load(Ordering::Relaxed) => {
                        Message::close_with(4403u16, "Forbidden")
                    }
                    Some(message) => message,
                    None => break,
                },
                _ = ticker.tick() => if legacy {
                    Message::text(r#"{"type":"ka"}"#)
                } else {
                    Message::ping(Vec::new())
                },
            };
            if ws_sink.send(message).await.is_err() {
                break;
            }
        }
    };
    // The writer ends once the executor has ended and its last messages (a close frame
    // after a refused `connection_init`, say) are written.
    let closed_for_lag = tokio::select! {
        _ = futures::future::join(serve, write) => false,
        () = too_slow.notified() => true,
    };
    if unauthorized.load(Ordering::Relaxed) {
        // graphql-transport-ws: a `subscribe` before `connection_init` closes with 4401.
        let close = Message::close_with(4401u16, "Unauthorized");
        let _ = tokio::time::timeout(Duration::from_secs(1), ws_sink.send(close)).await;
    }
    if closed_for_lag {
        medflow_actors::internal_events::emit(medflow_actors::internal_events::WebSocketClosedSlow);
        let close = Message::close_with(1008u16, "subscriber too slow");
        let _ = tokio::time::timeout(Duration::from_secs(1), ws_sink.send(close)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws_sink.close()).await;
    metrics::gauge!("medflow_graphql_ws_connections").decrement(1.0);
}
