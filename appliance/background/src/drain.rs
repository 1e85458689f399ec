//! `hangar drain`: consumes the job queue with the appliance's handlers. Any
//! number of drains can run against one database; the queue hands each job to
//! one of them at a time.

use std::time::Duration;

use hangar_db::queue::{Consumer, ConsumerConfig, DEFAULT_QUEUE};
use hangar_db::{Database, DbError};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::handlers;
use crate::heartbeat::{self, ProcessKind};

/// The `[drain]` section of `hangar.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Jobs handled at once by this process.
    pub concurrency: usize,
    /// Jobs claimed per query.
    pub batch_size: i64,
    /// Seconds a claim lasts without renewal.
    pub lease_seconds: u64,
    /// Seconds a stopping drain waits for running handlers.
    pub shutdown_seconds: u64,
    /// Where the drain keeps its own files: bare copies of the stacks'
    /// repositories, to learn with git what a push changed when the webhook
    /// does not list it. Without one, such pushes always make a run.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { concurrency: 32, batch_size: 50, lease_seconds: 60, shutdown_seconds: 10, data_dir: None }
    }
}

impl DrainConfig {
    /// Problems with the values, as (field, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(("drain.concurrency", "must be between 1 and 1024".into()));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(("drain.batch_size", "must be between 1 and 1000".into()));
        }
        if !(5..=3600).contains(&self.lease_seconds) {
            return Err(("drain.lease_seconds", "must be between 5 and 3600".into()));
        }
        if self.shutdown_seconds > 600 {
            return Err(("drain.shutdown_seconds", "must be at most 600".into()));
        }
        if self.data_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(("drain.data_dir", "must be an absolute path".into()));
        }
        Ok(())
    }
}

/// Runs a drain until `shutdown` is cancelled. `vcs` is what the VCS handlers
/// need beyond the database (the secret box for integration tokens).
pub async fn run_drain(
    db: Database,
    cfg: &DrainConfig,
    vcs: handlers::vcs::VcsContext,
    shutdown: CancellationToken,
) -> Result<(), DbError> {
    // Handlers share the pool with claims and acknowledgements.
    let pool = db.pool(Some(cfg.concurrency.min(24) + 4))?;
    let mut consumer_cfg = ConsumerConfig::new(DEFAULT_QUEUE, &heartbeat::process_id(ProcessKind::Drain));
    consumer_cfg.concurrency = cfg.concurrency;
    consumer_cfg.batch_size = cfg.batch_size;
    consumer_cfg.lease = Duration::from_secs(cfg.lease_seconds);
    consumer_cfg.shutdown_deadline = Duration::from_secs(cfg.shutdown_seconds);
    let consumer = Consumer::new(db, pool.clone(), consumer_cfg, handlers::all(pool.clone(), std::sync::Arc::new(vcs)));

    let beats = CancellationToken::new();
    let beat = tokio::spawn(heartbeat::beat(pool, ProcessKind::Drain, || false, beats.clone()));
    info!("drain started");
    let result = consumer.run(shutdown).await;
    beats.cancel();
    let _ = beat.await;
    info!("drain stopped");
    result
}
