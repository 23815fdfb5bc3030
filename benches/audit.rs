//! Audit benchmark (issue "Tamper-evident audit without a global lock"), run by
//! `scripts/bench-audit` against a private PostgreSQL with production durability
//! (`fsync = on`, `synchronous_commit = on`). Prints, for 1 and for 3 instances on one
//! database:
//!
//! (a) audited commits per second: `POST /api/v1/patients` (each one transaction with its
//!     audit row), with 8 clients per instance (the offered load grows with the pods, as in
//!     a clinic), and with 32 clients spread over the instances; p50/p99;
//! (b) the mixed clinic load on a database of its own: 50 % GET of a patient, 20 % POST,
//!     20 % PATCH, 10 % list, at 32 clients — requests per second and p99;
//!     and again where every WAL flush waits 2 ms (a synchronous standby's round trip);
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
use std::time::Duration;

use serde_json::json;

use load::drive;

const CLIENTS: usize = 32;
const PHASE: Duration = Duration::from_secs(8);
const WARMUP: Duration = Duration::from_secs(1);
const PATIENTS: usize = 200;

fn main() {
    load::on_private_stack("scripts/bench-audit", run());
}

/// `instances` applications on one fresh database, and a client carrying a staff token.
/// With `flush_delay_us`, every commit's WAL flush waits that long first (PostgreSQL's
/// `commit_delay`, with `commit_siblings = 1`): a stand-in for a synchronous standby's round
/// trip, where a commit holding a global lock holds it for the whole wait.
async fn cluster(
    instances: usize,
    flush_delay_us: u32,
) -> (Vec<helpers::TestApp>, reqwest::Client, Arc<Vec<String>>) {
    let (db_name, db_url) = helpers::fresh_database().await;
    if flush_delay_us > 0 {
        let (admin, connection) =
            tokio_postgres::connect(&helpers::admin_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {db_name} SET commit_delay = {flush_delay_us};
                 ALTER DATABASE {db_name} SET commit_siblings = 1"
            ))
            .await
            .unwrap();
    }
    let mut apps = Vec::new();
    for _ in 0..instances {
        apps.push(
            helpers::spawn_app_on(db_name.clone(), db_url.clone(), |settings| {
                settings.database.pool_size = 16;
                // Nothing here reads the broker: a connected tansu 0.6 idles at ~70 % of a
                // core (it answers fetches at once), which this machine's two cores lack.
                settings.graphql.subscriptions = false;
                settings.audit.seal_interval_ms = 500; // the production default
            })
            .await,
        );
    }
    let client = load::staff_client(&apps[0], CLIENTS);
    let bases = Arc::new(apps.iter().map(|app| app.url("/api/v1/patients")).collect());
    (apps, client, bases)
}

/// (a): creates at `clients`, spread over the instances (patients numbered from `first`).
async fn commits(
    client: &reqwest::Client,
    bases: &Arc<Vec<String>>,
    clients: usize,
    first: u32,
) -> load::Figures {
    let (c, b) = (client.clone(), bases.clone());
    drive(clients, PHASE, WARMUP, move |n| {
        let request = c
            .post(&b[n % b.len()])
            .json(&helpers::patient_body(first + n as u32));
        async move { request.send().await.is_ok_and(|r| r.status() == 201) }
    })
    .await
}

/// (c): from each entry's write to the head that sealed it, once everything is sealed.
async fn sealing_lag(app: &helpers::TestApp) {
    let db = app.db().await;
    let sealed_tree: bool = db
        .query_one("SELECT to_regclass('audit_leaves') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if !sealed_tree {
        println!("(c) no sealed tree in this schema (the hash chain links rows at commit)");
        return;
    }
    app.all_audit_sealed(Duration::from_secs(120)).await;
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
}

async fn run() {
    println!(
        "medflow audit benchmark — {} cores, phases of {PHASE:?} after {WARMUP:?}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    let mut figures = Vec::new();
    for instances in [1usize, 3] {
        let (apps, client, bases) = cluster(instances, 0).await;
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
        let per_pod = commits(&client, &bases, 8 * instances, 0).await;
        per_pod.print(&format!(
            "(a) audited commits, 8 clients × {instances} instance(s)"
        ));
        let fixed = commits(&client, &bases, CLIENTS, 2_000_000).await;
        fixed.print(&format!(
            "    audited commits, {CLIENTS} clients, {instances} instance(s)"
        ));
        sealing_lag(&apps[0]).await;
        for app in apps {
            app.shutdown().await;
        }

        // (a) again where every flush waits 2 ms, as for a synchronous standby.
        let (apps, client, bases) = cluster(instances, 2_000).await;
        let delayed = commits(&client, &bases, 8 * instances, 0).await;
        delayed.print(&format!(
            "    … each flush 2 ms later, 8 clients × {instances}"
        ));
        for app in apps {
            app.shutdown().await;
        }

        // (b) the mixed load, on a database of its own, over patients that exist.
        let (apps, client, bases) = cluster(instances, 0).await;
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
        mixed.print(&format!(
            "(b) mixed clinic load, {CLIENTS} clients, {instances} instance(s)"
        ));
        figures.push((
            per_pod.per_second(),
            delayed.per_second(),
            mixed.per_second(),
        ));
        for app in apps {
            app.shutdown().await;
        }
    }
    println!(
        "\n3 instances / 1: audited commits (8 clients per instance) {:.2}×, with 2 ms flushes {:.2}×, mixed load {:.2}×",
        figures[1].0 / figures[0].0,
        figures[1].1 / figures[0].1,
        figures[1].2 / figures[0].2
    );
}
