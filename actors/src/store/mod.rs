//! The PostgreSQL store: a connection pool, versioned migrations, and one function per
//! statement. Every write is one transaction that changes the row (checking its version),
//! appends an audit row and, for entities with business events, an outbox row.
//!
//! SQL lives in `sql/*.sql` beside this file and is prepared once per connection.

mod appointments;
mod audit;
mod audit_seal;
mod batch;
mod doctors;
mod documents;
mod patients;
mod rate_usage;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

pub use appointments::AppointmentFilter;
pub use audit::{AuditAppend, AuditContent, AuditFilter, AuditRecord};
pub use audit_seal::{
    AUDIT_PUBLICATION, AUDIT_SEAL_LOCK, AuditProblem, AuditReport, HeadSigner, InclusionProof,
    ProofError, SealOutcome, SealSettings, Tampering, TreeHead, head_message,
};
pub use batch::DocumentParent;
pub use doctors::DoctorFilter;
pub use documents::{DocumentFilter, DocumentSummary, DocumentVersion};
pub use patients::PatientFilter;
pub use patients::PatientOrder;
pub use rate_usage::{RateClient, RateUsage};

use crate::context::RequestContext;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key that serialises migrations across pods starting together.
const MIGRATION_LOCK_KEY: i64 = 0x6d65_6466_6c6f_7701;

/// How to reach PostgreSQL and how long to wait for it.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: SecretString,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: &'static str,
}

/// Errors of the store, split by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("row not found")]
    NotFound,
    /// The row's version was not the expected one: another writer got there first.
    #[error("version conflict")]
    VersionConflict,
    /// A unique constraint refused the value of `field` (its wire name).
    #[error("duplicate value of {field}")]
    Duplicate { field: &'static str },
    /// An exclusion constraint refused an overlapping booking.
    #[error("overlapping appointment")]
    Overlap,
    /// A referenced row is missing or unusable (foreign keys, archived patients).
    #[error("{field}: {message}")]
    Unprocessable {
        field: &'static str,
        message: &'static str,
    },
    /// A text value holds a character PostgreSQL cannot store (U+0000). Every boundary
    /// refuses such input naming its field; this catches what one of them missed, as a 400.
    #[error("a value holds a character that cannot be stored")]
    Unstorable,
    /// PostgreSQL could not be reached or the connection broke; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(db_error) = error.as_db_error() else {
            return Self::Unavailable(error.to_string());
        };
        let code = db_error.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            let field = match db_error.constraint() {
                Some("patients_snils_key") => "snils",
                Some("patients_oms_policy_key") => "omsPolicy",
                _ => "id",
            };
            return Self::Duplicate { field };
        }
        if *code == SqlState::EXCLUSION_VIOLATION {
            return Self::Overlap;
        }
        if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
        {
            return Self::Unstorable;
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            let field = match db_error.constraint() {
                Some(name) if name.contains("patient_id") => "patientId",
                Some(name) if name.contains("doctor_id") => "doctorId",
                Some(name) if name.contains("author_id") => "authorId",
                Some(name) if name.contains("appointment_id") => "appointmentId",
                Some(name) if name.contains("signed_by") => "signerId",
                _ => "id",
            };
            return Self::Unprocessable {
                field,
                message: "does not exist",
            };
        }
        // Connection trouble (08), resources (53), operator intervention such as shutdown or
        // statement timeout (57), system errors (58) and a missing database are outages; so
        // is a write reaching a read-only standby (25006) while a switchover moves the
        // primary: the client retries once the service points at the new one.
        let class = &code.code()[..2];
        if matches!(class, "08" | "53" | "57" | "58")
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            return Self::Unavailable(db_error.message().to_owned());
        }
        Self::Unexpected(anyhow::Error::new(error))
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        // Whatever stops a connection from being handed out is an outage, whether the pool
        // timed out or PostgreSQL refused a new connection.
        Self::Unavailable(error.to_string())
    }
}

/// The SQL of one listing: the page query takes the filter parameters then offset and
/// limit; the count query takes the filter parameters only.
struct Listing {
    page_sql: std::borrow::Cow<'static, str>,
    count_sql: &'static str,
}

/// The direction of a list's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Ascending,
    Descending,
}

impl Direction {
    fn sql(self) -> &'static str {
        match self {
            Direction::Ascending => "ASC",
            Direction::Descending => "DESC",
        }
    }
}

/// `sql` with its `ORDER BY default` clause replaced by `ORDER BY` the listed expressions,
/// each in `direction` (the expressions come from code, never from a request).
fn reordered(
    sql: &'static str,
    default: &str,
    expressions: &[&str],
    direction: Direction,
) -> std::borrow::Cow<'static, str> {
    let clause = expressions
        .iter()
        .map(|expression| format!("{expression} {}", direction.sql()))
        .collect::<Vec<_>>()
        .join(", ");
    let replaced = sql.replacen(
        &format!("ORDER BY {default}"),
        &format!("ORDER BY {clause}"),
        1,
    );
    debug_assert_ne!(replaced, sql, "the default order clause is in the SQL");
    std::borrow::Cow::Owned(replaced)
}

impl PgStore {
    /// Runs a listing: one page of rows mapped by `map`, and the total matching `filters`.
    async fn query_page<T>(
        &self,
        listing: Listing,
        filters: &[&(dyn ToSql + Sync)],
        offset: i64,
        limit: i64,
        map: impl Fn(&tokio_postgres::Row) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let client = self.client().await?;
        let page = client.prepare_cached(&listing.page_sql).await?;
        let count = client.prepare_cached(listing.count_sql).await?;
        let mut page_params = filters.to_vec();
        page_params.push(&offset);
        page_params.push(&limit);
        let rows = client.query(&page, &page_params).await?;
        let total: i64 = client.query_one(&count, filters).await?.get(0);
        Ok(Page {
            items: rows.iter().map(map).collect::<StoreResult<_>>()?,
            total,
        })
    }
}

/// A replication slot as PostgreSQL reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotLag {
    pub active: bool,
    pub confirmed_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Connections handed out so far: a round-trip count tests use to guard against N+1.
    checkouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// Builds the pool. Connections are opened lazily; call [`PgStore::ping`] to check.
    pub fn connect(settings: &StoreSettings) -> anyhow::Result<Self> {
        let mut config =
            tokio_postgres::Config::from_str(settings.url.expose_secret()).map_err(|error| {
                anyhow::anyhow!("database.url is not a valid PostgreSQL URL: {error}")
            })?;
        config.connect_timeout(settings.connect_timeout);
        config.application_name(settings.application_name);
        config.options(format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.acquire_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|error| anyhow::anyhow!("cannot build the database pool: {error}"))?;
        Ok(Self {
            pool,
            checkouts: Default::default(),
        })
    }

    /// A pooled connection for one store operation.
    async fn client(&self) -> Result<deadpool_postgres::Object, deadpool_postgres::PoolError> {
        self.checkouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pool.get().await
    }

    /// A pooled connection for housekeeping that runs beside the requests on a timer (not
    /// counted in [`PgStore::operations`], which measures what requests cost).
    async fn housekeeping_client(
        &self,
    ) -> Result<deadpool_postgres::Object, deadpool_postgres::PoolError> {
        self.pool.get().await
    }

    /// How many store operations took a connection since start (each runs one to three
    /// statements): the measure of "a constant number of queries" in tests.
    pub fn operations(&self) -> u64 {
        self.checkouts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies pending migrations, holding an advisory lock so concurrent pods take turns.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrate_until(None).await
    }

    /// Applies pending migrations up to `version` (all with `None`): upgrade tests start a
    /// database at an earlier schema.
    pub async fn migrate_until(&self, version: Option<u32>) -> anyhow::Result<()> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to PostgreSQL: {error}"))?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let mut runner = embedded::migrations::runner();
        if let Some(version) = version {
            runner = runner.set_target(refinery::Target::Version(i32::try_from(version)?));
        }
        let report = runner.run_async(&mut **client).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        let report = report.map_err(|error| anyhow::anyhow!("migration failed: {error}"))?;
        for migration in report.applied_migrations() {
            tracing::info!(
                version = migration.version(),
                name = migration.name(),
                "applied migration"
            );
        }
        Ok(())
    }

    /// Returns `Ok` when a connection can be taken from the pool and answers a query.
    pub async fn ping(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The replication slot's view: active, confirmed LSN, and bytes of WAL behind.
    pub async fn slot_lag(&self, slot: &str) -> StoreResult<Option<SlotLag>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT active, confirmed_flush_lsn::text,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(row.map(|row| SlotLag {
            active: row.get(0),
            confirmed_lsn: row.get(1),
            lag_bytes: row.get(2),
        }))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Appends an audit row for an access that changed nothing (a read or a list).
    pub async fn audit_read(&self, ctx: &RequestContext, entry: AuditEntry<'_>) -> StoreResult<()> {
        let client = self.client().await?;
        insert_audit(&client, ctx, entry).await
    }
}

/// One audit row's subject: what was done to which object.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<Uuid>,
    pub details: Value,
}

async fn insert_audit(
    client: &impl deadpool_postgres::GenericClient,
    ctx: &RequestContext,
    entry: AuditEntry<'_>,
) -> StoreResult<()> {
    let statement = client
        .prepare_cached(include_str!("sql/audit_insert.sql"))
        .await?;
    let params: [&(dyn ToSql + Sync); 7] = [
        &ctx.actor_id,
        &entry.action,
        &entry.object_type,
        &entry.object_id,
        &ctx.client_addr,
        &ctx.request_id,
        &entry.details,
    ];
    client.execute(&statement, &params).await?;
    Ok(())
}

/// One outbox row: a business event about an aggregate.
#[derive(Debug, Clone)]
pub struct OutboxEvent<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: Uuid,
    pub patient_id: Option<Uuid>,
    pub event_type: &'a str,
    pub version: i64,
    pub payload: Value,
}

async fn insert_outbox(
    client: &impl deadpool_postgres::GenericClient,
    ctx: &RequestContext,
    event: OutboxEvent<'_>,
) -> StoreResult<()> {
    let statement = client
        .prepare_cached(include_str!("sql/outbox_insert.sql"))
        .await?;
    let event_id = Uuid::now_v7();
    let params: [&(dyn ToSql + Sync); 8] = [
        &event_id,
        &event.aggregate_type,
        &event.aggregate_id,
        &event.patient_id,
        &event.event_type,
        &event.version,
        &event.payload,
        &ctx.traceparent,
    ];
    client.execute(&statement, &params).await?;
    Ok(())
}

/// Checks, inside `tx`, that the patient exists and is not archived, and locks its row
/// against a concurrent archive until `tx` ends; `archived` says why an archived patient
/// is refused.
async fn ensure_active_patient(
    tx: &deadpool_postgres::Transaction<'_>,
    patient_id: Uuid,
    archived: &'static str,
) -> StoreResult<()> {
    let statement = tx
        .prepare_cached(include_str!("sql/patient_bookable.sql"))
        .await?;
    match tx.query_opt(&statement, &[&patient_id]).await? {
        None => Err(StoreError::Unprocessable {
            field: "patientId",
            message: "no such patient",
        }),
        Some(row)
            if row
                .get::<_, Option<chrono::DateTime<chrono::Utc>>>(0)
                .is_some() =>
        {
            Err(StoreError::Unprocessable {
                field: "patientId",
                message: archived,
            })
        }
        Some(_) => Ok(()),
    }
}

/// A committed change: its business event (outbox) and its audit row.
struct ChangeRecord<'a> {
    aggregate_type: &'a str,
    aggregate_id: Uuid,
    patient_id: Uuid,
    event_type: &'a str,
    audit_action: &'a str,
    version: i64,
    payload: Value,
}

/// Writes the outbox row and the audit row (no lock: the audit row is sealed after commit).
async fn record_change(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &RequestContext,
    change: ChangeRecord<'_>,
) -> StoreResult<()> {
    insert_outbox(
        tx,
        ctx,
        OutboxEvent {
            aggregate_type: change.aggregate_type,
            aggregate_id: change.aggregate_id,
            patient_id: Some(change.patient_id),
            event_type: change.event_type,
            version: change.version,
            payload: change.payload,
        },
    )
    .await?;
    insert_audit(
        tx,
        ctx,
        AuditEntry {
            action: change.audit_action,
            object_type: change.aggregate_type,
            object_id: Some(change.aggregate_id),
            details: serde_json::json!({ "version": change.version }),
        },
    )
    .await
}

/// Escapes `%`, `_` and `\` so a client's prefix matches literally in `LIKE`.
fn like_prefix(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for ch in prefix.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// A page of rows and the number of rows matching the filter.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}
