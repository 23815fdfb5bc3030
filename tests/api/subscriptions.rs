//! GraphQL subscriptions over WebSocket against the real stack: both subprotocols, auth in
//! `connection_init`, a write through one instance reaching a subscriber on another, the
//! per-connection cap, and a slow subscriber dropped without slowing a fast one.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use medflow_actors::bus::hub::{HubMessage, HubStats};
use medflow_http::policy::Role;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cdc::{app_slot, drop_slot, wait_streaming};
use crate::helpers::{TestApp, eventually, patient_body, spawn_app, spawn_app_on, spawn_app_with};

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn hub_stats(app: &TestApp) -> HubStats {
    let hub = app.app().hub().expect("subscriptions are enabled");
    match hub
        .call(HubMessage::Stats, Some(Duration::from_secs(5)))
        .await
        .unwrap()
    {
        ractor::rpc::CallResult::Success(stats) => stats,
        other => panic!("the hub did not answer: {other:?}"),
    }
}

pub(crate) async fn wait_hub(app: &TestApp, what: &str, done: impl Fn(&HubStats) -> bool) {
    eventually(Duration::from_secs(30), what, || async {
        done(&hub_stats(app).await).then_some(())
    })
    .await;
}

/// Opens `/graphql/ws` with `protocol`; `recv_buffer` shrinks the client's socket buffer.
async fn connect(app: &TestApp, protocol: &str, recv_buffer: Option<u32>) -> Socket {
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(address).await.unwrap();
    let mut request = format!("ws://{address}/graphql/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket handshake");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        protocol,
        "the server speaks the requested subprotocol"
    );
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string()))
        .await
        .unwrap();
}

/// The next JSON message, skipping keep-alives; `None` when the server closed.
async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a message within 30 s")?;
        match message.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "ka" || value["type"] == "ping" || value["type"] == "pong" {
                    continue;
                }
                return Some(value);
            }
            Message::Close(frame) => {
                return Some(json!({"type": "closed", "code": frame.map(|f| u16::from(f.code))}));
            }
            _ => continue,
        }
    }
}

/// Opens a connection on `protocol` and completes `connection_init` with `token`.
async fn open(app: &TestApp, protocol: &str, token: &str) -> Socket {
    let mut socket = connect(app, protocol, None).await;
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    let ack = next_json(&mut socket).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

fn subscribe_message(protocol: &str, id: &str, query: &str) -> Value {
    let kind = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    json!({"id": id, "type": kind, "payload": {"query": query}})
}

/// The event of the next data message for subscription `id`.
async fn next_event(socket: &mut Socket, field: &str) -> Value {
    let message = next_json(socket).await.expect("the connection is open");
    assert!(
        message["type"] == "next" || message["type"] == "data",
        "{message}"
    );
    message["payload"]["data"][field].clone()
}

/// The payload of the next result for subscription `id` (other messages are skipped).
async fn result_of(socket: &mut Socket, id: &str) -> Value {
    loop {
        let message = next_json(socket).await.expect("the connection is open");
        if message["id"] == id && (message["type"] == "next" || message["type"] == "data") {
            return message["payload"].clone();
        }
    }
}

fn staff_token(app: &TestApp) -> String {
    app.token(&[Role::Admin, Role::Registrar, Role::Doctor], None)
}

#[tokio::test]
async fn a_client_on_each_protocol_receives_the_event_of_a_rest_write() {
    let app = spawn_app_with(|settings| settings.cdc.enabled = true).await;
    wait_streaming(&app, Duration::from_secs(30)).await;
    wait_hub(&app, "the hub to consume", |stats| stats.consuming).await;
    let patient = app.create_patient(&patient_body(60_000)).await;
    let id = patient["id"].as_str().unwrap().to_owned();
    let token = staff_token(&app);
    let query = format!(
        r#"subscription {{ patientChanged(id: "{id}") {{ eventType aggregateId version payload data {{ __typename ... on PatientEventData {{ id updatedFields {{ field value }} }} }} }} }}"#
    );
    let mut sockets = Vec::new();
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut socket = open(&app, protocol, &token).await;
        send(&mut socket, subscribe_message(protocol, "1", &query)).await;
        sockets.push(socket);
    }
    wait_hub(&app, "both subscriptions", |stats| stats.subscriptions == 2).await;

    let response = app
        .client
        .patch(app.url(&format!("/api/v1/patients/{id}")))
        .header("content-type", "application/merge-patch+json")
        .json(&json!({"lastName": "Подписчикова"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for socket in &mut sockets {
        // The creation's event may still have been on its way when the subscription began.
        let mut event = next_event(socket, "patientChanged").await;
        if event["eventType"] == "PatientCreated" {
            event = next_event(socket, "patientChanged").await;
        }
        assert_eq!(event["eventType"], "PatientUpdated", "{event}");
        assert_eq!(event["aggregateId"], json!(id));
        assert_eq!(event["version"], 2);
        assert_eq!(
            event["payload"]["updatedFields"]["lastName"], "Подписчикова",
            "{event}"
        );
        assert_eq!(event["data"]["__typename"], "PatientEventData", "{event}");
        assert_eq!(event["data"]["id"], json!(id));
        assert_eq!(
            event["data"]["updatedFields"],
            json!([{"field": "lastName", "value": "Подписчикова"}]),
            "{event}"
        );
    }
    drop(sockets);
    wait_hub(&app, "the subscriptions to end", |stats| {
        stats.subscriptions == 0
    })
    .await;
    let db = app.db().await;
    let slot = app_slot(&app);
    app.shutdown().await;
    drop_slot(&db, &slot).await;
}

#[tokio::test]
async fn connection_init_needs_a_valid_token_and_subscriptions_follow_the_policy() {
    let app =
        spawn_app_with(|settings| settings.graphql.max_subscriptions_per_connection = 2).await;
    // No valid token: the connection is refused (4403 Forbidden on graphql-transport-ws).
    let mut socket = connect(&app, "graphql-transport-ws", None).await;
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": "Bearer nonsense"}}),
    )
    .await;
    let closed = next_json(&mut socket).await;
    assert_eq!(
        closed,
        Some(json!({"type": "closed", "code": 4403})),
        "{closed:?}"
    );

    // A patient may follow their own record only.
    let own = app.create_patient(&patient_body(61_000)).await;
    let other = app.create_patient(&patient_body(61_001)).await;
    let own_id = own["id"].as_str().unwrap();
    let token = app.token(&[Role::Patient], Some(own_id.parse().unwrap()));
    let mut socket = open(&app, "graphql-transport-ws", &token).await;
    let query = format!(
        r#"subscription {{ patientChanged(id: "{}") {{ eventType }} }}"#,
        other["id"].as_str().unwrap()
    );
    send(
        &mut socket,
        subscribe_message("graphql-transport-ws", "1", &query),
    )
    .await;
    let refused = result_of(&mut socket, "1").await;
    assert_eq!(refused["data"], Value::Null, "{refused}");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "forbidden",
        "{refused}"
    );

    // At most two subscriptions per connection.
    let query = format!(r#"subscription {{ patientChanged(id: "{own_id}") {{ eventType }} }}"#);
    for id in ["2", "3"] {
        send(
            &mut socket,
            subscribe_message("graphql-transport-ws", id, &query),
        )
        .await;
    }
    wait_hub(&app, "two subscriptions", |stats| stats.subscriptions == 2).await;
    send(
        &mut socket,
        subscribe_message("graphql-transport-ws", "4", &query),
    )
    .await;
    let refused = result_of(&mut socket, "4").await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "too-many-subscriptions",
        "{refused}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_write_through_one_instance_reaches_a_subscriber_on_another() {
    let a = spawn_app_with(|settings| settings.cdc.enabled = true).await;
    let settings = a.app().settings().clone();
    let b = spawn_app_on(a.db_name.clone(), a.db_url.clone(), |b| {
        b.kafka.topic_prefix = settings.kafka.topic_prefix.clone();
        b.cdc.slot = settings.cdc.slot.clone();
    })
    .await;
    wait_streaming(&a, Duration::from_secs(30)).await;
    wait_hub(&b, "instance B's hub to consume", |stats| stats.consuming).await;
    let doctor = a.create_doctor().await;
    let mut socket = open(&b, "graphql-transport-ws", &staff_token(&b)).await;
    let query = format!(
        r#"subscription {{ appointmentChanged(doctorId: "{doctor}") {{ eventType patientId payload data {{ ... on AppointmentEventData {{ doctorId status durationMinutes }} }} }} }}"#
    );
    send(
        &mut socket,
        subscribe_message("graphql-transport-ws", "1", &query),
    )
    .await;
    wait_hub(&b, "the subscription on B", |stats| {
        stats.subscriptions == 1
    })
    .await;

    let patient = a.create_patient(&patient_body(62_000)).await;
    let patient = patient["id"].as_str().unwrap();
    let booked = a
        .book(patient, &doctor, &crate::helpers::hours_ahead(30), 30)
        .await;
    assert_eq!(booked.status(), 201);
    let event = next_event(&mut socket, "appointmentChanged").await;
    assert_eq!(event["eventType"], "AppointmentScheduled", "{event}");
    assert_eq!(event["patientId"], patient);
    assert_eq!(event["payload"]["doctorId"], json!(doctor));
    assert_eq!(event["data"]["doctorId"], json!(doctor), "typed: {event}");
    assert_eq!(event["data"]["status"], "scheduled");
    assert_eq!(event["data"]["durationMinutes"], 30);
    b.shutdown().await;
    let db = a.db().await;
    let slot = app_slot(&a);
    a.shutdown().await;
    drop_slot(&db, &slot).await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_disconnected_and_the_other_keeps_receiving() {
    const EVENTS: usize = 30_000;
    const CHUNK: usize = 500;
    let app = spawn_app_with(|settings| settings.graphql.subscriber_buffer = 1_000).await;
    wait_hub(&app, "the hub to consume", |stats| stats.consuming).await;
    let token = staff_token(&app);
    let query = r#"subscription { events(types: ["PatientUpdated"]) { eventId } }"#;
    // The slow one: a tiny receive buffer, and it never reads after subscribing.
    let mut slow = connect(&app, "graphql-transport-ws", Some(4096)).await;
    send(
        &mut slow,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(
        next_json(&mut slow).await.unwrap()["type"],
        "connection_ack"
    );
    send(
        &mut slow,
        subscribe_message("graphql-transport-ws", "1", query),
    )
    .await;
    let mut fast = open(&app, "graphql-transport-ws", &token).await;
    send(
        &mut fast,
        subscribe_message("graphql-transport-ws", "1", query),
    )
    .await;
    wait_hub(&app, "both subscriptions", |stats| stats.subscriptions == 2).await;

    // Events straight onto the business topic, as any instance's CDC would publish them,
    // in chunks the fast subscriber reads before the next.
    let settings = app.app().settings();
    let topic = format!("{}PatientUpdated", settings.kafka.topic_prefix);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut received = 0;
    for chunk in 0..EVENTS / CHUNK {
        let mut deliveries = Vec::with_capacity(CHUNK);
        for n in 0..CHUNK {
            let id = uuid::Uuid::new_v4();
            let value = json!({
                "eventId": uuid::Uuid::new_v4(), "eventType": "PatientUpdated",
                "eventTimestamp": "2026-11-24T12:00:00Z", "aggregateType": "patient",
                "aggregateId": id, "patientId": id, "version": chunk * CHUNK + n,
                "payload": {"id": id, "lastName": "Медленная"},
            })
            .to_string();
            let key = id.to_string();
            deliveries.push(
                producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                    .unwrap(),
            );
        }
        for delivery in deliveries {
            delivery.await.unwrap().unwrap();
        }
        for _ in 0..CHUNK {
            let event = next_event(&mut fast, "events").await;
            assert!(event["eventId"].is_string(), "{event}");
            received += 1;
        }
    }
    assert_eq!(received, EVENTS);
    let stats = hub_stats(&app).await;
    assert_eq!(stats.dropped_slow, 1, "{stats:?}");
    assert_eq!(stats.subscriptions, 1, "only the fast subscriber is left");
    // The slow one finds its connection closed once it reads again.
    let ended = async {
        loop {
            match slow.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(60), ended)
        .await
        .expect("the slow connection ends");
    println!("slow subscriber's connection ended with close code {code:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn the_hub_is_supervised_and_its_loss_stops_the_application() {
    let mut app = spawn_app_with(|_| {}).await;
    let hub = app.app().hub().expect("subscriptions are enabled").clone();
    hub.get_cell().kill();
    let application = app.app.take().unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(20), application.run_until_stopped())
        .await
        .expect("the application stops")
        .expect("a clean stop");
    match reason {
        medflow::startup::StopReason::Fatal(reason) => {
            assert!(reason.starts_with("subscription hub"), "{reason}")
        }
        other => panic!("expected a fatal stop, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscribe_before_connection_init_closes_with_4401() {
    let app = spawn_app().await;
    let mut socket = connect(&app, "graphql-transport-ws", None).await;
    send(
        &mut socket,
        subscribe_message(
            "graphql-transport-ws",
            "1",
            "subscription { patientChanged(id: \"00000000-0000-0000-0000-000000000000\") { eventType } }",
        ),
    )
    .await;
    let closed = next_json(&mut socket).await;
    assert_eq!(
        closed,
        Some(json!({"type": "closed", "code": 4401})),
        "{closed:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_nul_in_subscription_variables_is_refused_naming_the_variable() {
    let app = spawn_app().await;
    let token = app.token(&[Role::Admin], None);
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut socket = open(&app, protocol, &token).await;
        let mut message = subscribe_message(
            protocol,
            "7",
            "subscription($id: UUID!) { patientChanged(id: $id) { eventType } }",
        );
        message["payload"]["variables"] = json!({"id": "a\u{0}b"});
        send(&mut socket, message).await;
        let reply = next_json(&mut socket).await.expect("an answer");
        assert_eq!(reply["id"], "7", "{reply}");
        assert_eq!(reply["type"], "error", "{reply}");
        let error = if protocol == "graphql-ws" {
            &reply["payload"]
        } else {
            &reply["payload"][0]
        };
        assert_eq!(error["extensions"]["code"], "validation-error", "{reply}");
        assert_eq!(
            error["extensions"]["fields"][0]["field"], "variables.id",
            "{reply}"
        );
    }
    app.shutdown().await;
}
