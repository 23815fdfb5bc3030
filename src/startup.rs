//! `Application`: builds the whole service from settings — store and migrations, the
//! supervision tree, the HTTP server on its listener — and stops it in order.
//!
//! `build` binds before it returns, so with `http.listen` on port 0 the caller learns the
//! real port from [`Application::port`] (tests run many applications side by side).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use medflow_actors::bus::hub::{HubMessage, SubscriptionHub};
use medflow_actors::cdc::reader::EVENT_TYPES;
use medflow_actors::consume::{ConsumerActor, ConsumerStats, Consumers, Handler};
use medflow_actors::domain::WellFormedSignature;
use medflow_actors::registry_submitter::{RegistryClientSettings, RegistrySubmitter, read_pem};
use medflow_actors::search::SearchIndex;
use medflow_actors::search::embedded::EmbeddedIndex;
use medflow_actors::search::indexer::SearchIndexer;
use medflow_actors::search::opensearch::{OpenSearchIndex, OpenSearchSettings};
use medflow_actors::{Patients, PgStore};
use medflow_http::access::{RateLimitSettings, RateLimits};
use medflow_http::admin::ConsumerAdmin;
use medflow_http::auth::Authenticator;
use medflow_http::health::CdcCheck;
use medflow_http::health::DatabaseCheck;
use medflow_http::policy::Policy;
use medflow_http::search::SearchService;
use medflow_http::{AppState, HttpLimits, ReadinessCheck};
use medflow_supervisors::Supervision;
use medflow_supervisors::consumers::ConsumerSupervisor;
use ractor::ActorRef;
use secrecy::ExposeSecret;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Settings, ms};
use crate::telemetry;

pub struct Application {
    address: SocketAddr,
    settings: Settings,
    store: PgStore,
    supervision: Supervision,
    shutting_down: Arc<AtomicBool>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
    /// Housekeeping tasks (key-set refresh, rate-limit sharing and memory), aborted on
    /// shutdown.
    background: Vec<JoinHandle<()>>,
    rate_limits: RateLimits,
    /// Feeds GraphQL subscriptions; stopped after the server.
    hub: Option<ActorRef<HubMessage>>,
    consumer_admin: ConsumerAdmin,
}

/// Why the application stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Signal,
    /// A supervisor escalated past the root: the process should exit non-zero.
    Fatal(String),
    ServerExited,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth_settings = settings.auth.to_settings();
        if auth_settings.dev_secret.is_some() {
            tracing::warn!(
                "auth.dev_hs256_secret is set: development tokens (HS256) are accepted; disable it in production"
            );
        }
        let auth = Authenticator::new(auth_settings)
            .await
            .context("cannot load the token verification keys")?;
        let rate_limits = RateLimits::new(RateLimitSettings {
            per_second: settings.http.rate_limit_per_second,
            burst: settings.http.rate_limit_burst,
        });
        if settings.audit_signer().is_none() {
            tracing::warn!(
                "audit.signing_key is empty: the audit tree's heads are not signed, so the log is tamper-evident only against rows edited without rehashing the tree; set a key in production"
            );
        }
        let store = PgStore::connect(&settings.store())?;
        store
            .migrate()
            .await
            .context("cannot prepare the database")?;
        let mut tree = settings.tree();
        tree.sealer.store = Some(PgStore::connect(&settings.sealer_store())?);
        let plan = Supervision::plan(
            store.clone(),
            tree,
            Arc::new(WellFormedSignature),
            settings.integration(),
        );
        // Everything the tree runs is prepared first (the search index opened, the registry
        // client built), then the whole tree starts in one place.
        let (search, consumer_admin, consumers) =
            prepare_consumers(&settings, &store, &plan.documents).await?;
        let hub = (settings.graphql.enabled && settings.graphql.subscriptions).then(|| {
            let kafka = settings.kafka();
            let topics = EVENT_TYPES.iter().map(|name| kafka.topic(name)).collect();
            SubscriptionHub {
                kafka,
                topics,
                buffer: settings.graphql.subscriber_buffer,
            }
        });
        let supervision = plan.start(hub, consumers).await?;
        let hub = supervision.hub.clone();

        let listener = std::net::TcpListener::bind(settings.http.listen)
            .with_context(|| format!("cannot listen on http.listen = {}", settings.http.listen))?;
        let address = listener.local_addr()?;
        let shutting_down = Arc::new(AtomicBool::new(false));
        let metrics = telemetry::metrics_handle();
        let mut readiness: Vec<Arc<dyn ReadinessCheck>> =
            vec![Arc::new(DatabaseCheck(store.clone()))];
        if let Some(cdc) = &supervision.cdc {
            readiness.push(Arc::new(CdcCheck(cdc.clone())));
        }
        let state = AppState {
            patients: supervision.patients.clone(),
            appointments: supervision.appointments.clone(),
            documents: supervision.documents.clone(),
            audit: supervision.audit.clone(),
            audit_signer: settings.audit_signer(),
            cdc: supervision.cdc.clone(),
            store: store.clone(),
            limits: HttpLimits {
                body_limit_bytes: settings.http.body_limit_bytes,
                request_timeout: ms(settings.http.request_timeout_ms),
            },
            readiness: Arc::new(readiness),
            shutting_down: shutting_down.clone(),
            render_metrics: Arc::new(move || metrics.render()),
            auth: auth.clone(),
            policy: Policy,
            rate_limits: rate_limits.clone(),
            cors_allowed_origins: Arc::new(settings.http.cors_allowed_origins.clone()),
            graphql: settings.graphql(),
            hub: hub.clone(),
            search,
            consumer_admin: consumer_admin.clone(),
            asyncapi: Arc::new(crate::asyncapi::document(&settings)),
        };
        let routes = medflow_http::routes(state);
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(medflow_http::server::serve(
            listener,
            routes,
            ms(settings.http.request_timeout_ms),
            shutting_down.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut background = Vec::new();
        background.extend(auth.spawn_refresh());
        background.push(tokio::spawn(rate_limits.cluster().share(
            store.clone(),
            Duration::from_millis(settings.http.rate_limit_sync_ms),
        )));
        background.push(tokio::spawn({
            let rate_limits = rate_limits.clone();
            async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(60));
                loop {
                    ticker.tick().await;
                    rate_limits.forget_idle_clients();
                }
            }
        }));
        tracing::info!(
            address = %address,
            longest_shutdown_ms = settings.longest_shutdown().as_millis() as u64,
            "medflow is listening"
        );
        Ok(Self {
            address,
            settings,
            store,
            supervision,
            shutting_down,
            stop_server,
            server,
            background,
            rate_limits,
            hub,
            consumer_admin,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn patients(&self) -> &Patients {
        &self.supervision.patients
    }

    /// The subscription hub, when subscriptions are enabled.
    pub fn hub(&self) -> Option<&ActorRef<HubMessage>> {
        self.hub.as_ref()
    }

    /// The consumer groups this instance runs (search indexer, registry submitter).
    pub fn consumers(&self) -> &Consumers {
        &self.consumer_admin.consumers
    }

    /// The settings the application runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// The per-client rate limits (and their count across the cluster).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.rate_limits
    }

    /// Runs until SIGTERM or SIGINT, a fatal supervision failure, or the server's end; then
    /// shuts down gracefully (after a signal, draining first: see [`Application::drain`]).
    pub async fn run_until_stopped(mut self) -> anyhow::Result<StopReason> {
        let mut fatal = self.supervision.fatal.clone();
        let reason = tokio::select! {
            () = shutdown_signal() => StopReason::Signal,
            changed = fatal.wait_for(Option::is_some) => match changed {
                Ok(reason) => StopReason::Fatal(reason.clone().unwrap_or_default()),
                Err(_) => StopReason::Fatal("the supervision tree is gone".into()),
            },
            result = &mut self.server => {
                if let Ok(Err(error)) = result {
                    tracing::error!(error = %error, "http server failed");
                }
                StopReason::ServerExited
            }
        };
        tracing::info!(reason = ?reason, "stopping");
        if reason == StopReason::Signal {
            // A second signal cuts the drain short (Ctrl-C twice on a terminal).
            self.drain(shutdown_signal()).await;
        }
        self.shutdown().await?;
        Ok(reason)
    }

    /// What SIGTERM does, without the signal: drain, then shut down.
    pub async fn terminate(self) -> anyhow::Result<()> {
        self.drain(std::future::pending::<()>()).await;
        self.shutdown().await
    }

    /// The first step of a graceful stop: `/readyz` answers 503 at once, so load balancers
    /// take the instance out of rotation, while it keeps serving for `http.drain_delay_ms`
    /// (or until `interrupt` resolves) — requests routed here before the balancer noticed
    /// still succeed. Responses meanwhile carry `Connection: close`, so keep-alive clients
    /// reconnect through the balancer to another instance.
    pub async fn drain(&self, interrupt: impl Future<Output = ()>) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let delay = ms(self.settings.http.drain_delay_ms);
        if delay.is_zero() {
            return;
        }
        tracing::info!(
            drain_delay_ms = self.settings.http.drain_delay_ms,
            "draining: /readyz answers 503, requests are still served"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = interrupt => tracing::info!("a second signal: the drain is cut short"),
        }
    }

    /// Stops gracefully: readiness turns red, the server stops accepting and lets in-flight
    /// requests finish (up to `http.shutdown_grace_ms`), then actors stop (up to
    /// `supervision.stop_timeout_ms`), then the pool. Call [`Application::drain`] first to
    /// leave load balancers time to notice.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let grace = ms(self.settings.http.shutdown_grace_ms);
        self.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.stop_server.send(());
        let mut server = self.server;
        if !server.is_finished() {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(Ok(Err(error))) => {
                    tracing::warn!(error = %error, "http server ended with an error")
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        grace_ms = grace.as_millis() as u64,
                        "in-flight requests did not finish in time"
                    );
                    server.abort();
                }
            }
        }
        for task in &self.background {
            task.abort();
        }
        self.supervision
            .stop(ms(self.settings.supervision.stop_timeout_ms))
            .await;
        self.store.pool().close();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens the search index and prepares the consumer groups the configuration enables: the
/// search indexer (`search.enabled`) and the registry submitter (`registry.url` set).
async fn prepare_consumers(
    settings: &Settings,
    store: &PgStore,
    documents: &medflow_actors::Documents,
) -> anyhow::Result<(
    Option<SearchService>,
    ConsumerAdmin,
    Option<ConsumerSupervisor>,
)> {
    let kafka = settings.kafka();
    let mut children = Vec::new();
    let mut child = |spec: medflow_actors::consume::ConsumerSpec, handler: Arc<dyn Handler>| {
        let stats = Arc::new(ConsumerStats::new(&kafka, &spec));
        children.push(ConsumerActor {
            spec,
            kafka: kafka.clone(),
            handler,
            stats,
        });
    };
    let search = if settings.search.enabled {
        let index = open_search_index(settings).await?;
        tracing::info!(adapter = index.name(), "search index ready");
        let mut spec = settings.search_indexer_spec();
        // The embedded index is this instance's own: complete only while this instance is
        // the group's only member.
        spec.needs_every_partition = index.name() == "embedded";
        if spec.needs_every_partition {
            tracing::warn!(
                data_dir = %settings.search.data_dir.display(),
                "search uses the embedded index, which serves ONE instance: with several, each holds only the partitions the consumer group assigns it and its searches miss the rest — run several instances with OpenSearch (search.opensearch_url)"
            );
        }
        child(
            spec,
            Arc::new(SearchIndexer {
                index: index.clone(),
                store: store.clone(),
            }),
        );
        Some(SearchService {
            index,
            max_limit: settings.search.max_limit,
        })
    } else {
        None
    };
    if !settings.registry.url.is_empty() {
        let client = RegistryClientSettings {
            url: settings.registry.url.clone(),
            timeout: ms(settings.registry.timeout_ms),
            client_identity_pem: read_pem(
                &settings.registry.client_identity_file,
                "registry.client_identity_file",
            )?,
            ca_pem: read_pem(&settings.registry.ca_file, "registry.ca_file")?,
        };
        let submitter = RegistrySubmitter::new(&client, documents.clone(), store.clone())?;
        child(settings.registry_submitter_spec(), Arc::new(submitter));
    } else {
        tracing::info!("registry.url is empty: signed documents are not submitted");
    }
    let consumers = Consumers::default();
    let supervisor = (!children.is_empty()).then(|| ConsumerSupervisor {
        children,
        consumers: consumers.clone(),
        backoff_initial: ms(settings.consumers.backoff_initial_ms),
        backoff_max: ms(settings.consumers.backoff_max_ms),
    });
    Ok((
        search,
        ConsumerAdmin {
            consumers,
            kafka: Some(kafka),
        },
        supervisor,
    ))
}

async fn open_search_index(settings: &Settings) -> anyhow::Result<Arc<dyn SearchIndex>> {
    let url = settings.search.opensearch_url.expose_secret();
    if url.is_empty() {
        let dir = settings.search.data_dir.clone();
        let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(&dir)).await??;
        return Ok(Arc::new(Arc::new(index)));
    }
    let index = OpenSearchIndex::connect(OpenSearchSettings {
        url: url.to_owned(),
        index_prefix: settings.search.opensearch_index_prefix.clone(),
        timeout: ms(settings.search.opensearch_timeout_ms),
    })
    .await
    .context("cannot prepare the OpenSearch indices")?;
    Ok(Arc::new(index))
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
