//! CDC benchmark (issue "event bus"), run by `scripts/bench` against its private PostgreSQL
//! and tansu. Prints, on this machine:
//!
//! (a) sustained row changes per second from commit to Kafka acknowledgement through the CDC
//!     path, fed with bulk SQL so REST costs do not count (target ≥ 10 000/s);
//! (b) commit-to-delivery latency p50/p99 at a steady 1 000 changes/s (target p99 < 100 ms).
//!     It is measured at a consumer (commit time from the envelope's `source.ts_ms` to the
//!     moment the record is consumed), an upper bound of commit-to-acknowledgement;
//! (c) the floor under (b): the broker alone, 1 000 records/s produced straight to it with the
//!     pipeline's producer settings (idempotent, `acks=all`, same linger), send → ack;
//! (d) how long `pg_ctl -m fast restart` takes while the application streams its CDC and
//!     writes through REST at concurrency 8 (a cluster of the benchmark's own, 5 rounds).
//!
//! They run in the order b, c, d, a: after taking (a)'s 200 000 records tansu answers
//! slowly for a while (metadata requests time out), which would skew the others.

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../tests/api/own_postgres.rs"]
mod own_postgres;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use medflow_actors::bus::producer::KafkaProducer;
use medflow_actors::cdc::CdcStatusCell;
use medflow_actors::cdc::reader::{CdcReader, CdcSettings};
use ractor::Actor;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio_postgres::NoTls;

const BULK_ROWS: i64 = 200_000;
const BULK_CHUNK: i64 = 10_000;
const STEADY_RATE: u64 = 1_000;
const STEADY_SECONDS: u64 = 10;

fn main() {
    if std::env::var("MEDFLOW_TEST_DATABASE_URL").is_err() {
        eprintln!("the benchmark needs the private stack: run scripts/bench");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn confirmed_at_least(db: &tokio_postgres::Client, slot: &str, mark: &str) -> bool {
    db.query_one(
        "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot, &mark],
    )
    .await
    .map(|row| row.get(0))
    .unwrap_or(false)
}

async fn run() {
    // The schema, from the application's migrations; the pipeline runs on its own below.
    let app = helpers::spawn_app_with(|settings| {
        settings.cdc.enabled = false;
        // As in production (30 s) or longer: a batch timing out under the bulk load makes
        // librdkafka bump its producer epoch, after which tansu 0.6.0 panics (lite.rs:503).
        settings.kafka.message_timeout_ms = 60_000;
    })
    .await;
    let settings = app.app().settings().clone();
    let kafka = settings.kafka();
    let slot = format!("bench_{}", app.db_name);
    let cdc = CdcSettings {
        database_url: app.db_url.clone().into(),
        slot: slot.clone(),
        publication: "medflow_cdc".into(),
        server_name: "medflow".into(),
        batch_max: 5_000,
        batch_wait: Duration::from_millis(5),
        status_interval: Duration::from_millis(50),
        heartbeat: Duration::from_secs(1),
        transaction_metadata: false,
    };
    let (producer, _) = Actor::spawn(
        None,
        KafkaProducer {
            settings: kafka.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let status = CdcStatusCell::new(&slot);
    let (reader, _) = Actor::spawn(
        None,
        CdcReader {
            settings: cdc.clone(),
            kafka: kafka.clone(),
            producer: producer.clone(),
            status: status.clone(),
        },
        (),
    )
    .await
    .unwrap();
    let (db, connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    println!(
        "medflow CDC benchmark — {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // (b) A steady 1 000 single-row commits per second; latency seen by a consumer.
    let topic = cdc.change_topic(&kafka, "doctors");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set(
            "group.id",
            format!("bench{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    // Let the group settle on the partitions before producing.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let pool: Vec<tokio_postgres::Client> = {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (client, connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
            tokio::spawn(connection);
            clients.push(client);
        }
        clients
    };
    let pool = std::sync::Arc::new(pool);
    let total = STEADY_RATE * STEADY_SECONDS;
    let writer = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / STEADY_RATE));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..total {
                ticker.tick().await;
                let pool = pool.clone();
                tokio::spawn(async move {
                    let client = &pool[(n % 8) as usize];
                    let _ = client
                        .execute(
                            "INSERT INTO doctors (id, first_name, last_name, specialty) VALUES (gen_random_uuid(), 'Анна', 'Steady', 'терапевт')",
                            &[],
                        )
                        .await;
                });
            }
        }
    });
    let mut latency = Histogram::<u64>::new(3).unwrap();
    // The reader's own figure: commit → Kafka acknowledgement of each confirmed batch's last
    // transaction, sampled as records arrive.
    let mut acked = Histogram::<u64>::new(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(STEADY_SECONDS + 30);
    while latency.len() < total && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let Some(payload) = message.payload() else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
        if value["after"]["last_name"] != "Steady" {
            continue;
        }
        let commit_ms = value["source"]["ts_ms"].as_i64().unwrap_or_default();
        let now_ms = chrono::Utc::now().timestamp_millis();
        latency.record((now_ms - commit_ms).max(0) as u64).unwrap();
        if let Some(lag) = status.get().lag_ms {
            acked.record(lag.max(0) as u64).unwrap();
        }
    }
    writer.await.unwrap();
    println!(
        "(b) {} changes at {STEADY_RATE}/s: commit → consumed p50 {} ms, p99 {} ms, max {} ms (target p99 < 100 ms)",
        latency.len(),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
    );
    println!(
        "    reader commit → Kafka ack (last transaction of each batch): p50 {} ms, p99 {} ms",
        acked.value_at_quantile(0.5),
        acked.value_at_quantile(0.99)
    );

    // (c) The broker alone at the same rate and producer settings.
    let direct: rdkafka::producer::FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "max.in.flight.requests.per.connection",
            kafka.max_in_flight.to_string(),
        )
        .set("linger.ms", kafka.linger.as_millis().to_string())
        .create()
        .unwrap();
    let floor_topic = kafka.topic("bench.floor");
    medflow_actors::bus::topics::ensure_topics(&kafka, std::slice::from_ref(&floor_topic))
        .await
        .unwrap();
    let floor = std::sync::Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / STEADY_RATE));
    let mut pending = Vec::new();
    for n in 0..total {
        ticker.tick().await;
        let key = (n % 64).to_string();
        let sent = Instant::now();
        let delivery = direct
            .send_result(
                rdkafka::producer::FutureRecord::to(&floor_topic)
                    .key(&key)
                    .payload("{\"bench\":true}"),
            )
            .unwrap();
        let floor = floor.clone();
        pending.push(tokio::spawn(async move {
            if let Ok(Ok(_)) = delivery.await {
                floor
                    .lock()
                    .unwrap()
                    .record(sent.elapsed().as_millis() as u64)
                    .unwrap();
            }
        }));
    }
    for task in pending {
        task.await.unwrap();
    }
    {
        let floor = floor.lock().unwrap();
        println!(
            "(c) the broker alone, {} records at {STEADY_RATE}/s: send → ack p50 {} ms, p99 {} ms",
            floor.len(),
            floor.value_at_quantile(0.5),
            floor.value_at_quantile(0.99)
        );
    }
    fast_restarts().await;

    // (a) last: tansu answers slowly after taking 200 000 records, which would skew the
    // others. Bulk inserts, committed in chunks; done when the slot confirms past the last.
    let started = Instant::now();
    let mut inserted = 0;
    while inserted < BULK_ROWS {
        db.execute(
            "INSERT INTO doctors (id, first_name, last_name, specialty)
             SELECT gen_random_uuid(), 'Иван', 'Петров-' || g, 'терапевт'
               FROM generate_series(1, $1::int8) AS g",
            &[&BULK_CHUNK],
        )
        .await
        .unwrap();
        inserted += BULK_CHUNK;
    }
    let committed = started.elapsed();
    let last = helpers::emit_mark(&db).await;
    let confirm_deadline = Instant::now() + Duration::from_secs(300);
    while !confirmed_at_least(&db, &slot, &last).await {
        assert!(
            Instant::now() < confirm_deadline,
            "the pipeline did not confirm the bulk load within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "(a) {BULK_ROWS} row changes committed in {:.2} s, all acknowledged by Kafka after {:.2} s: {:.0} changes/s (target ≥ 10000)",
        committed.as_secs_f64(),
        elapsed.as_secs_f64(),
        BULK_ROWS as f64 / elapsed.as_secs_f64()
    );

    reader.stop(None);
    producer.stop(None);
    drop(status);
    app.shutdown().await;
}

async fn fast_restarts() {
    const ROUNDS: usize = 5;
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(own_postgres::OwnPostgres::start)
            .await
            .unwrap(),
    );
    let app = helpers::spawn_app_on("postgres".into(), cluster.url(), |settings| {
        settings.cdc.enabled = true;
    })
    .await;
    let streaming = || async {
        let status: serde_json::Value = app.get("/api/v1/admin/cdc").await.json().await.ok()?;
        (status["state"] == "streaming").then_some(())
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = futures::stream::iter(0..u32::MAX)
        .take_while(|_| std::future::ready(!done.load(std::sync::atomic::Ordering::Relaxed)))
        .for_each_concurrent(8, |n| {
            let app = &app;
            async move {
                // Refused while the server restarts: only the restart's duration counts here.
                let _ = app
                    .post_json("/api/v1/patients", &helpers::patient_body(n))
                    .await;
            }
        });
    let restarts = async {
        let mut took = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            helpers::eventually(Duration::from_secs(60), "cdc to stream", streaming).await;
            let restarting = cluster.clone();
            let started = Instant::now();
            tokio::task::spawn_blocking(move || restarting.pg_ctl_within("restart", 60))
                .await
                .unwrap();
            took.push(started.elapsed());
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        took
    };
    let (_, mut took) = tokio::join!(load, restarts);
    took.sort();
    println!(
        "(d) pg_ctl -m fast restart with medflow streaming and writing (8 concurrent): min {:.2} s, median {:.2} s, max {:.2} s over {ROUNDS} rounds (target < 10 s)",
        took[0].as_secs_f64(),
        took[ROUNDS / 2].as_secs_f64(),
        took[ROUNDS - 1].as_secs_f64()
    );
    app.shutdown().await;
}
