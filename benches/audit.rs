//! Audit benchmark (issue "Tamper-evident audit without a global lock"), run by
//! `scripts/bench-audit` against a private PostgreSQL with production durability
//! (`fsync = on`, `synchronous_commit = on`). Prints, for 1 and for 3 instances on one
//! database:
//!
//! (a) audited commits per second: `POST /api/v1/patients` (each one transaction with its
//!     audit row) at 32 clients spread over the instances, p50/p99;
//! (b) the mixed clinic load: 50 % GET of a patient, 20 % POST, 20 % PATCH, 10 % list, at
//!     32 clients — requests per second and p99;
//! (c) the sealing lag, p50/p99 and max: from an entry's write to the signed head that
//!     sealed it (when the schema has the sealed tree).
//!
//! Client, instances and PostgreSQL share the machine's two cores. It uses only the API and
//! SQL, so the same file measures an earlier commit too (copy it there to compare).

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;
#[path = "support/load.rs"]
mod load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use medflow_http::policy::Role;
use serde_json::json;

use load::drive;

const CLIENTS: usize = 32;
const PHASE: Duration = Duration::from_secs(8);
const WARMUP: Duration = Duration::from_secs(1);
const PATIENTS: usize = 200;

fn main() {
    if std::env::var("MEDFLOW_TEST_DATABASE_URL").is_err() {
        eprintln!("the benchmark needs the private stack: run scripts/bench-audit");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    println!(
        "medflow audit benchmark — {} cores, {CLIENTS} clients, phases of {PHASE:?} after {WARMUP:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    let mut mixed_one = 0.0;
    for instances in [1usize, 3] {
        let (db_name, db_url) = helpers::fresh_database().await;
        let mut apps = Vec::new();
        for _ in 0..instances {
            apps.push(
                helpers::spawn_app_on(db_name.clone(), db_url.clone(), |settings| {
                    settings.database.pool_size = CLIENTS;
                    settings.audit.seal_interval_ms = 500; // the production default
                })
                .await,
            );
        }
        let durability = apps[0]
            .db()
            .await
            .query_one(
                "SELECT current_setting('fsync') || '/' || current_setting('synchronous_commit')",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0);
        println!(
            "\n{instances} instance(s) on one database (fsync/synchronous_commit = {durability})"
        );
        let token = helpers::mint(
            &apps[0].auth,
            &apps[0].staff_subject,
            &[Role::Registrar, Role::Doctor],
            None,
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .default_headers(headers)
            .build()
            .unwrap();
        let bases: Arc<Vec<String>> =
            Arc::new(apps.iter().map(|app| app.url("/api/v1/patients")).collect());

        // (a) audited commits.
        let (c, b) = (client.clone(), bases.clone());
        let commits = drive(CLIENTS, PHASE, WARMUP, move |n| {
            let request = c
                .post(&b[n % b.len()])
                .json(&helpers::patient_body(n as u32));
            async move { request.send().await.is_ok_and(|r| r.status() == 201) }
        })
        .await;
        commits.print(&format!(
            "(a) audited commits (POST), {instances} instance(s)"
        ));

        // (b) the mixed load over patients that exist.
        let mut ids = Vec::new();
        for n in 0..PATIENTS {
            let created = apps[n % instances]
                .create_patient(&helpers::patient_body(5_000_000 + n as u32))
                .await;
            ids.push(created["id"].as_str().unwrap().to_owned());
        }
        let ids = Arc::new(ids);
        let (c, b) = (client.clone(), bases.clone());
        let mixed = drive(CLIENTS, PHASE, WARMUP, move |n| {
            let base = &b[n % b.len()];
            let id = &ids[(n * 7919) % ids.len()];
            let request = match n % 10 {
                0..=4 => c.get(format!("{base}/{id}")),
                5 | 6 => c
                    .post(base)
                    .json(&helpers::patient_body(10_000_000 + n as u32)),
                7 | 8 => c
                    .patch(format!("{base}/{id}"))
                    .json(&json!({"middleName": format!("Отчество{}", n % 97)})),
                _ => c.get(format!("{base}?limit=20")),
            };
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        mixed.print(&format!("(b) mixed clinic load, {instances} instance(s)"));
        if instances == 1 {
            mixed_one = mixed.per_second();
        } else {
            println!(
                "    3 instances / 1 instance, mixed load: {:.2}×",
                mixed.per_second() / mixed_one
            );
        }

        // (c) the sealing lag of everything written above.
        let db = apps[0].db().await;
        let sealed_tree = db
            .query_one("SELECT to_regclass('audit_leaves') IS NOT NULL", &[])
            .await
            .unwrap()
            .get::<_, bool>(0);
        if sealed_tree {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let unsealed: i64 = db
                    .query_one(
                        "SELECT count(*) FROM audit_log a
                          WHERE NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if unsealed == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let row = db
                .query_one(
                    "SELECT count(*),
                            percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY lag),
                            max(lag)
                       FROM (SELECT extract(epoch FROM h.sealed_at - a.occurred_at)::float8 * 1000 AS lag
                               FROM audit_leaves l
                               JOIN audit_log a ON a.id = l.audit_id
                               JOIN LATERAL (SELECT sealed_at FROM audit_tree_heads
                                              WHERE tree_size > l.leaf_index
                                              ORDER BY tree_size LIMIT 1) h ON true) lags",
                    &[],
                )
                .await
                .unwrap();
            println!(
                "(c) sealing lag over {} entries: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                row.get::<_, i64>(0),
                row.get::<_, Option<f64>>(1).unwrap_or_default(),
                row.get::<_, Option<f64>>(2).unwrap_or_default(),
                row.get::<_, Option<f64>>(3).unwrap_or_default(),
            );
        } else {
            println!("(c) no sealed tree in this schema (the hash chain links rows at commit)");
        }
        for app in apps {
            app.shutdown().await;
        }
    }
}
