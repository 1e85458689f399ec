//! `retention.cleanup`: forgets what is no longer needed — deduplication keys and
//! dead jobs older than the retention period, heartbeats of processes long gone,
//! login sessions that expired or were revoked more than a day ago.

use chrono::Utc;
use hangar_db::DbPool;
use hangar_db::jobs::Retention;
use hangar_db::queue::{self, JobError};
use hangar_store::{processes, users};
use tracing::info;

use super::db_error;

pub(super) async fn handle(pool: &DbPool, Retention { days }: Retention) -> Result<(), JobError> {
    let cutoff = Utc::now() - chrono::Duration::days(days.max(1));
    let mut conn = pool.get().await.map_err(db_error)?;
    let keys = queue::prune_keys(&mut conn, cutoff).await.map_err(db_error)?;
    let dead = queue::prune_dead(&mut conn, cutoff).await.map_err(db_error)?;
    let gone = processes::forget_silent_since(&mut conn, Utc::now() - chrono::Duration::hours(1)).await.map_err(db_error)?;
    // A day of grace keeps a just-ended session explainable in the logs.
    let ended = users::prune_sessions(&mut conn, Utc::now() - chrono::Duration::days(1)).await.map_err(db_error)?;
    info!(keys, dead, processes = gone, sessions = ended, days, "retention cleanup");
    Ok(())
}
