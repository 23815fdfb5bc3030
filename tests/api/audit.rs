//! The audit trail of reads and writes, the application role's grants on it, and its
//! tamper-evident Merkle tree: sealing, verification, inclusion proofs, tampering before and
//! after sealing, several instances, a sealer killed mid-round, the upgrade from the chain.

use std::time::Duration;

use ed25519_dalek::{Signature, SigningKey, Verifier};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use crate::helpers::{
    TEST_AUDIT_SIGNING_KEY, TestApp, eventually, expect_problem, fresh_database, patient_body,
    spawn_app, spawn_app_on, spawn_app_with,
};

#[tokio::test]
async fn reads_and_writes_of_clinical_data_are_audited_and_refusals_are_not() {
    let app = spawn_app().await;
    let patient = app.create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let doctor = app.create_doctor().await;
    let booked = app
        .book(&patient, &doctor, &crate::helpers::hours_ahead(3), 30)
        .await;
    let appointment = booked.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let document = app.create_document(&patient, &doctor).await;
    let document = document["id"].as_str().unwrap().to_owned();
    let rows = app
        .count("SELECT coalesce(max(id), 0) FROM audit_log")
        .await;

    for path in [
        format!("/api/v1/patients/{patient}"),
        "/api/v1/patients".to_owned(),
        format!("/api/v1/appointments/{appointment}"),
        format!("/api/v1/appointments?patientId={patient}"),
        format!("/api/v1/documents/{document}"),
        format!("/api/v1/documents?patientId={patient}"),
        format!("/api/v1/documents/{document}/versions"),
        format!("/api/v1/documents/{document}/versions/1"),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .header("X-Request-Id", format!("read-{}", path.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let actions: Vec<String> = app
        .column(
            "SELECT action FROM audit_log WHERE id > $1 ORDER BY id",
            &[&rows],
        )
        .await;
    assert_eq!(
        actions,
        [
            "patient.read",
            "patient.list",
            "appointment.read",
            "appointment.list",
            "document.read",
            "document.list",
            "document.versions",
            "document.version.read",
        ]
    );
    let by_staff = app.count(&format!(
        "SELECT count(*) FROM audit_log WHERE id > {rows} AND actor_id = '{}' AND request_id LIKE 'read-%' AND client_addr = '127.0.0.1'",
        app.staff_subject
    ))
    .await;
    assert_eq!(by_staff, 8);

    // Refused requests leave nothing: unknown ids, bad ids, forbidden, unauthenticated.
    let before = app.count("SELECT count(*) FROM audit_log").await;
    let unknown = uuid::Uuid::new_v4();
    expect_problem(app.get(&format!("/api/v1/patients/{unknown}")).await, 404).await;
    expect_problem(app.get(&format!("/api/v1/documents/{unknown}")).await, 404).await;
    expect_problem(app.get("/api/v1/appointments/not-a-uuid").await, 400).await;
    let management = app.token(&[medflow_http::policy::Role::Management], None);
    let response = app
        .anonymous
        .get(app.url(&format!("/api/v1/documents/{document}")))
        .bearer_auth(management)
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    let response = app
        .anonymous
        .get(app.url(&format!("/api/v1/patients/{patient}")))
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, before);

    // The audit listing answers "who touched this object".
    let listing: Value = app
        .get(&format!("/api/v1/audit?objectId={document}"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "document.version.read",
            "document.versions",
            "document.list",
            "document.read",
            "document.create",
        ]
    );
    all_sealed(&app).await;
    let verify = verify(&app).await;
    assert_eq!(verify["valid"], true, "{verify}");
    app.shutdown().await;
}

#[tokio::test]
async fn the_application_role_cannot_update_or_delete_audit_rows() {
    // A database owned by an ordinary role, as in production: the migrations run as that
    // role, and revoke its UPDATE and DELETE on the audit log.
    let (name, admin_url) = fresh_database().await;
    let role = format!("app_{name}");
    let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {name} OWNER TO {role}; \
             ALTER SCHEMA public OWNER TO {role};"
        ))
        .await
        .unwrap();
    let role_url = admin_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        role_url, admin_url,
        "the test cluster URL names the postgres user"
    );
    let app = spawn_app_with(|settings| settings.database.url = role_url.clone().into()).await;
    app.create_patient(&patient_body(1)).await;

    let (client, connection) = tokio_postgres::connect(&role_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    for sql in [
        "UPDATE audit_log SET actor_id = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let error = client.batch_execute(sql).await.unwrap_err();
        let error = format!("{error:?}");
        assert!(error.contains("permission denied"), "{sql}: {error}");
    }
    // Appending still works (the application's own writes above did).
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM audit_log", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    app.shutdown().await;
}

/// `GET /api/v1/admin/audit/verify[?full=true]`, which must answer 200.
pub async fn verify_with(app: &TestApp, full: bool) -> Value {
    let path = if full {
        "/api/v1/admin/audit/verify?full=true"
    } else {
        "/api/v1/admin/audit/verify"
    };
    let response = app.get(path).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

pub async fn verify(app: &TestApp) -> Value {
    verify_with(app, false).await
}

/// Waits until every audit row present is sealed into the tree.
pub async fn all_sealed(app: &TestApp) {
    app.all_audit_sealed(SEALING_DEADLINE).await;
}

/// How long sealing may take here. A round decodes the cluster's WAL, and the test cluster's
/// WAL carries every concurrent test's writes (the schemathesis run alone writes thousands of
/// rows): on two busy cores a round has taken over 20 s (2 of 10 full runs).
const SEALING_DEADLINE: Duration = Duration::from_secs(90);

/// Waits until the tree has at least `leaves` leaves.
async fn sealed_at_least(app: &TestApp, leaves: i64) {
    eventually(SEALING_DEADLINE, "leaves sealed", || async {
        (app.count("SELECT count(*) FROM audit_leaves").await >= leaves).then_some(())
    })
    .await;
}

/// Runs `sql` bypassing the append-only triggers, as an intruder with superuser rights would.
async fn tamper(app: &TestApp, sql: &str) {
    app.db()
        .await
        .batch_execute(&format!(
            "SET session_replication_role = replica; {sql}; SET session_replication_role = origin;"
        ))
        .await
        .unwrap();
}

/// Holds the sealing advisory lock: every instance's sealing rounds skip until resumed.
/// It waits for the sealer's slot and its first backfill first, so what is written meanwhile
/// is sealed from the WAL.
struct SealingPaused {
    client: tokio_postgres::Client,
}

impl SealingPaused {
    async fn new(app: &TestApp) -> Self {
        let slot = app.app().settings().audit.slot.clone();
        eventually(Duration::from_secs(20), "the sealing slot", || async {
            let exists = app
                .count(&format!(
                    "SELECT count(*) FROM pg_replication_slots, audit_seal_state
                      WHERE slot_name = '{slot}' AND NOT backfill_pending"
                ))
                .await;
            (exists == 1).then_some(())
        })
        .await;
        let client = app.db().await;
        client
            .execute(
                "SELECT pg_advisory_lock($1)",
                &[&medflow_actors::store::AUDIT_SEAL_LOCK],
            )
            .await
            .unwrap();
        Self { client }
    }

    async fn resume(self) {
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1)",
                &[&medflow_actors::store::AUDIT_SEAL_LOCK],
            )
            .await
            .unwrap();
    }
}

/// RFC 9162 §2.1.3.2, written again here from the RFC rather than taken from medflow.
fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    path: &[[u8; 32]],
    root: [u8; 32],
) -> bool {
    let node = |left: &[u8; 32], right: &[u8; 32]| -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update([1u8]);
        hasher.update(left);
        hasher.update(right);
        hasher.finalize().into()
    };
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, leaf);
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == root
}

fn hash32(hex_text: &Value) -> [u8; 32] {
    hex::decode(hex_text.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn entries_are_sealed_into_a_signed_tree_and_each_has_an_inclusion_proof() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = app.create_patient(&patient_body(n)).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
        assert_eq!(
            app.get(&format!("/api/v1/patients/{}", ids[0]))
                .await
                .status(),
            200
        );
    }
    all_sealed(&app).await;
    let rows = app.count("SELECT count(*) FROM audit_log").await;
    assert_eq!(rows, 10);
    let report = verify(&app).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["leavesChecked"], rows);
    assert_eq!(report["signed"], true);
    assert_eq!(report["unsealedRows"], 0);
    let head = report["head"].clone();
    assert_eq!(head["treeSize"], rows);

    // The head's signature verifies with the public key derived from the configured seed.
    let seed: [u8; 32] = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        TEST_AUDIT_SIGNING_KEY,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let public = SigningKey::from_bytes(&seed).verifying_key();
    assert_eq!(report["publicKey"], hex::encode(public.as_bytes()));

    // Every entry's proof verifies against the newest head, computed independently here.
    let listing: Value = app
        .get("/api/v1/audit?limit=100")
        .await
        .json()
        .await
        .unwrap();
    for entry in listing["items"].as_array().unwrap() {
        assert!(entry["leafIndex"].is_i64(), "{entry}");
        let response = app
            .get(&format!(
                "/api/v1/admin/audit/entries/{}/proof",
                entry["id"]
            ))
            .await;
        assert_eq!(response.status(), 200);
        let proof: Value = response.json().await.unwrap();
        assert_eq!(proof["contentHash"], entry["contentHash"]);
        let index = proof["leafIndex"].as_u64().unwrap();
        let mut leaf = Sha256::new();
        leaf.update([0u8]);
        leaf.update(index.to_be_bytes());
        leaf.update(hash32(&proof["contentHash"]));
        let leaf: [u8; 32] = leaf.finalize().into();
        assert_eq!(hex::encode(leaf), proof["leafHash"]);
        let path: Vec<[u8; 32]> = proof["auditPath"]
            .as_array()
            .unwrap()
            .iter()
            .map(hash32)
            .collect();
        let size = proof["head"]["treeSize"].as_u64().unwrap();
        let root = hash32(&proof["head"]["rootHash"]);
        assert!(verify_inclusion(index, size, leaf, &path, root), "{proof}");
        let sealed_at =
            chrono::DateTime::parse_from_rfc3339(proof["head"]["sealedAt"].as_str().unwrap())
                .unwrap();
        let mut message = b"medflow audit tree head v1\0".to_vec();
        message.extend(size.to_be_bytes());
        message.extend(sealed_at.timestamp_micros().to_be_bytes());
        message.extend(root);
        let signature: Vec<u8> = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            proof["head"]["signature"].as_str().unwrap(),
        )
        .unwrap();
        let signature = Signature::from_slice(&signature).unwrap();
        assert!(
            public.verify(&message, &signature).is_ok(),
            "the head is signed"
        );
    }

    // Unknown, malformed: 404 and 400 as documented.
    expect_problem(
        app.get("/api/v1/admin/audit/entries/999999/proof").await,
        404,
    )
    .await;
    expect_problem(app.get("/api/v1/admin/audit/entries/abc/proof").await, 400).await;
    expect_problem(app.get("/api/v1/admin/audit/verify?full=maybe").await, 400).await;

    // The next verification resumes from the verified head and checks only what is new.
    app.create_patient(&patient_body(99)).await;
    all_sealed(&app).await;
    let again = verify(&app).await;
    assert_eq!(again["valid"], true, "{again}");
    assert_eq!(again["verifiedFrom"], rows);
    assert_eq!(again["leavesChecked"], 1);
    let full = verify_with(&app, true).await;
    assert_eq!(full["valid"], true, "{full}");
    assert_eq!(full["verifiedFrom"], 0);
    assert_eq!(full["leavesChecked"], rows + 1);
    app.shutdown().await;
}

/// The kinds of tampering the tests try, each on a fresh log of four entries.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    Edit,
    Delete,
    Reorder,
    Insert,
}

/// Tampers with a log of four written entries, before or after they are sealed, and
/// returns the verification report and the entry that should be named.
async fn tampered(kind: Tamper, before_sealing: bool) -> (Value, i64) {
    let app = spawn_app().await;
    let paused = if before_sealing {
        Some(SealingPaused::new(&app).await)
    } else {
        None
    };
    for n in 0..4 {
        app.create_patient(&patient_body(n)).await;
    }
    if !before_sealing {
        all_sealed(&app).await;
    }
    let ids: Vec<i64> = app
        .column("SELECT id FROM audit_log ORDER BY id", &[])
        .await;
    assert_eq!(ids.len(), 4);
    let (second, third) = (ids[1], ids[2]);
    let named = match kind {
        Tamper::Edit => {
            tamper(
                &app,
                &format!("UPDATE audit_log SET actor_id = 'somebody-else' WHERE id = {second}"),
            )
            .await;
            second
        }
        Tamper::Delete => {
            tamper(&app, &format!("DELETE FROM audit_log WHERE id = {second}")).await;
            second
        }
        Tamper::Reorder if before_sealing => {
            // The two entries swap their times: the log now tells another order.
            tamper(
                &app,
                &format!(
                    "UPDATE audit_log a SET occurred_at = b.occurred_at
                       FROM audit_log b
                      WHERE (a.id, b.id) IN (({second}, {third}), ({third}, {second}))"
                ),
            )
            .await;
            second
        }
        Tamper::Reorder => {
            // The two leaves swap places in the tree.
            tamper(
                &app,
                "UPDATE audit_leaves SET leaf_index = 1000000 WHERE leaf_index = 1;
                 UPDATE audit_leaves SET leaf_index = 1 WHERE leaf_index = 2;
                 UPDATE audit_leaves SET leaf_index = 2 WHERE leaf_index = 1000000",
            )
            .await;
            third
        }
        Tamper::Insert => {
            // A forged entry copying another one's stamp.
            tamper(
                &app,
                &format!(
                    "INSERT INTO audit_log (actor_id, action, object_type, object_id, details, content_hash)
                     SELECT actor_id, action, object_type, object_id, details, content_hash
                       FROM audit_log WHERE id = {second}"
                ),
            )
            .await;
            app.count("SELECT max(id) FROM audit_log").await
        }
    };
    if let Some(paused) = paused {
        if matches!(kind, Tamper::Edit | Tamper::Insert) {
            // Not sealed yet, the entry is already caught by its stamp.
            let report = verify(&app).await;
            assert_eq!(report["valid"], false, "{kind:?}: {report}");
            assert_eq!(report["problem"]["entryId"], named, "{kind:?}: {report}");
        }
        paused.resume().await;
        let expected = if matches!(kind, Tamper::Insert) { 5 } else { 4 };
        sealed_at_least(&app, expected).await;
    }
    let report = verify_with(&app, true).await;
    app.shutdown().await;
    (report, named)
}

/// Every kind of tampering, before or after sealing, is detected naming the entry.
async fn every_tampering_is_detected(before_sealing: bool) {
    for kind in [
        Tamper::Edit,
        Tamper::Delete,
        Tamper::Reorder,
        Tamper::Insert,
    ] {
        let (report, named) = tampered(kind, before_sealing).await;
        assert_eq!(report["valid"], false, "{kind:?}: {report}");
        assert_eq!(report["problem"]["entryId"], named, "{kind:?}: {report}");
        println!(
            "{kind:?} (before sealing: {before_sealing}): {}",
            report["problem"]["reason"]
        );
    }
}

#[tokio::test]
async fn tampering_before_sealing_is_detected_naming_the_entry() {
    every_tampering_is_detected(true).await;
}

#[tokio::test]
async fn tampering_after_sealing_is_detected_naming_the_entry() {
    every_tampering_is_detected(false).await;
}

#[tokio::test]
async fn three_instances_writing_at_once_build_one_consistent_tree() {
    let (db_name, db_url) = fresh_database().await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(spawn_app_on(db_name.clone(), db_url.clone(), |_| {}).await);
    }
    let writes = apps.iter().enumerate().map(|(i, app)| async move {
        for n in 0..40u32 {
            let created = app.create_patient(&patient_body(i as u32 * 1000 + n)).await;
            let id = created["id"].as_str().unwrap();
            assert_eq!(
                app.get(&format!("/api/v1/patients/{id}")).await.status(),
                200
            );
        }
    });
    futures::future::join_all(writes).await;
    let app = &apps[0];
    all_sealed(app).await;
    let rows = app.count("SELECT count(*) FROM audit_log").await;
    assert_eq!(rows, 3 * 40 * 2);
    // One dense tree: leaves 0..n-1, each entry once.
    assert_eq!(app.count("SELECT count(*) FROM audit_leaves").await, rows);
    assert_eq!(
        app.count("SELECT max(leaf_index) + 1 FROM audit_leaves")
            .await,
        rows
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT audit_id) FROM audit_leaves")
            .await,
        rows
    );
    // Verifications at the same time on every instance all answer, and agree.
    let reports = futures::future::join_all(apps.iter().map(|app| verify_with(app, true))).await;
    for report in reports {
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["leavesChecked"], rows);
    }
    let incremental = futures::future::join_all(apps.iter().map(verify)).await;
    for report in incremental {
        assert_eq!(report["valid"], true, "{report}");
    }
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_sealer_killed_mid_round_resumes_without_gaps_or_duplicates() {
    // This instance seals once at start, then not for an hour: the process below is the
    // only sealer while the backlog lasts.
    let app = spawn_app_with(|settings| {
        settings.audit.batch_changes = 500;
        settings.audit.seal_interval_ms = 3_600_000;
    })
    .await;
    let paused = SealingPaused::new(&app).await;
    // A backlog of 60 transactions of 500 rows, written as medflow writes them.
    let db = app.db().await;
    for _ in 0..60 {
        db.batch_execute(
            "INSERT INTO audit_log (actor_id, action, object_type, details)
             SELECT 'backlog', 'patient.read', 'patient', jsonb_build_object('n', n)
               FROM generate_series(1, 500) AS n",
        )
        .await
        .unwrap();
    }
    let total = app.count("SELECT count(*) FROM audit_log").await;
    // A process seals the backlog and is killed with SIGKILL while a round's transaction is
    // open; another instance then takes over.
    let log = crate::own_postgres::test_work_dir("sealer").join("medflow.log");
    let process = crate::resilience::MedflowProcess::start_with(
        &app,
        &log,
        &[("MEDFLOW__AUDIT__BATCH_CHANGES", "500")],
    )
    .await;
    paused.resume().await;
    let mid_round = eventually(
        Duration::from_secs(30),
        "a sealing round in progress",
        || async {
            let open = app
                .count(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'medflow-audit-sealer' AND xact_start IS NOT NULL
                    AND datname = current_database()",
                )
                .await;
            let sealed = app.count("SELECT count(*) FROM audit_leaves").await;
            (open > 0 && sealed > 0 && sealed < total).then_some(sealed)
        },
    )
    .await;
    process.kill();
    let sealed_then = app.count("SELECT count(*) FROM audit_leaves").await;
    println!("killed with {mid_round}..{sealed_then} of {total} sealed");
    // What was committed is a dense prefix; the rest follows, once each.
    assert_eq!(
        app.count("SELECT coalesce(max(leaf_index) + 1, 0) FROM audit_leaves")
            .await,
        sealed_then
    );
    let successor = spawn_app_on(app.db_name.clone(), app.db_url.clone(), |settings| {
        settings.audit.batch_changes = 500;
    })
    .await;
    all_sealed(&app).await;
    assert_eq!(app.count("SELECT count(*) FROM audit_leaves").await, total);
    assert_eq!(
        app.count("SELECT max(leaf_index) + 1 FROM audit_leaves")
            .await,
        total
    );
    let report = verify_with(&app, true).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["leavesChecked"], total);
    successor.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_log_chained_before_the_upgrade_is_sealed_first_and_keeps_verifying() {
    let (db_name, db_url) = fresh_database().await;
    // The schema as it was with the hash chain (migrations up to V6), and rows chained by it.
    let store =
        medflow_actors::PgStore::connect(&crate::helpers::test_settings(&db_url).store()).unwrap();
    store.migrate_until(Some(6)).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    for n in 0..5 {
        client
            .execute(
                "INSERT INTO audit_log (actor_id, action, object_type, details)
                 VALUES ('before-upgrade', 'patient.read', 'patient', jsonb_build_object('n', $1::int))",
                &[&n],
            )
            .await
            .unwrap();
    }
    let chained = client
        .query_one(
            "SELECT count(*) FROM audit_log WHERE chain_seq IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(chained, 5);
    let app = spawn_app_on(db_name, db_url, |_| {}).await;
    app.create_patient(&patient_body(1)).await;
    all_sealed(&app).await;
    let first: Vec<i64> = app
        .column(
            "SELECT a.chain_seq FROM audit_leaves l JOIN audit_log a ON a.id = l.audit_id
              ORDER BY l.leaf_index LIMIT 5",
            &[],
        )
        .await;
    assert_eq!(
        first,
        [1, 2, 3, 4, 5],
        "chained rows are sealed first, in chain order"
    );
    let report = verify_with(&app, true).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["leavesChecked"], 6);
    tamper(
        &app,
        "UPDATE audit_log SET details = '{\"n\": 99}' WHERE chain_seq = 3",
    )
    .await;
    let report = verify_with(&app, true).await;
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["problem"]["leafIndex"], 2, "{report}");
    app.shutdown().await;
}
