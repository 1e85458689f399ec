//! `hangar drain`: consumes the job queue with the appliance's handlers. Any
//! number of drains can run against one database; the queue hands each job to
//! one of them at a time.

use std::time::Duration;

use hangar_db::queue::{Consumer, ConsumerConfig, DEFAULT_QUEUE};
use hangar_db::{Database, DbError};
use hangar_config::DrainConfig;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::handlers;
use crate::heartbeat::{self, ProcessKind};

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
