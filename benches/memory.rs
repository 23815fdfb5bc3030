//! Memory per entity benchmark (issue "Many instances, one truth"), run by `scripts/bench`
//! against the private PostgreSQL it starts. Prints, for 20,000 patients read once:
//!
//! (a) heap bytes per **live** patient actor (its task, mailboxes, host entry and state);
//! (b) heap bytes per **idle** patient — its actor passivated, its last state kept by the host
//!     (the form an entity takes after `actors.idle_timeout_ms` without a request) — against
//!     the target of < 4 KiB per idle entity.
//!
//! Heap bytes (allocated and not yet freed) are counted by this binary's global allocator
//! (`stats_alloc`), so freed memory is not hidden by an allocator that keeps its pages, as
//! resident memory would; resident memory is printed beside for reference. librdkafka's and PostgreSQL's own
//! memory are not in the Rust heap and not in these figures.

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;
#[path = "support/resident.rs"]
mod resident;

use std::alloc::System;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use uuid::Uuid;

use helpers::{TestApp, eventually, spawn_app_on, spawn_app_with};
use resident::resident_bytes;

const PATIENTS: usize = 20_000;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed.
fn heap_bytes() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Reads every patient once through `app`'s patient actors, 500 at a time.
async fn read_all(app: &TestApp, ids: &[Uuid]) {
    let patients = app.app().patients().clone();
    for chunk in ids.chunks(500) {
        let reads = chunk.iter().map(|id| patients.get(*id));
        for read in futures::future::join_all(reads).await {
            read.unwrap();
        }
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    // (a) live actors: nothing passivates during the run.
    let live_app = spawn_app_with(|settings| settings.actors.idle_timeout_ms = 3_600_000).await;
    let db = live_app.db().await;
    db.batch_execute(&format!(
        "INSERT INTO patients (id, first_name, middle_name, last_name, birth_date, email) \
         SELECT gen_random_uuid(), 'Анна', 'Сергеевна', 'Иванова' || g, DATE '1985-03-14', 'p' || g || '@example.org' \
         FROM generate_series(1, {PATIENTS}) AS g"
    ))
    .await
    .unwrap();
    let ids: Vec<Uuid> = db
        .query("SELECT id FROM patients", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Warm up what every read allocates once (pools, prepared statements).
    read_all(&live_app, &ids[..500]).await;
    let (heap, rss) = (heap_bytes(), resident_bytes() as isize);
    read_all(&live_app, &ids[500..]).await;
    let stats = live_app.app().patients().stats().await.unwrap();
    let live = (stats.live - 500) as isize;
    let live_bytes = (heap_bytes() - heap) / live;
    println!(
        "(a) {live} live patient actors: heap +{:.1} MiB, {live_bytes} bytes per actor (resident +{:.1} MiB)",
        (heap_bytes() - heap) as f64 / 1048576.0,
        (resident_bytes() as isize - rss) as f64 / 1048576.0,
    );
    let (db_name, db_url) = (live_app.db_name.clone(), live_app.db_url.clone());
    live_app.shutdown().await;

    // (b) idle entities: the same patients through an instance whose actors passivate after
    // a second without a request.
    let idle_app = spawn_app_on(db_name, db_url, |settings| {
        settings.actors.idle_timeout_ms = 1_000;
        settings.actors.sweep_interval_ms = 100;
        settings.actors.call_timeout_ms = 400;
        settings.http.request_timeout_ms = 400;
    })
    .await;
    let patients = idle_app.app().patients().clone();
    let all_idle = |count: usize| {
        let patients = patients.clone();
        eventually(
            Duration::from_secs(120),
            "every patient actor to be passivated",
            move || {
                let patients = patients.clone();
                async move {
                    let stats = patients.stats().await.unwrap();
                    (stats.live == 0 && stats.idle == count).then_some(stats)
                }
            },
        )
    };
    read_all(&idle_app, &ids[..500]).await;
    all_idle(500).await;
    let (heap, rss) = (heap_bytes(), resident_bytes() as isize);
    read_all(&idle_app, &ids[500..]).await;
    let stats = all_idle(ids.len()).await;
    // Heap of the 500 warm-up patients' idle states is in the baseline.
    let idle = (stats.idle - 500) as isize;
    let idle_bytes = (heap_bytes() - heap) / idle;
    println!(
        "(b) {idle} idle patients (actors stopped, states kept): heap +{:.1} MiB, {idle_bytes} bytes per idle patient (target < 4096; {:.2}× a live actor) (resident +{:.1} MiB, the allocator keeps freed actors' pages)",
        (heap_bytes() - heap) as f64 / 1048576.0,
        idle_bytes as f64 / live_bytes as f64,
        (resident_bytes() as isize - rss) as f64 / 1048576.0,
    );
    idle_app.shutdown().await;
}
