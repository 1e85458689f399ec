//! `hangar server`: HTTPS on 1983 until SIGTERM or SIGINT, then a graceful stop
//! that lets in-flight requests finish.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hangar_crypto::MasterKey;
use hangar_db::Database;
use hangar_broker::{Broker, BrokerHandle};
use hangar_objects::ObjectStore;
use hangar_console::ServiceFact;
use hangar_server::{HostedComponent, Server, ServerSettings, ServicesProbe, SystemSources};

use hangar_config::Config;

pub async fn run(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    let missing = |section: &str| format!("{}: the [{section}] section is required by `hangar server`", path.display());
    let server = cfg.server.clone().with_context(|| missing("server"))?;
    let secrets = cfg.secrets.as_ref().with_context(|| missing("secrets"))?;
    let objects = cfg.objects.as_ref().with_context(|| missing("objects"))?;
    let invalid = || format!("invalid configuration {}", path.display());
    server.validate().with_context(invalid)?;
    secrets.validate().with_context(invalid)?;
    objects.validate().with_context(invalid)?;
    if let Some(broker) = &cfg.broker {
        broker.validate().with_context(invalid)?;
    }

    let database = Database::from_config(&cfg.database, "hangar-server")?;
    let master_key = MasterKey::load(&secrets.master_key_file)?;
    let objects = ObjectStore::connect(objects).await?;
    // The built-in MQTT broker runs in this process when configured: `/ready`
    // includes it, and it stops after the HTTPS listener has drained.
    let mut hosted: Vec<Arc<dyn HostedComponent>> = Vec::new();
    if let Some(broker) = cfg.broker.clone() {
        let pool = database.pool(Some(BROKER_POOL_SIZE))?;
        let handle = Broker::start(broker, database.clone(), pool).await?;
        hosted.push(Arc::new(HostedBroker(handle)));
    }
    let system = system_sources(cfg, &server);
    let handle = Server::start(ServerSettings {
        config: server,
        database,
        objects: Arc::new(objects),
        master_key,
        hosted,
        system,
        policies: crate::policy_evaluator()?,
    })
    .await?;
    crate::signals::shutdown_token().cancelled().await;
    handle.shutdown();
    handle.wait().await;
    Ok(())
}

/// Where the console's System page looks: the supervisor's control socket
/// (when this appliance has a `[supervisor]`), the certificates of the server,
/// the broker and the CA, and the data directories under the supervisor's.
fn system_sources(cfg: &Config, server: &hangar_config::ServerConfig) -> SystemSources {
    let mut certificates = vec![("server".to_string(), server.cert_file.clone()), ("appliance CA".to_string(), server.ca_file.clone())];
    if let Some(b) = &cfg.broker
        && b.cert_file != server.cert_file
    {
        certificates.push(("broker".to_string(), b.cert_file.clone()));
    }
    let mut data_dirs = Vec::new();
    let services = cfg.supervisor.as_ref().map(|sup| {
        // The data directories sit beside the supervisor's own (default /var/lib/hangar/*).
        if let Some(parent) = sup.state_dir.parent()
            && let Ok(entries) = std::fs::read_dir(parent)
        {
            let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
            dirs.sort();
            data_dirs.extend(dirs);
        }
        let client = hangar_supervisor::ctl::CtlClient::new(sup.socket.clone());
        let probe: ServicesProbe = Arc::new(move || -> Pending<'static, Result<Vec<ServiceFact>, String>> {
            let client = client.clone();
            Box::pin(async move {
                let asked = tokio::time::timeout(std::time::Duration::from_secs(3), client.status()).await;
                let (services, _) = asked
                    .map_err(|_| format!("the supervisor at {} did not answer within 3 s", client.path().display()))?
                    .map_err(|e| hangar_types::error_chain(&e))?;
                Ok(services
                    .into_iter()
                    .map(|s| ServiceFact {
                        name: s.name,
                        state: s.state.as_str().to_string(),
                        pid: s.pid,
                        restarts: s.restarts,
                        started_at: s.started_at_ms.and_then(chrono::DateTime::from_timestamp_millis),
                        detail: s.detail,
                    })
                    .collect())
            })
        });
        probe
    });
    SystemSources { services, certificates, data_dirs }
}

/// Connections the broker keeps for admission lookups (the bridge has its own).
const BROKER_POOL_SIZE: usize = 4;

/// The broker as a component the server hosts.
struct HostedBroker(BrokerHandle);

type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl HostedComponent for HostedBroker {
    fn name(&self) -> &'static str {
        hangar_server::hosted::BROKER
    }

    fn ready(&self) -> Pending<'_, Result<hangar_server::hosted::Facts, String>> {
        Box::pin(async move {
            let status = self.0.status().await;
            match status.problem() {
                Some(problem) => Err(problem),
                None => {
                    let mut facts = hangar_server::hosted::Facts::new();
                    facts.insert("connections".to_string(), status.connections.into());
                    Ok(facts)
                }
            }
        })
    }

    fn shutdown(&self) -> Pending<'_, ()> {
        Box::pin(async move {
            self.0.shutdown();
            self.0.wait().await;
        })
    }
}
