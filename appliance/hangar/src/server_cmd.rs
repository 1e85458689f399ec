//! `hangar server`: HTTPS on 1983 until SIGTERM or SIGINT, then a graceful stop
//! that lets in-flight requests finish.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hangar_crypto::MasterKey;
use hangar_db::Database;
use hangar_objects::ObjectStore;
use hangar_server::{Server, ServerSettings};

use crate::config::Config;

pub async fn run(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    let missing = |section: &str| format!("{}: the [{section}] section is required by `hangar server`", path.display());
    let server = cfg.server.clone().with_context(|| missing("server"))?;
    let secrets = cfg.secrets.as_ref().with_context(|| missing("secrets"))?;
    let objects = cfg.objects.as_ref().with_context(|| missing("objects"))?;
    let invalid = || format!("invalid configuration {}", path.display());
    server.validate().with_context(invalid)?;
    secrets.validate().with_context(invalid)?;
    objects.validate().with_context(invalid)?;

    let database = Database::from_config(&cfg.database, "hangar-server")?;
    let master_key = MasterKey::load(&secrets.master_key_file)?;
    let objects = ObjectStore::connect(objects).await?;
    let handle = Server::start(ServerSettings {
        config: server,
        database,
        objects: Arc::new(objects),
        master_key,
        hosted: Vec::new(),
    })
    .await?;
    crate::signals::shutdown_token().cancelled().await;
    handle.shutdown();
    handle.wait().await;
    Ok(())
}
