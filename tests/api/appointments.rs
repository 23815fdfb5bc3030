//! Appointments: booking rules, the lifecycle, double-booking under concurrency, events.

use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_problem, hours_ahead, patient_body, spawn_app};

async fn setup(app: &TestApp) -> (String, String) {
    let patient = app.create_patient(&patient_body(1)).await;
    let doctor = app.create_doctor().await;
    (patient["id"].as_str().unwrap().to_owned(), doctor)
}

async fn act(app: &TestApp, id: &str, action: &str, body: Option<Value>) -> reqwest::Response {
    let request = app
        .client
        .post(app.url(&format!("/api/v1/appointments/{id}/{action}")));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.unwrap()
}

/// Brings a fresh appointment into `status` and returns its id.
async fn appointment_in(
    app: &TestApp,
    patient: &str,
    doctor: &str,
    hours: i64,
    status: &str,
) -> String {
    let response = app.book(patient, doctor, &hours_ahead(hours), 30).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let steps: &[&str] = match status {
        "scheduled" => &[],
        "in_progress" => &["start"],
        "completed" => &["start", "complete"],
        "cancelled" => &["cancel"],
        other => panic!("{other}"),
    };
    for step in steps {
        let body = (*step == "cancel").then(|| json!({"reason": "пациент заболел"}));
        assert_eq!(act(app, &id, step, body).await.status(), 200, "{step}");
    }
    id
}

#[tokio::test]
async fn every_transition_is_allowed_or_refused_with_the_current_status() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    // (action, from, to or None when refused)
    let table = [
        ("start", "scheduled", Some("in_progress")),
        ("start", "in_progress", None),
        ("start", "completed", None),
        ("start", "cancelled", None),
        ("complete", "scheduled", None),
        ("complete", "in_progress", Some("completed")),
        ("complete", "completed", None),
        ("complete", "cancelled", None),
        ("cancel", "scheduled", Some("cancelled")),
        ("cancel", "in_progress", None),
        ("cancel", "completed", None),
        ("cancel", "cancelled", None),
        ("reschedule", "scheduled", Some("scheduled")),
        ("reschedule", "in_progress", None),
        ("reschedule", "completed", None),
        ("reschedule", "cancelled", None),
    ];
    for (n, (action, from, to)) in table.into_iter().enumerate() {
        let id = appointment_in(&app, &patient, &doctor, 24 + 2 * n as i64, from).await;
        let body = match action {
            "cancel" => Some(json!({"reason": "отмена"})),
            "reschedule" => Some(json!({"startsAt": hours_ahead(500 + n as i64)})),
            _ => None,
        };
        let response = act(&app, &id, action, body).await;
        match to {
            Some(to) => {
                assert_eq!(response.status(), 200, "{action} from {from}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["status"], to, "{action} from {from}");
            }
            None => {
                let problem = expect_problem(response, 409).await;
                assert_eq!(problem["currentStatus"], from, "{action} from {from}");
            }
        }
    }
    // A rescheduled appointment keeps its duration and moves.
    let id = appointment_in(&app, &patient, &doctor, 900, "scheduled").await;
    let new_time = hours_ahead(901);
    let moved: Value = act(&app, &id, "reschedule", Some(json!({"startsAt": new_time})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["durationMinutes"], 30);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(moved["startsAt"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(&new_time).unwrap()
    );
    // Unknown actions and a cancel without a reason are refused.
    expect_problem(act(&app, &id, "teleport", None).await, 404).await;
    expect_problem(
        act(&app, &id, "cancel", Some(json!({"reason": ""}))).await,
        400,
    )
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn twenty_clients_booking_one_slot_yield_exactly_one_appointment() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let slot = hours_ahead(48);
    let attempts = (0..20).map(|_| app.book(&patient, &doctor, &slot, 30));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM appointments").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE event_type = 'AppointmentScheduled'")
            .await,
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn overlaps_are_refused_adjacent_slots_and_other_doctors_are_not() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let other_doctor = app.create_doctor().await;
    let start = chrono::Utc::now() + chrono::Duration::hours(72);
    let at = |minutes: i64| {
        (start + chrono::Duration::minutes(minutes))
            .format("%Y-%m-%dT%H:%M:00Z")
            .to_string()
    };
    assert_eq!(app.book(&patient, &doctor, &at(0), 60).await.status(), 201);
    let problem = expect_problem(app.book(&patient, &doctor, &at(30), 60).await, 409).await;
    assert!(problem["detail"].as_str().unwrap().contains("overlapping"));
    expect_problem(app.book(&patient, &doctor, &at(-30), 31).await, 409).await;
    // Back to back is fine, and so is another doctor at the same time.
    assert_eq!(app.book(&patient, &doctor, &at(60), 30).await.status(), 201);
    assert_eq!(
        app.book(&patient, &doctor, &at(-30), 30).await.status(),
        201
    );
    assert_eq!(
        app.book(&patient, &other_doctor, &at(0), 60).await.status(),
        201
    );
    // A cancelled appointment frees its slot; rescheduling onto a taken slot is refused.
    let cancelled = app.book(&patient, &doctor, &at(600), 30).await;
    let cancelled = cancelled.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    act(
        &app,
        &cancelled,
        "cancel",
        Some(json!({"reason": "перенос"})),
    )
    .await;
    assert_eq!(
        app.book(&patient, &doctor, &at(600), 30).await.status(),
        201
    );
    let movable = app.book(&patient, &doctor, &at(900), 30).await;
    let movable = movable.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = act(
        &app,
        &movable,
        "reschedule",
        Some(json!({"startsAt": at(600)})),
    )
    .await;
    expect_problem(refused, 409).await;
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_or_archived_parties_are_422_and_invalid_bookings_400_writing_nothing() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let problem =
        expect_problem(app.book(&unknown, &doctor, &hours_ahead(10), 30).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "patientId");
    let problem = expect_problem(
        app.book(&patient, &unknown, &hours_ahead(10), 30).await,
        422,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "doctorId");

    let archived = app.create_patient(&patient_body(2)).await;
    let archived = archived["id"].as_str().unwrap();
    app.client
        .delete(app.url(&format!("/api/v1/patients/{archived}")))
        .send()
        .await
        .unwrap();
    let problem =
        expect_problem(app.book(archived, &doctor, &hours_ahead(10), 30).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "patientId");
    assert!(problem["detail"].as_str().unwrap().contains("archived"));

    for (starts_at, minutes, field) in [
        (hours_ahead(-24), 30, "startsAt"),
        (hours_ahead(10), 4, "durationMinutes"),
        (hours_ahead(10), 241, "durationMinutes"),
    ] {
        let problem =
            expect_problem(app.book(&patient, &doctor, &starts_at, minutes).await, 400).await;
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let response = app
        .post_json(
            "/api/v1/appointments",
            &json!({"patientId": patient, "doctorId": doctor, "startsAt": "2030-01-01T10:00:00",
                    "durationMinutes": 30, "payment": "oms", "visit": "primary"}),
        )
        .await;
    let problem = expect_problem(response, 400).await;
    assert!(problem.to_string().contains("startsAt"), "{problem}");
    let response = app
        .post_json(
            "/api/v1/appointments",
            &json!({"patientId": patient, "doctorId": doctor, "startsAt": hours_ahead(10),
                    "durationMinutes": 30, "payment": "free", "visit": "primary"}),
        )
        .await;
    assert_eq!(
        expect_problem(response, 400).await["errors"][0]["field"],
        "payment"
    );
    assert_eq!(app.count("SELECT count(*) FROM appointments").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE object_type = 'appointment'")
            .await,
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn appointments_list_by_filters_and_emit_their_events() {
    let app = spawn_app().await;
    let (patient, doctor) = setup(&app).await;
    let other = app.create_patient(&patient_body(3)).await;
    let other = other["id"].as_str().unwrap();
    let first = appointment_in(&app, &patient, &doctor, 30, "scheduled").await;
    appointment_in(&app, &patient, &doctor, 31, "in_progress").await;
    appointment_in(&app, other, &doctor, 32, "scheduled").await;

    let page: Value = app
        .get(&format!(
            "/api/v1/appointments?patientId={patient}&status=scheduled"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], first.as_str());
    let page: Value = app
        .get(&format!("/api/v1/appointments?doctorId={doctor}&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let from = urlencode(&hours_ahead(31));
    let page: Value = app
        .get(&format!("/api/v1/appointments?from={from}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2);
    expect_problem(app.get("/api/v1/appointments?status=done").await, 400).await;

    let db = app.db().await;
    let events: Vec<(String, Value)> = db
        .query(
            "SELECT event_type, payload FROM outbox WHERE aggregate_type = 'appointment' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "AppointmentScheduled",
            "AppointmentScheduled",
            "AppointmentStatusChanged",
            "AppointmentScheduled"
        ]
    );
    let scheduled = &events[0].1;
    for key in ["id", "patientId", "doctorId", "scheduledDate", "status"] {
        assert!(scheduled.get(key).is_some(), "{key} in {scheduled}");
    }
    assert_eq!(events[2].1["previousStatus"], "scheduled");
    assert_eq!(events[2].1["status"], "in_progress");
    app.shutdown().await;
}

fn urlencode(value: &str) -> String {
    value.replace(':', "%3A").replace('+', "%2B")
}
