//! `hangar drain` and `hangar scheduler`: background processes that only talk to
//! PostgreSQL and stop gracefully on SIGTERM.

use hangar_db::Database;

use crate::config::Config;
use crate::signals;

pub async fn drain(cfg: &Config) -> anyhow::Result<()> {
    let db = Database::from_config(&cfg.database, "hangar-drain")?;
    hangar_background::run_drain(db, &cfg.drain, signals::shutdown_token()).await?;
    Ok(())
}

pub async fn scheduler(cfg: &Config) -> anyhow::Result<()> {
    let db = Database::from_config(&cfg.database, "hangar-scheduler")?;
    hangar_background::run_scheduler(db, &cfg.scheduler, signals::shutdown_token()).await?;
    Ok(())
}
