//! API benchmark (issue "walking skeleton"), run by `scripts/bench` against the private
//! PostgreSQL it starts. Prints, on this machine and in one run:
//!
//! (a) `POST /api/v1/patients` at 32 concurrent clients — throughput, p50/p99 — and the ratio
//!     to plain SQL doing the same inserts (row + audit + outbox in one transaction) at the
//!     same concurrency (target ≥ 0.7);
//! (b) `GET /api/v1/patients/{id}` of live actors at 64 concurrent clients, and the ratio to a
//!     trivial warp handler on the same machine (target ≥ 0.5);
//!
//! Memory per live actor and per idle entity is measured by `benches/memory.rs`.
//!
//! Client and server share the machine's two cores in every phase, so the ratios compare
//! like with like.

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;
#[path = "support/load.rs"]
mod load;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use medflow_actors::RequestContext;
use medflow_actors::domain::{PatientData, PatientFields};
use serde_json::json;
use uuid::Uuid;

use load::drive;
use warp::Filter;

const WRITE_CLIENTS: usize = 32;
const READ_CLIENTS: usize = 64;
const PHASE: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_millis(500);

async fn plain_sql_pool(url: &str, size: usize) -> Pool {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager).max_size(size).build().unwrap()
}

/// The same three inserts medflow makes for a create, in one transaction, without HTTP or
/// actors.
async fn plain_sql_insert(pool: &Pool, n: usize) -> bool {
    let Ok(mut client) = pool.get().await else {
        return false;
    };
    let Ok(tx) = client.transaction().await else {
        return false;
    };
    let id = Uuid::now_v7();
    let birth = chrono::NaiveDate::from_ymd_opt(1985, 3, 14).unwrap();
    let snils = helpers::valid_snils(500_000_000 + n as u32);
    let insert = tx
        .prepare_cached(
            "INSERT INTO patients (id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING version, created_at, updated_at",
        )
        .await
        .unwrap();
    let email = format!("p{n}@example.org");
    let ok = tx
        .query_one(
            &insert,
            &[
                &id,
                &"Анна",
                &Some("Сергеевна"),
                &"Иванова",
                &birth,
                &Some(email.as_str()),
                &Some(snils.as_str()),
                &None::<String>,
            ],
        )
        .await
        .is_ok();
    let audit = tx
        .prepare_cached("INSERT INTO audit_log (actor_id, action, object_type, object_id, client_addr, request_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .await
        .unwrap();
    let ok = ok
        && tx
            .execute(
                &audit,
                &[
                    &"bench",
                    &"patient.create",
                    &"patient",
                    &id,
                    &Some("127.0.0.1"),
                    &"req",
                    &json!({"version": 1}),
                ],
            )
            .await
            .is_ok();
    let outbox = tx
        .prepare_cached("INSERT INTO outbox (id, aggregate_type, aggregate_id, patient_id, event_type, version, payload, traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .await
        .unwrap();
    let payload = json!({"id": id, "firstName": "Анна", "lastName": "Иванова", "birthDate": birth});
    let ok = ok
        && tx
            .execute(
                &outbox,
                &[
                    &Uuid::now_v7(),
                    &"patient",
                    &id,
                    &Some(id),
                    &"PatientCreated",
                    &1i64,
                    &payload,
                    &None::<String>,
                ],
            )
            .await
            .is_ok();
    ok && tx.commit().await.is_ok()
}

fn main() {
    load::on_private_stack("scripts/bench", run());
}

async fn run() {
    println!(
        "medflow API benchmark — {} cores; phases of {:?} after {:?} warm-up",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        PHASE,
        WARMUP
    );
    let app = helpers::spawn_app_with(|settings| {
        settings.database.pool_size = WRITE_CLIENTS;
    })
    .await;
    let client = load::staff_client(&app, READ_CLIENTS);

    // (a) creates through the API, then the same inserts in plain SQL.
    let url = app.url("/api/v1/patients");
    let api_client = client.clone();
    let api = drive(WRITE_CLIENTS, PHASE, WARMUP, move |n| {
        let request = api_client
            .post(url.clone())
            .json(&helpers::patient_body(n as u32));
        async move { request.send().await.is_ok_and(|r| r.status() == 201) }
    })
    .await;
    api.print("(a) POST /patients, 32 clients");
    let patients = app.app().patients().clone();
    let direct = drive(WRITE_CLIENTS, PHASE, WARMUP, move |n| {
        let patients = patients.clone();
        async move {
            let body = helpers::patient_body(1_000_000 + n as u32);
            let fields = PatientFields {
                first_name: body["firstName"].as_str().unwrap().into(),
                middle_name: body["middleName"].as_str().map(Into::into),
                last_name: body["lastName"].as_str().unwrap().into(),
                birth_date: chrono::NaiveDate::from_ymd_opt(1985, 3, 14).unwrap(),
                email: body["email"].as_str().map(Into::into),
                snils: body["snils"].as_str().map(Into::into),
                oms_policy: body["omsPolicy"].as_str().map(Into::into),
            };
            let data = PatientData::parse(fields, chrono::Utc::now().date_naive()).unwrap();
            patients
                .create(data, &RequestContext::system("bench"))
                .await
                .is_ok()
        }
    })
    .await;
    direct.print("    the same via Patients::create, no HTTP");
    let (_, sql_db) = helpers::fresh_database().await;
    let migrated =
        helpers::spawn_app_with(|settings| settings.database.url = sql_db.clone().into()).await;
    migrated.shutdown().await;
    let pool = Arc::new(plain_sql_pool(&sql_db, WRITE_CLIENTS).await);
    let sql = drive(WRITE_CLIENTS, PHASE, WARMUP, move |n| {
        let pool = pool.clone();
        async move { plain_sql_insert(&pool, n).await }
    })
    .await;
    sql.print("    plain SQL, same transaction, 32 clients");
    println!(
        "    ratio API / plain SQL: {:.2} (target ≥ 0.70); domain API without HTTP / plain SQL: {:.2}",
        api.per_second() / sql.per_second(),
        direct.per_second() / sql.per_second()
    );

    // (b) reads of live actors, then a trivial warp handler.
    let page: serde_json::Value = client
        .get(app.url("/api/v1/patients?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Arc<Vec<String>> = Arc::new(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect(),
    );
    for id in ids.iter() {
        client
            .get(app.url(&format!("/api/v1/patients/{id}")))
            .send()
            .await
            .unwrap();
    }
    let base = app.url("/api/v1/patients/");
    let read_client = client.clone();
    let read_ids = ids.clone();
    let reads = drive(READ_CLIENTS, PHASE, WARMUP, move |n| {
        let request = read_client.get(format!("{base}{}", read_ids[n % read_ids.len()]));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    reads.print("(b) GET /patients/{id} (live actors), 64 clients");
    // The same reads spread over three instances on one database (as k8s runs them): every
    // read validates its cached state against the committed version in its audit round trip.
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(helpers::spawn_app_on(app.db_name.clone(), app.db_url.clone(), |_| {}).await);
    }
    let bases: Arc<Vec<String>> = Arc::new(
        std::iter::once(&app)
            .chain(others.iter())
            .map(|instance| instance.url("/api/v1/patients/"))
            .collect(),
    );
    for base in bases.iter() {
        for id in ids.iter() {
            client.get(format!("{base}{id}")).send().await.unwrap();
        }
    }
    let spread_client = client.clone();
    let spread_ids = ids.clone();
    let spread = drive(READ_CLIENTS, PHASE, WARMUP, move |n| {
        let base = &bases[n % bases.len()];
        let request =
            spread_client.get(format!("{base}{}", spread_ids[(n / 3) % spread_ids.len()]));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    spread.print("    the same over three instances (round robin), 64 clients");
    println!(
        "    ratio three instances / one: {:.2}",
        spread.per_second() / reads.per_second()
    );
    for other in others {
        other.shutdown().await;
    }
    let trivial = warp::path!("ping").map(|| {
        warp::reply::json(&json!({"id": "00000000-0000-0000-0000-000000000000", "ok": true}))
    });
    let (address, server) = warp::serve(trivial).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    let ping = format!("http://{address}/ping");
    let ping_client = client.clone();
    let baseline = drive(READ_CLIENTS, PHASE, WARMUP, move |_| {
        let request = ping_client.get(ping.clone());
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    baseline.print("    trivial warp handler, 64 clients");
    println!(
        "    ratio API / trivial handler: {:.2} (target ≥ 0.50)",
        reads.per_second() / baseline.per_second()
    );

    app.shutdown().await;
}
