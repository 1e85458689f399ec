//! `hangar server`: the appliance's HTTPS endpoint on 1983 — `/health` and
//! `/ready`, the GraphQL API, run logs, Terraform's state backend, the worker
//! API with tool downloads and the provider mirror, and VCS webhooks (the
//! table is in `routes`) — plus the administration tasks the installer and
//! operators run (`hangar admin`). Data goes through `hangar-store`.
//!
//! Lifecycle: [`Server::start`] binds and returns a [`ServerHandle`] with
//! `local_addr()`, `shutdown()` and `wait()`; the address comes from the
//! settings, so tests bind port 0.

pub mod admin;
mod api;
mod bundles;
mod console;
mod dependencies;
mod drift;
mod error;
pub mod git;
mod graphql;
pub mod hosted;
mod http;
mod listener;
pub mod logs;
mod policies;
mod proxy_header;
mod ready;
mod registry;
mod routes;
mod state;
mod system;
mod webhooks;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use hangar_crypto::MasterKey;
use hangar_db::{Database, DbPool};
use hangar_objects::ObjectStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ServerError;
pub use hosted::HostedComponent;
pub use listener::{PeerCertificates, RemoteAddr};
pub use system::{ServicesProbe, SystemSources};

/// Everything the server needs, resolved by the caller.
pub struct ServerSettings {
    pub config: hangar_config::ServerConfig,
    /// The database; the server keeps its own pool of `pool_size` connections.
    pub database: Database,
    pub objects: Arc<ObjectStore>,
    pub master_key: MasterKey,
    /// Components the server hosts (the MQTT broker): checked by `/ready` under
    /// their name and stopped after the HTTPS listener drained.
    pub hosted: Vec<Arc<dyn HostedComponent>>,
    /// Where the console's System page finds its facts.
    pub system: SystemSources,
    /// Evaluates plan, approval and trigger policies (in a child process with
    /// a memory limit, in the appliance binary).
    pub policies: hangar_policy::Evaluator,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("config", &self.config)
            .field("objects", &self.objects)
            .field("master_key", &self.master_key)
            .field("hosted", &self.hosted.iter().map(|h| h.name()).collect::<Vec<_>>())
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

/// State shared by every request.
pub(crate) struct App {
    pub(crate) db: DbPool,
    /// `/ready`'s own connection: a server whose pooled connections are all
    /// taken by requests is busy, not unready (see `ready`).
    pub(crate) ready_db: DbPool,
    /// `user@host:port/db`, for messages.
    pub(crate) db_target: String,
    pub(crate) objects: Arc<ObjectStore>,
    pub(crate) secrets: hangar_store::secrets::SecretBox,
    pub(crate) hosted: Vec<Arc<dyn HostedComponent>>,
    pub(crate) session_ttl: chrono::Duration,
    pub(crate) git_timeout: Duration,
    /// Wakes live log readers when a chunk is stored or a run changes.
    pub(crate) logs: logs::hub::LogHub,
    /// The worker protocol's settings and the CA that signs joining workers.
    pub(crate) workers: workers::WorkerSettings,
    /// Where workers' claims wait to be answered together.
    pub(crate) claims: workers::desk::Desk,
    /// Largest state the state backend accepts.
    pub(crate) max_state_bytes: u64,
    /// Largest module archive the registry publishes.
    pub(crate) max_module_bytes: u64,
    /// Evaluates policies under their limits (shared by every request).
    pub(crate) policies: hangar_policy::Evaluator,
    /// The staging area of uploaded bundles, when uploads are configured.
    pub(crate) bundles: Option<bundles::Staging>,
    /// Room for webhook bodies being read, in KiB (`webhooks::Budget`).
    pub(crate) webhook_budget: webhooks::Budget,
}

/// The running server.
#[derive(Debug)]
pub struct Server;

/// Handle on a running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Loads the TLS material, checks the database schema and the master key
    /// against the stored data keys (when the database answers), binds, and
    /// starts serving.
    pub async fn start(settings: ServerSettings) -> Result<ServerHandle, ServerError> {
        let ServerSettings { config, database, objects, master_key, hosted, system, policies } = settings;
        config.validate()?;
        let db = database.pool(None)?;
        let tls = tls_config(&config)?;
        let workers = workers::WorkerSettings::new(&config)?;
        let staging = bundles::Staging::new(&config)?;
        let secrets = hangar_store::secrets::SecretBox::new(master_key);
        check_database(&db, &secrets).await?;

        // ---- components the server hosts ----
        // Started before the listener so `/ready` reports them from the first
        // request; stopped after the listener drained (see `drain`).
        let hosted: Vec<Arc<dyn HostedComponent>> = hosted;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;

        // Cancelled first on shutdown: live log readers end with it.
        let shutdown = CancellationToken::new();
        let app = Arc::new(App {
            db,
            ready_db: database.pool(Some(1))?,
            db_target: database.target().to_string(),
            objects,
            secrets,
            hosted,
            session_ttl: chrono::Duration::hours(i64::from(config.session_ttl_hours)),
            git_timeout: Duration::from_secs(config.git_timeout_secs),
            logs: logs::hub::LogHub::start(database.clone(), shutdown.clone(), workers.waiters.clone()),
            workers,
            claims: workers::desk::Desk::new(),
            max_state_bytes: config.max_state_bytes,
            max_module_bytes: config.max_module_bytes,
            policies,
            bundles: staging,
            webhook_budget: webhooks::Budget::new(config.webhook_bytes_in_flight),
        });
        workers::desk::Desk::open(&app);
        let limits = graphql::QueryLimits { max_depth: config.max_query_depth, max_complexity: config.max_query_complexity };
        let schema = graphql::schema(app.clone(), limits);
        let admission = graphql::Admission::new(&schema, limits);
        let console = hangar_console::routes(hangar_console::ConsoleSettings {
            db: app.db.clone(),
            session_ttl: app.session_ttl,
            public_url: config.public_url.clone(),
            backend: Arc::new(console::ConsoleBackend { app: app.clone(), schema: schema.clone(), system }),
        });
        let routes = routes::routes(app.clone(), schema, admission, console, config.max_body_bytes);
        let limits = listener::ConnectionLimits {
            handshake_timeout: config.handshake_timeout(),
            header_timeout: Duration::from_secs(30),
            proxies: config.proxy_protocol_from.iter().map(|a| a.to_canonical()).collect(),
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let task = tokio::spawn(run(listener, tls, routes, limits, shutdown.clone(), grace, app));
        tracing::info!(addr = %local_addr, public_url = %config.public_url, "serving HTTPS");
        Ok(ServerHandle { local_addr, shutdown, task })
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and lets in-flight requests finish (up to the grace period).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}

async fn run(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    limits: listener::ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
    app: Arc<App>,
) {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    listener::serve(listener, tls, routes, limits, shutdown, hard_stop.clone(), tracker.clone()).await;
    tracker.close();
    tracing::info!(connections = tracker.len(), grace_secs = grace.as_secs(), "draining connections");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(connections = tracker.len(), "shutdown deadline reached; closing the remaining connections");
        hard_stop.cancel();
        tracker.wait().await;
    }
    for h in &app.hosted {
        h.shutdown().await;
    }
    tracing::info!("server stopped");
}

fn tls_config(config: &hangar_config::ServerConfig) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let chain = hangar_certs::tls::load_certs(&config.cert_file).map_err(ServerError::certs)?;
    let key = hangar_certs::tls::load_key(&config.key_file).map_err(ServerError::certs)?;
    let ca = std::fs::read(&config.ca_file).map_err(|source| ServerError::ReadFile { path: config.ca_file.clone(), source })?;
    let roots = hangar_certs::tls::roots_from_pem(&ca).map_err(ServerError::certs)?;
    // Workers present certificates from the appliance CA; browsers and API
    // clients present none and authenticate with tokens.
    let mut cfg = hangar_certs::tls::server_config(chain, key, hangar_certs::tls::ClientAuth::Optional(roots))
        .map_err(ServerError::certs)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

#[derive(diesel::QueryableByName)]
struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}

/// Refuses to start on a schema older than this binary or with data keys the
/// configured master key did not wrap. A database that does not answer yet is
/// only logged: `/ready` reports it until it does.
async fn check_database(db: &DbPool, secrets: &hangar_store::secrets::SecretBox) -> Result<(), ServerError> {
    let mut conn = match db.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %hangar_types::error_chain(&e), "database not reachable at start; continuing");
            return Ok(());
        }
    };
    let applied: Vec<Version> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(&mut conn)
        .await
        .unwrap_or_default();
    let pending: Vec<String> = hangar_db::migrate::known_versions()
        .into_iter()
        .filter(|k| !applied.iter().any(|a| &a.version == k))
        .collect();
    if !pending.is_empty() {
        return Err(ServerError::SchemaBehind { pending: pending.join(", ") });
    }
    Ok(secrets.check(&mut conn).await?)
}
