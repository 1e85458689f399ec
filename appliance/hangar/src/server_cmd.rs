//! `hangar server`: HTTPS on 1983 until SIGTERM or SIGINT, then a graceful stop
//! that lets in-flight requests finish.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hangar_crypto::MasterKey;
use hangar_db::Database;
use hangar_broker::{Broker, BrokerHandle};
use hangar_objects::ObjectStore;
use hangar_server::{HostedComponent, Server, ServerSettings};

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
    let handle = Server::start(ServerSettings {
        config: server,
        database,
        objects: Arc::new(objects),
        master_key,
        hosted,
    })
    .await?;
    crate::signals::shutdown_token().cancelled().await;
    handle.shutdown();
    handle.wait().await;
    Ok(())
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

    fn ready(&self) -> Pending<'_, Result<(), String>> {
        Box::pin(async move { self.0.status().await.problem().map_or(Ok(()), Err) })
    }

    fn shutdown(&self) -> Pending<'_, ()> {
        Box::pin(async move {
            self.0.shutdown();
            self.0.wait().await;
        })
    }
}
