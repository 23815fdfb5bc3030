//! The end-to-end harness: every test gets the real application, started in-process on port
//! 0 against its own fresh database in the PostgreSQL that `scripts/test` started.

#[path = "collector.rs"]
pub mod collector;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use medflow::config::{LogFormat, LogSettings, Settings};
use medflow::startup::Application;
use medflow::telemetry;
use medflow_http::auth::{AuthSettings, DevToken, mint_dev_token};
use medflow_http::policy::Role;
use serde_json::{Value, json};
use tokio_postgres::NoTls;

/// The superuser URL of the test cluster (`scripts/test` exports it).
pub fn admin_url() -> String {
    std::env::var("MEDFLOW_TEST_DATABASE_URL")
        .expect("MEDFLOW_TEST_DATABASE_URL is not set: run the tests through scripts/test, which starts PostgreSQL and the broker")
}

pub struct TestApp {
    pub address: String,
    /// Sends the staff token of [`TestApp::staff_subject`] (roles admin, registrar, doctor).
    pub client: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    pub staff_subject: String,
    pub auth: AuthSettings,
    pub app: Option<Application>,
    pub db_name: String,
    pub db_url: String,
}

/// Counts the audit rows of writes (reads are audited too).
pub const WRITE_AUDIT_ROWS: &str =
    "SELECT count(*) FROM audit_log WHERE action NOT LIKE '%.read' AND action NOT LIKE '%.list'";

/// A DER SEQUENCE wrapping a NULL, base64: well-formed for the default verifier.
pub const TEST_SIGNATURE: &str = "MAIFAA==";

/// An RFC 3339 time `hours` from now, whole minutes.
pub fn hours_ahead(hours: i64) -> String {
    let time = chrono::Utc::now() + chrono::Duration::hours(hours);
    time.format("%Y-%m-%dT%H:%M:00Z").to_string()
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates an empty database and returns its name and URL.
pub async fn fresh_database() -> (String, String) {
    let admin = admin_url();
    let (client, connection) = tokio_postgres::connect(&admin, NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    let name = format!(
        "medflow_test_{}_{}",
        std::process::id(),
        DB_COUNTER.fetch_add(1, Ordering::Relaxed)
    ) + &uuid::Uuid::new_v4().simple().to_string()[..8];
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .expect("admin URL has a database path");
    (name.clone(), format!("{base}/{name}"))
}

fn db_name_of(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The audit tree's head signing key in tests (base64 of 32 bytes).
pub const TEST_AUDIT_SIGNING_KEY: &str = "bWVkZmxvdy10ZXN0LWF1ZGl0LXNpZ25pbmcta2V5ISE=";

/// Settings for a test application: defaults, port 0, the given database.
pub fn test_settings(db_url: &str) -> Settings {
    let mut settings = Settings::load_without_env(None).expect("default settings are valid");
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.database.url = db_url.to_owned().into();
    settings.database.pool_size = 8;
    // Tests fire requests far faster than a person; the rate-limit test sets its own.
    settings.http.rate_limit_per_second = 1_000_000;
    settings.http.rate_limit_burst = 1_000_000;
    // The CDC pipeline holds a replication slot per database: only the tests about it run it.
    settings.cdc.enabled = false;
    settings.cdc.slot = format!("slot_{}", db_name_of(db_url));
    // The audit sealer runs in every test (its slot is per database, like the CDC slot's);
    // rounds come every 50 ms so tests wait little for sealing; heads are signed.
    settings.audit.slot = format!("audit_{}", db_name_of(db_url));
    settings.audit.seal_interval_ms = 50;
    settings.audit.backoff_initial_ms = 100;
    settings.audit.backoff_max_ms = 1_000;
    settings.audit.signing_key = TEST_AUDIT_SIGNING_KEY.to_owned().into();
    settings.cdc.batch_wait_ms = 10;
    settings.cdc.status_interval_ms = 100;
    settings.cdc.heartbeat_ms = 500;
    settings.cdc.backoff_initial_ms = 100;
    settings.cdc.backoff_max_ms = 1_000;
    if let Ok(brokers) = std::env::var("MEDFLOW_TEST_KAFKA_BROKERS") {
        settings.kafka.brokers = brokers;
    }
    settings.kafka.topic_prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    settings.kafka.partitions = 3;
    settings.kafka.message_timeout_ms = 10_000;
    settings.http.shutdown_grace_ms = 2000;
    // Consumers (search indexer, registry submitter) run only in the tests about them; their
    // retries come after milliseconds, not minutes.
    settings.search.enabled = false;
    settings.search.data_dir =
        std::env::temp_dir().join(format!("medflow-search-{}", uuid::Uuid::new_v4().simple()));
    settings.consumers.retry_schedule_ms = vec![200, 400];
    settings.consumers.batch_wait_ms = 5;
    settings.consumers.backoff_initial_ms = 100;
    settings.consumers.backoff_max_ms = 1_000;
    settings.consumers.dead_letter_poll_ms = 200;
    settings.log = LogSettings {
        format: LogFormat::Pretty,
        level: std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()),
    };
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Settings whose entity actors passivate 400 ms after their last use (sweeping every 50 ms).
pub fn quick_passivation(settings: &mut Settings) {
    settings.actors.idle_timeout_ms = 400;
    settings.actors.sweep_interval_ms = 50;
    settings.actors.call_timeout_ms = 150;
}

/// Spawns the application with settings adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (db_name, db_url) = fresh_database().await;
    spawn_app_on(db_name, db_url, configure).await
}

/// Spawns the application on the database `db_url` (named `db_name`).
pub async fn spawn_app_on(
    db_name: String,
    db_url: String,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(&db_url);
    configure(&mut settings);
    settings.validate().expect("test settings are valid");
    // Logs when TEST_LOG asks for them; spans of traces a request marked sampled go to the
    // process's stand-in collector (tests/api/tracing.rs reads them).
    telemetry::init(
        &settings.log,
        telemetry::TraceExport {
            endpoint: Some(collector::collector().url.clone()),
            json: true,
            parent_decides: true,
        },
    );
    let auth = settings.auth.to_settings();
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let address = format!("http://{}", app.address());
    let staff_subject = uuid::Uuid::new_v4().to_string();
    let staff_token = mint(
        &auth,
        &staff_subject,
        &[Role::Admin, Role::Registrar, Role::Doctor],
        None,
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {staff_token}").parse().unwrap(),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap();
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        anonymous,
        staff_subject,
        auth,
        app: Some(app),
        db_name,
        db_url,
    }
}

/// Mints a development token for `subject` with `roles`.
pub fn mint(
    auth: &AuthSettings,
    subject: &str,
    roles: &[Role],
    patient_id: Option<uuid::Uuid>,
) -> String {
    mint_dev_token(
        auth,
        &DevToken {
            subject: subject.to_owned(),
            roles: roles.to_vec(),
            patient_id,
            ttl: Duration::from_secs(600),
        },
    )
    .expect("mint a development token")
}

impl TestApp {
    /// A token for a fresh subject with `roles`.
    pub fn token(&self, roles: &[Role], patient_id: Option<uuid::Uuid>) -> String {
        mint(
            &self.auth,
            &uuid::Uuid::new_v4().to_string(),
            roles,
            patient_id,
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn app(&self) -> &Application {
        self.app.as_ref().expect("the application is running")
    }

    /// A direct connection to this test's database, for assertions.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.db_url, NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db().await.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Waits at most `deadline` until every audit row present is sealed into the tree.
    pub async fn all_audit_sealed(&self, deadline: Duration) {
        eventually(deadline, "every audit row sealed", || async {
            let unsealed = self
                .count(
                    "SELECT count(*) FROM audit_log a
                      WHERE NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)",
                )
                .await;
            (unsealed == 0).then_some(())
        })
        .await;
    }

    /// The first column of every row `sql` returns.
    pub async fn column<T: tokio_postgres::types::FromSqlOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<T> {
        let rows = self.db().await.query(sql, params).await.expect(sql);
        rows.iter().map(|row| row.get(0)).collect()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a patient from `body` and returns the response body; panics unless 201.
    pub async fn create_patient(&self, body: &Value) -> Value {
        let response = self.post_json("/api/v1/patients", body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "create failed: {body}");
        body
    }

    /// POSTs `body` to `path` and returns the created object; panics unless 201.
    pub async fn create(&self, path: &str, body: &Value) -> Value {
        let response = self.post_json(path, body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "create at {path} failed: {body}");
        body
    }

    /// Creates a doctor and returns their id.
    pub async fn create_doctor(&self) -> String {
        let doctor = self
            .create(
                "/api/v1/doctors",
                &json!({"firstName": "Пётр", "lastName": "Сидоров", "specialty": "терапевт"}),
            )
            .await;
        doctor["id"].as_str().unwrap().to_owned()
    }

    /// Books `minutes` for `patient` with `doctor` starting `hours_ahead` hours from now.
    pub async fn book(
        &self,
        patient: &str,
        doctor: &str,
        starts_at: &str,
        minutes: i64,
    ) -> reqwest::Response {
        self.post_json(
            "/api/v1/appointments",
            &json!({
                "patientId": patient, "doctorId": doctor, "startsAt": starts_at,
                "durationMinutes": minutes, "payment": "oms", "visit": "primary",
            }),
        )
        .await
    }

    /// Creates a draft document for `patient` by `author` and returns it.
    pub async fn create_document(&self, patient: &str, author: &str) -> Value {
        self.create(
            "/api/v1/documents",
            &json!({
                "patientId": patient, "authorId": author, "type": "consultation",
                "title": "Осмотр терапевта", "body": "Жалоб нет. АД 120/80.",
            }),
        )
        .await
    }

    /// A token for doctor `doctor` (subject = the doctor's id).
    pub fn doctor_token(&self, doctor: &str) -> String {
        mint(&self.auth, doctor, &[Role::Doctor], None)
    }

    /// Signs `document` as `doctor` with a well-formed test signature.
    pub async fn sign(&self, document: &str, doctor: &str) -> reqwest::Response {
        self.anonymous
            .post(self.url(&format!("/api/v1/documents/{document}/sign")))
            .bearer_auth(self.doctor_token(doctor))
            .json(&json!({
                "signerId": doctor,
                "signature": TEST_SIGNATURE,
                "certificateThumbprint": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
            }))
            .send()
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("graceful shutdown");
        }
    }

    /// The value of the Prometheus sample `name` (with its labels, if any, as rendered) on
    /// `/metrics`; 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// What SIGTERM does: drain (`http.drain_delay_ms`), then shut down.
    pub async fn terminate(mut self) {
        if let Some(app) = self.app.take() {
            app.terminate().await.expect("graceful termination");
        }
    }
}

/// A valid patient; `n` varies the identifying fields so many can coexist.
pub fn patient_body(n: u32) -> Value {
    json!({
        "firstName": "Анна",
        "middleName": "Сергеевна",
        "lastName": format!("Иванова{}", letters(n)),
        "birthDate": "1985-03-14",
        "email": format!("anna{n}@example.org"),
        "snils": valid_snils(n),
        "omsPolicy": format!("{:016}", 1_000_000_000_000_000u64 + u64::from(n)),
    })
}

fn letters(mut n: u32) -> String {
    let mut out = String::new();
    loop {
        out.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return out;
        }
    }
}

/// Returns a SNILS with a valid checksum, distinct for each `n` < 10⁸.
pub fn valid_snils(n: u32) -> String {
    let body = format!("{:09}", 100_000_000 + n % 800_000_000);
    let sum: u32 = body
        .bytes()
        .zip((1..=9).rev())
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    let check = match sum {
        0..=99 => sum,
        100 | 101 => 0,
        _ => match sum % 101 {
            100 => 0,
            rest => rest,
        },
    };
    format!("{body}{check:02}")
}

/// Polls `probe` until it yields `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Asserts a problem+json answer with `status`, and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    assert_eq!(body["status"], status, "body: {body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:medflow:problem:")),
        "body: {body}"
    );
    assert!(body["title"].is_string(), "body: {body}");
    body
}

/// Returns the field names a problem lists.
pub fn problem_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a transactional logical message and returns its LSN: a commit after every write
/// made so far, which the slot passes only once those were acknowledged.
pub async fn emit_mark(db: &tokio_postgres::Client) -> String {
    db.query_one(
        "SELECT pg_logical_emit_message(true, 'medflow.test', '')::text",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Runs an external test tool (node, schemathesis) to completion off the runtime, bounded by
/// `deadline`, and returns its stdout; fails the test naming `what` and both outputs when it
/// does not succeed.
pub async fn run_tool(
    mut command: std::process::Command,
    deadline: Duration,
    what: &str,
) -> String {
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = tokio::task::spawn_blocking(move || command.output());
    let output = tokio::time::timeout(deadline, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {deadline:?}"))
        .expect("the blocking task ran")
        .unwrap_or_else(|error| {
            panic!("{what} could not start: {error} (scripts/test installs it)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}
