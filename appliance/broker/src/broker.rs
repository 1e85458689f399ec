//! The broker as a service: `Broker::start` binds the listener and starts the
//! router, the accept loop and the database bridge; the handle publishes,
//! reports health, and stops everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hangar_config::BrokerConfig;
use hangar_db::{Database, DbPool};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::engine::Engine;
use crate::registry::Registry;
use crate::tls::TlsFiles;
use crate::wire::{self, Notification};
use crate::{BrokerError, bridge, session};

/// How long the health probe waits for a message to come back through the router.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every part of a running broker shares.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub tls: TlsFiles,
    pub auth: Authenticator,
    pub db: DbPool,
    pub registry: Registry,
    pub engine: Engine,
    /// Connections between accept and CONNACK.
    pub pending: Arc<Semaphore>,
    /// Connected workers.
    pub slots: Arc<Semaphore>,
    pub listening: AtomicBool,
    pub bridge_up: AtomicBool,
    /// Who was told of work when, so announcements take turns.
    pub turns: crate::dispatch::Turns,
}

impl Shared {
    /// Notifications go from here straight to the connections' queues, not
    /// through rumqttd's router: the router would append each one to a log per
    /// topic and pass it through ring buffers per link that become resident
    /// as they turn (see BENCHMARKS.md, MQTT broker).
    fn payload(&self, n: &Notification) -> Result<Bytes, BrokerError> {
        if !self.engine.is_open() {
            return Err(BrokerError::Stopped);
        }
        Ok(Bytes::from(wire::to_json(n)))
    }

    pub(crate) async fn publish_to_worker(&self, worker: i64, n: &Notification) -> Result<usize, BrokerError> {
        let payload = self.payload(n)?;
        Ok(self.registry.deliver_to_workers(&[worker], &payload))
    }

    /// Sends `n` to each of `workers` that is connected, each on its own topic.
    pub(crate) async fn publish_to_workers(&self, workers: &[i64], n: &Notification) -> Result<(), BrokerError> {
        let payload = self.payload(n)?;
        self.registry.deliver_to_workers(workers, &payload);
        Ok(())
    }

    pub(crate) async fn publish_to_pool(&self, pool: i64, n: &Notification) -> Result<usize, BrokerError> {
        let payload = self.payload(n)?;
        Ok(self.registry.deliver_to_pool(pool, &payload))
    }
}

/// The built-in MQTT broker.
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Starts the broker on the current runtime: `db` opens the bridge's
    /// dedicated LISTEN connection, `pool` serves authentication lookups.
    pub async fn start(config: BrokerConfig, db: Database, pool: DbPool) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        let tls = TlsFiles::load(&config.cert_file, &config.key_file, &config.ca_file)?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| BrokerError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind { addr: config.listen, source })?;
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let engine = Engine::start(&tasks, stop.clone()).await?;
        let shared = Arc::new(Shared {
            pending: Arc::new(Semaphore::new(config.limits.max_pending)),
            slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
            tls,
            auth: Authenticator::new(pool.clone()),
            db: pool,
            registry: Registry::default(),
            engine,
            listening: AtomicBool::new(true),
            bridge_up: AtomicBool::new(false),
            turns: Default::default(),
        });
        tasks.spawn(accept_loop(shared.clone(), listener, stop.clone(), tasks.clone()));
        tasks.spawn(bridge::run(shared.clone(), db, stop.clone()));
        info!(%addr, "MQTT broker listening");
        Ok(BrokerHandle { shared, tasks, stop, addr })
    }
}

/// A running broker. Clones share it.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
    addr: SocketAddr,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The broker's health, for the server's `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BrokerStatus {
    /// The listener accepts connections.
    pub listening: bool,
    /// A message went through the router and back.
    pub router: bool,
    /// The bridge is LISTENing to the database.
    pub bridge: bool,
    /// Connected workers.
    pub connections: usize,
}

impl BrokerStatus {
    pub fn ok(&self) -> bool {
        self.listening && self.router && self.bridge
    }

    /// What is wrong, in one line, or `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        let problems: Vec<&str> = [
            (!self.listening).then_some("the MQTT listener is closed"),
            (!self.router).then_some("the MQTT router does not answer"),
            (!self.bridge).then_some("not listening to PostgreSQL for changes (reconnecting)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

impl BrokerHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `n` to `worker` alone. Returns how many workers it went to: 0 when
    /// the worker is not connected (it learns what it missed when it polls).
    pub async fn publish_to_worker(&self, worker: i64, n: &Notification) -> Result<usize, BrokerError> {
        self.shared.publish_to_worker(worker, n).await
    }

    /// Sends `n` to every connected worker of `pool`. Returns how many.
    pub async fn publish_to_pool(&self, pool: i64, n: &Notification) -> Result<usize, BrokerError> {
        self.shared.publish_to_pool(pool, n).await
    }

    /// Checks the router end to end (takes up to two seconds when it is stuck).
    pub async fn status(&self) -> BrokerStatus {
        let router = !self.stop.is_cancelled() && self.shared.engine.probe(PROBE_TIMEOUT).await;
        BrokerStatus {
            listening: self.shared.listening.load(Ordering::Relaxed),
            router,
            bridge: self.shared.bridge_up.load(Ordering::Relaxed),
            connections: self.shared.registry.len(),
        }
    }

    /// Connected workers right now.
    pub fn connections(&self) -> usize {
        self.shared.registry.len()
    }

    /// Asks everything to stop: the listener closes, every connection is
    /// closed, the bridge disconnects. `wait` returns when that is done.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Returns once the broker has stopped (after `shutdown`).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.shared.engine.close().await;
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                tasks.spawn(session::serve(shared.clone(), tcp, addr, stop.clone()));
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait for connections to close.
                warn!(error = %e, "cannot accept MQTT connections");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    shared.listening.store(false, Ordering::Relaxed);
    info!("MQTT listener closed");
}
