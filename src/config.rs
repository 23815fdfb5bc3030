//! Typed settings: the defaults in `config.toml` (compiled in), an optional file over them,
//! then `MEDFLOW__SECTION__KEY` environment variables; validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use medflow_actors::bus::KafkaSettings;
use medflow_actors::cdc::reader::CdcSettings;
use medflow_actors::entity_host::EntityHostSettings;
use medflow_actors::store::{HeadSigner, SealSettings, StoreSettings};
use medflow_http::auth::{AuthSettings, JwksSource};
use medflow_supervisors::{IntegrationSettings, RestartPolicy, SealerSettings, TreeSettings};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The defaults, the same text as `config.toml` at the repository root.
pub const DEFAULTS: &str = include_str!("../config.toml");
pub const ENV_PREFIX: &str = "MEDFLOW__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub actors: ActorSettings,
    pub supervision: SupervisionSettings,
    pub auth: AuthConfig,
    pub kafka: KafkaConfig,
    pub cdc: CdcConfig,
    pub audit: AuditConfig,
    pub graphql: GraphqlConfig,
    pub consumers: ConsumersConfig,
    pub search: SearchConfig,
    pub registry: RegistryConfig,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersConfig {
    pub retry_schedule_ms: Vec<u64>,
    pub max_batch: usize,
    pub batch_wait_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub dead_letter_poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub enabled: bool,
    pub opensearch_url: SecretString,
    pub opensearch_index_prefix: String,
    pub opensearch_timeout_ms: u64,
    pub data_dir: PathBuf,
    pub max_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub url: String,
    pub timeout_ms: u64,
    pub client_identity_file: PathBuf,
    pub ca_file: PathBuf,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlConfig {
    pub enabled: bool,
    pub introspection: bool,
    pub graphiql: bool,
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_page_size: i64,
    pub timeout_ms: u64,
    pub subscriptions: bool,
    pub max_subscriptions_per_connection: usize,
    pub subscriber_buffer: usize,
    pub keepalive_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub linger_ms: u64,
    pub message_timeout_ms: u64,
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    pub enabled: bool,
    pub slot: String,
    pub publication: String,
    pub server_name: String,
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub status_interval_ms: u64,
    pub heartbeat_ms: u64,
    pub provide_transaction_metadata: bool,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub slot: String,
    pub seal_interval_ms: u64,
    pub batch_changes: i32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub signing_key: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub body_limit_bytes: u64,
    pub request_timeout_ms: u64,
    pub drain_delay_ms: u64,
    pub shutdown_grace_ms: u64,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub rate_limit_sync_ms: u64,
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub leeway_ms: u64,
    /// Empty disables HS256 (development tokens).
    pub dev_hs256_secret: SecretString,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    pub jwks_refresh_ms: u64,
    pub roles_claim: String,
}

impl AuthConfig {
    /// The settings the authenticator takes.
    pub fn to_settings(&self) -> AuthSettings {
        let secret = self.dev_hs256_secret.expose_secret();
        AuthSettings {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: ms(self.leeway_ms),
            dev_secret: (!secret.is_empty()).then(|| self.dev_hs256_secret.clone()),
            jwks: match (&self.jwks_file, &self.jwks_url) {
                (Some(path), _) => Some(JwksSource::File(path.clone())),
                (None, Some(url)) => Some(JwksSource::Url(url.clone())),
                (None, None) => None,
            },
            jwks_refresh: ms(self.jwks_refresh_ms),
            roles_claim: self.roles_claim.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    pub idle_timeout_ms: u64,
    pub sweep_interval_ms: u64,
    pub idle_states: usize,
    pub call_timeout_ms: u64,
    pub entity_max_restarts: u32,
    pub entity_restart_window_ms: u64,
    pub entity_backoff_initial_ms: u64,
    pub entity_backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    pub max_restarts: u32,
    pub window_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub stop_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads the defaults, then `file` if given, then the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Loads the defaults and `file` only, ignoring the environment (tests).
    pub fn load_without_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::base(file))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        Self::from_figment(Self::base(file).merge(env))
    }

    /// The longest a graceful shutdown can take: the drain delay, then in-flight requests'
    /// grace, then the actors' stop. The orchestrator's termination grace period must exceed it
    /// (`k8s/base` is checked against it by a test).
    pub fn longest_shutdown(&self) -> Duration {
        ms(self.http.drain_delay_ms)
            + ms(self.http.shutdown_grace_ms)
            + ms(self.supervision.stop_timeout_ms)
    }

    fn base(file: Option<&Path>) -> Figment {
        let figment = Figment::from(Toml::string(DEFAULTS));
        match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment,
        }
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate_bus(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must name at least one host:port");
        }
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return invalid("kafka.replication_factor", "must be at least 1");
        }
        if !(1..=5).contains(&self.kafka.max_in_flight) {
            return invalid(
                "kafka.max_in_flight",
                "must be from 1 to 5 (idempotent ordering)",
            );
        }
        if self.kafka.message_timeout_ms < 1000 {
            return invalid("kafka.message_timeout_ms", "must be at least 1000");
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !name_ok(&self.cdc.slot) {
            return invalid(
                "cdc.slot",
                "must be 1–63 characters of a-z, 0-9 and _ (a replication slot name)",
            );
        }
        if !name_ok(&self.audit.slot) || self.audit.slot == self.cdc.slot {
            return invalid(
                "audit.slot",
                "must be 1–63 characters of a-z, 0-9 and _ (a replication slot name), not cdc.slot",
            );
        }
        if !(100..=1_000_000).contains(&self.audit.batch_changes) {
            return invalid("audit.batch_changes", "must be from 100 to 1000000");
        }
        if self.audit.seal_interval_ms == 0
            || self.audit.backoff_initial_ms == 0
            || self.audit.backoff_max_ms < self.audit.backoff_initial_ms
        {
            return invalid(
                "audit.seal_interval_ms",
                "audit.seal_interval_ms and audit.backoff_initial_ms must be greater than 0, and audit.backoff_max_ms at least audit.backoff_initial_ms",
            );
        }
        let seed = self.audit.signing_key.expose_secret();
        if !seed.trim().is_empty() && HeadSigner::from_base64_seed(seed).is_err() {
            return invalid(
                "audit.signing_key",
                "must be the base64 of a 32-byte Ed25519 seed",
            );
        }
        if !name_ok(&self.cdc.publication) {
            return invalid(
                "cdc.publication",
                "must be 1–63 characters of a-z, 0-9 and _",
            );
        }
        if self.cdc.server_name.trim().is_empty() {
            return invalid("cdc.server_name", "must not be empty");
        }
        if !(1..=100_000).contains(&self.cdc.batch_max) {
            return invalid("cdc.batch_max", "must be from 1 to 100000");
        }
        if self.cdc.batch_wait_ms == 0
            || self.cdc.status_interval_ms == 0
            || self.cdc.heartbeat_ms == 0
        {
            return invalid(
                "cdc.batch_wait_ms",
                "cdc.batch_wait_ms, cdc.status_interval_ms and cdc.heartbeat_ms must be greater than 0",
            );
        }
        if self.cdc.backoff_initial_ms == 0 || self.cdc.backoff_max_ms < self.cdc.backoff_initial_ms
        {
            return invalid(
                "cdc.backoff_max_ms",
                "backoffs must be > 0 and backoff_max_ms ≥ backoff_initial_ms",
            );
        }
        Ok(())
    }

    fn validate_consumers(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let schedule = &self.consumers.retry_schedule_ms;
        if schedule.len() > 10 || schedule.contains(&0) {
            return invalid(
                "consumers.retry_schedule_ms",
                "must list at most 10 delays, each greater than 0",
            );
        }
        if !(1..=10_000).contains(&self.consumers.max_batch) {
            return invalid("consumers.max_batch", "must be from 1 to 10000");
        }
        if self.consumers.batch_wait_ms == 0 {
            return invalid("consumers.batch_wait_ms", "must be greater than 0");
        }
        if self.consumers.dead_letter_poll_ms < 100 {
            return invalid("consumers.dead_letter_poll_ms", "must be at least 100");
        }
        if self.consumers.backoff_initial_ms == 0
            || self.consumers.backoff_max_ms < self.consumers.backoff_initial_ms
        {
            return invalid(
                "consumers.backoff_max_ms",
                "backoffs must be > 0 and backoff_max_ms ≥ backoff_initial_ms",
            );
        }
        let search_url = self.search.opensearch_url.expose_secret();
        if !search_url.is_empty()
            && !url::Url::parse(search_url)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
        {
            return invalid("search.opensearch_url", "must be an http(s) URL or empty");
        }
        if self.search.opensearch_index_prefix.is_empty()
            || !self
                .search
                .opensearch_index_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return invalid(
                "search.opensearch_index_prefix",
                "must be lower-case letters, digits, - and _",
            );
        }
        if self.search.opensearch_timeout_ms == 0 {
            return invalid("search.opensearch_timeout_ms", "must be greater than 0");
        }
        if !(1..=1000).contains(&self.search.max_limit) {
            return invalid("search.max_limit", "must be from 1 to 1000");
        }
        if !self.registry.url.is_empty()
            && !url::Url::parse(&self.registry.url)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
        {
            return invalid("registry.url", "must be an http(s) URL or empty");
        }
        if self.registry.timeout_ms == 0 {
            return invalid("registry.timeout_ms", "must be greater than 0");
        }
        if !(1..=1000).contains(&self.registry.max_batch) {
            return invalid("registry.max_batch", "must be from 1 to 1000");
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if auth.issuer.trim().is_empty() {
            return invalid("auth.issuer", "must not be empty");
        }
        if auth.audience.trim().is_empty() {
            return invalid("auth.audience", "must not be empty");
        }
        if auth.roles_claim.trim().is_empty() {
            return invalid("auth.roles_claim", "must not be empty");
        }
        if auth.leeway_ms > 300_000 {
            return invalid("auth.leeway_ms", "must be at most 300000 (5 minutes)");
        }
        if auth.jwks_refresh_ms < 1_000 {
            return invalid("auth.jwks_refresh_ms", "must be at least 1000");
        }
        let secret = auth.dev_hs256_secret.expose_secret();
        if !secret.is_empty() && secret.len() < 32 {
            return invalid(
                "auth.dev_hs256_secret",
                "must be empty (disabled) or at least 32 bytes",
            );
        }
        if auth.jwks_file.is_some() && auth.jwks_url.is_some() {
            return invalid(
                "auth.jwks_url",
                "set auth.jwks_file or auth.jwks_url, not both",
            );
        }
        if let Some(url) = &auth.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid("auth.jwks_url", "must be an http(s) URL");
        }
        if secret.is_empty() && auth.jwks_file.is_none() && auth.jwks_url.is_none() {
            return invalid(
                "auth.jwks_url",
                "no verification key: set auth.jwks_url or auth.jwks_file (or auth.dev_hs256_secret in development)",
            );
        }
        Ok(())
    }

    /// Checks the relations between values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        }
        if !(1..=64).contains(&self.graphql.max_depth) {
            return invalid("graphql.max_depth", "must be from 1 to 64");
        }
        if !(1..=1_000_000).contains(&self.graphql.max_complexity) {
            return invalid("graphql.max_complexity", "must be from 1 to 1000000");
        }
        if !(1..=1_000).contains(&self.graphql.max_page_size) {
            return invalid("graphql.max_page_size", "must be from 1 to 1000");
        }
        if self.graphql.timeout_ms == 0 || self.graphql.keepalive_ms == 0 {
            return invalid(
                "graphql.timeout_ms",
                "graphql.timeout_ms and graphql.keepalive_ms must be greater than 0",
            );
        }
        if !(1..=10_000).contains(&self.graphql.max_subscriptions_per_connection) {
            return invalid(
                "graphql.max_subscriptions_per_connection",
                "must be from 1 to 10000",
            );
        }
        if !(1..=100_000).contains(&self.graphql.subscriber_buffer) {
            return invalid("graphql.subscriber_buffer", "must be from 1 to 100000");
        }
        let positive: [(&'static str, u64); 12] = [
            ("http.body_limit_bytes", self.http.body_limit_bytes),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            (
                "database.connect_timeout_ms",
                self.database.connect_timeout_ms,
            ),
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
            (
                "database.statement_timeout_ms",
                self.database.statement_timeout_ms,
            ),
            ("actors.idle_timeout_ms", self.actors.idle_timeout_ms),
            ("actors.sweep_interval_ms", self.actors.sweep_interval_ms),
            ("actors.call_timeout_ms", self.actors.call_timeout_ms),
            (
                "actors.entity_restart_window_ms",
                self.actors.entity_restart_window_ms,
            ),
            (
                "actors.entity_backoff_initial_ms",
                self.actors.entity_backoff_initial_ms,
            ),
            ("supervision.window_ms", self.supervision.window_ms),
            (
                "supervision.backoff_initial_ms",
                self.supervision.backoff_initial_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.http.drain_delay_ms > 120_000 {
            return invalid("http.drain_delay_ms", "must be at most 120000");
        }
        if self.supervision.stop_timeout_ms == 0 {
            return invalid("supervision.stop_timeout_ms", "must be greater than 0");
        }
        if self.http.rate_limit_per_second == 0 {
            return invalid("http.rate_limit_per_second", "must be greater than 0");
        }
        if !(10..=10_000).contains(&self.http.rate_limit_sync_ms) {
            return invalid("http.rate_limit_sync_ms", "must be from 10 to 10000");
        }
        if self.http.rate_limit_burst < self.http.rate_limit_per_second {
            return invalid(
                "http.rate_limit_burst",
                "must be at least http.rate_limit_per_second",
            );
        }
        for origin in &self.http.cors_allowed_origins {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = host.is_some_and(|host| {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
            });
            if !ok {
                return invalid(
                    "http.cors_allowed_origins",
                    format!("{origin:?} is not an origin such as https://clinic.example"),
                );
            }
        }
        self.validate_auth()?;
        self.validate_bus()?;
        self.validate_consumers()?;
        if !(1..=1000).contains(&self.database.pool_size) {
            return invalid("database.pool_size", "must be from 1 to 1000");
        }
        if self.http.body_limit_bytes > 64 * 1024 * 1024 {
            return invalid("http.body_limit_bytes", "must be at most 64 MiB");
        }
        if self.actors.idle_timeout_ms
            <= 2 * self
                .actors
                .call_timeout_ms
                .min(self.http.request_timeout_ms)
        {
            // An actor handed to a caller must not be passivated before the caller is done.
            return invalid(
                "actors.idle_timeout_ms",
                "must exceed twice the call timeout",
            );
        }
        if self.actors.idle_states > 10_000_000 {
            return invalid("actors.idle_states", "must be at most 10000000");
        }
        if self.actors.sweep_interval_ms > self.actors.idle_timeout_ms {
            return invalid(
                "actors.sweep_interval_ms",
                "must not exceed actors.idle_timeout_ms",
            );
        }
        if self.actors.entity_backoff_max_ms < self.actors.entity_backoff_initial_ms {
            return invalid(
                "actors.entity_backoff_max_ms",
                "must be at least actors.entity_backoff_initial_ms",
            );
        }
        if self.supervision.backoff_max_ms < self.supervision.backoff_initial_ms {
            return invalid(
                "supervision.backoff_max_ms",
                "must be at least supervision.backoff_initial_ms",
            );
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", format!("is not a tracing filter: {error}"));
        }
        Ok(())
    }

    pub fn store(&self) -> StoreSettings {
        StoreSettings {
            url: self.database.url.clone(),
            pool_size: self.database.pool_size,
            connect_timeout: ms(self.database.connect_timeout_ms),
            acquire_timeout: ms(self.database.acquire_timeout_ms),
            statement_timeout: ms(self.database.statement_timeout_ms),
            application_name: "medflow",
        }
    }

    /// The audit sealer's own two connections: it never waits for a request's connection,
    /// requests never wait for it, and a round decoding a large WAL backlog (a bulk load of
    /// other tables) gets up to ten minutes.
    pub fn sealer_store(&self) -> StoreSettings {
        StoreSettings {
            pool_size: 2,
            statement_timeout: ms(self.database.statement_timeout_ms).max(Duration::from_secs(600)),
            application_name: "medflow-audit-sealer",
            ..self.store()
        }
    }

    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka.brokers.clone(),
            topic_prefix: self.kafka.topic_prefix.clone(),
            partitions: self.kafka.partitions,
            replication_factor: self.kafka.replication_factor,
            linger: ms(self.kafka.linger_ms),
            message_timeout: ms(self.kafka.message_timeout_ms),
            max_in_flight: self.kafka.max_in_flight,
        }
    }

    /// The CDC pipeline's configuration, `None` when `cdc.enabled` is false.
    pub fn integration(&self) -> Option<IntegrationSettings> {
        self.cdc.enabled.then(|| IntegrationSettings {
            cdc: CdcSettings {
                database_url: self.database.url.clone(),
                slot: self.cdc.slot.clone(),
                publication: self.cdc.publication.clone(),
                server_name: self.cdc.server_name.clone(),
                batch_max: self.cdc.batch_max,
                batch_wait: ms(self.cdc.batch_wait_ms),
                status_interval: ms(self.cdc.status_interval_ms),
                heartbeat: ms(self.cdc.heartbeat_ms),
                transaction_metadata: self.cdc.provide_transaction_metadata,
            },
            kafka: self.kafka(),
            backoff_initial: ms(self.cdc.backoff_initial_ms),
            backoff_max: ms(self.cdc.backoff_max_ms),
        })
    }

    /// The GraphQL endpoint's switches and limits.
    pub fn graphql(&self) -> medflow_http::graphql::GraphqlSettings {
        medflow_http::graphql::GraphqlSettings {
            enabled: self.graphql.enabled,
            introspection: self.graphql.introspection,
            graphiql: self.graphql.graphiql,
            max_depth: self.graphql.max_depth,
            max_complexity: self.graphql.max_complexity,
            max_page_size: self.graphql.max_page_size,
            timeout: ms(self.graphql.timeout_ms),
            max_subscriptions_per_connection: self.graphql.max_subscriptions_per_connection,
            keepalive: ms(self.graphql.keepalive_ms),
        }
    }

    /// A consumer group's specification from `[consumers]`.
    pub fn consumer_spec(
        &self,
        name: &str,
        topics: Vec<String>,
        max_batch: usize,
    ) -> medflow_actors::consume::ConsumerSpec {
        medflow_actors::consume::ConsumerSpec {
            name: name.to_owned(),
            topics,
            retry: medflow_actors::consume::RetrySchedule(
                self.consumers
                    .retry_schedule_ms
                    .iter()
                    .map(|delay| ms(*delay))
                    .collect(),
            ),
            max_batch: max_batch.min(self.consumers.max_batch),
            batch_wait: ms(self.consumers.batch_wait_ms),
            needs_every_partition: false,
            dead_letter_poll: ms(self.consumers.dead_letter_poll_ms),
        }
    }

    /// The search indexer's group: it reads the patients' and documents' change topics.
    pub fn search_indexer_spec(&self) -> medflow_actors::consume::ConsumerSpec {
        self.consumer_spec(
            medflow_actors::search::indexer::GROUP,
            vec![
                self.change_topic("patients"),
                self.change_topic("documents"),
            ],
            self.consumers.max_batch,
        )
    }

    /// The registry submitter's group: it reads `DocumentSigned`.
    pub fn registry_submitter_spec(&self) -> medflow_actors::consume::ConsumerSpec {
        self.consumer_spec(
            medflow_actors::registry_submitter::GROUP,
            vec![self.kafka().topic("DocumentSigned")],
            self.registry.max_batch,
        )
    }

    /// The consumer groups this configuration runs: the search indexer when
    /// `search.enabled`, the registry submitter when `registry.url` is set.
    pub fn consumer_specs(&self) -> Vec<medflow_actors::consume::ConsumerSpec> {
        let mut specs = Vec::new();
        if self.search.enabled {
            specs.push(self.search_indexer_spec());
        }
        if !self.registry.url.is_empty() {
            specs.push(self.registry_submitter_spec());
        }
        specs
    }

    /// The CDC topic of `table` (`<prefix><server_name>.public.<table>`).
    pub fn change_topic(&self, table: &str) -> String {
        medflow_actors::cdc::reader::change_topic(&self.kafka(), &self.cdc.server_name, table)
    }

    /// The audit tree's head signer, `None` when `audit.signing_key` is empty.
    pub fn audit_signer(&self) -> Option<Arc<HeadSigner>> {
        let seed = self.audit.signing_key.expose_secret();
        (!seed.trim().is_empty())
            .then(|| HeadSigner::from_base64_seed(seed).ok().map(Arc::new))
            .flatten()
    }

    /// How the audit sealer runs.
    pub fn sealer(&self) -> SealerSettings {
        SealerSettings {
            store: None,
            seal: SealSettings {
                slot: self.audit.slot.clone(),
                batch_changes: self.audit.batch_changes,
                signer: self.audit_signer(),
            },
            interval: ms(self.audit.seal_interval_ms),
            backoff_initial: ms(self.audit.backoff_initial_ms),
            backoff_max: ms(self.audit.backoff_max_ms),
        }
    }

    pub fn tree(&self) -> TreeSettings {
        TreeSettings {
            sealer: self.sealer(),
            entity_host: EntityHostSettings {
                idle_timeout: ms(self.actors.idle_timeout_ms),
                sweep_interval: ms(self.actors.sweep_interval_ms),
                idle_states: self.actors.idle_states,
                max_restarts: self.actors.entity_max_restarts,
                restart_window: ms(self.actors.entity_restart_window_ms),
                backoff_initial: ms(self.actors.entity_backoff_initial_ms),
                backoff_max: ms(self.actors.entity_backoff_max_ms),
            },
            restart: RestartPolicy {
                max_restarts: self.supervision.max_restarts,
                window: ms(self.supervision.window_ms),
                backoff_initial: ms(self.supervision.backoff_initial_ms),
                backoff_max: ms(self.supervision.backoff_max_ms),
            },
            call_timeout: ms(self.actors.call_timeout_ms),
        }
    }
}

pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's `Jail` closure returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    fn outcome(vars: &[(&str, &str)]) -> String {
        let mut outcome = String::new();
        figment::Jail::expect_with(|jail| {
            for (key, value) in vars {
                jail.set_env(key, value);
            }
            outcome = match Settings::load(None) {
                Ok(_) => "OK".to_owned(),
                Err(error) => error.to_string().to_lowercase(),
            };
            Ok(())
        });
        outcome
    }

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::load_without_env(None).unwrap();
        assert_eq!(settings.http.listen.port(), 8080);
    }

    #[test]
    fn environment_overrides_defaults() {
        assert_eq!(outcome(&[("MEDFLOW__HTTP__LISTEN", "127.0.0.1:0")]), "OK");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let message = outcome(&[("MEDFLOW__HTTP__LISTN", "127.0.0.1:0")]);
        assert!(message.contains("listn"), "{message}");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let message = outcome(&[("MEDFLOW__DATABASE__POOL_SIZE", "lots")]);
        assert!(message.contains("pool_size"), "{message}");
        let message = outcome(&[("MEDFLOW__DATABASE__POOL_SIZE", "0")]);
        assert!(message.contains("database.pool_size"), "{message}");
        let message = outcome(&[("MEDFLOW__LOG__FORMAT", "xml")]);
        assert!(message.contains("format"), "{message}");
    }
}
