//! `hangar drain` and `hangar scheduler`: background processes that only talk to
//! PostgreSQL and stop gracefully on SIGTERM.

use std::sync::Arc;

use hangar_background::handlers::vcs::VcsContext;
use hangar_crypto::MasterKey;
use hangar_db::Database;
use hangar_store::secrets::SecretBox;
use hangar_vcs::GitCache;

use hangar_config::Config;
use crate::signals;

pub async fn drain(cfg: &Config) -> anyhow::Result<()> {
    let db = Database::from_config(&cfg.database, "hangar-drain")?;
    // The master key opens VCS integration tokens (commit statuses, polling);
    // the server's public URL is where those statuses link to.
    let secrets = match &cfg.secrets {
        Some(s) => Some(Arc::new(SecretBox::new(MasterKey::load(&s.master_key_file)?))),
        None => None,
    };
    let vcs_config = cfg.vcs.clone().unwrap_or_default();
    // git gets as long as the server gives it to resolve a branch.
    let git_timeout = match &cfg.server {
        Some(s) => std::time::Duration::from_secs(s.git_timeout_secs),
        None => vcs_config.ls_remote_timeout(),
    };
    let git_cache = cfg
        .drain
        .data_dir
        .as_ref()
        .map(|d| Arc::new(GitCache::new(d.join("git"), vcs_config.git.clone(), git_timeout)));
    let vcs = VcsContext {
        secrets,
        config: vcs_config,
        public_url: cfg.server.as_ref().map(|s| s.public_url.to_string()),
        git_cache,
        policies: crate::policy_evaluator()?,
    };
    hangar_background::run_drain(db, &cfg.drain, vcs, signals::shutdown_token()).await?;
    Ok(())
}

pub async fn scheduler(cfg: &Config) -> anyhow::Result<()> {
    let db = Database::from_config(&cfg.database, "hangar-scheduler")?;
    hangar_background::run_scheduler(db, &cfg.scheduler, signals::shutdown_token()).await?;
    Ok(())
}
