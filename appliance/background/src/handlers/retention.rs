//! `retention.cleanup`: forgets what is no longer needed — deduplication keys and
//! dead jobs older than the retention period, heartbeats of processes long gone,
//! login sessions that expired or were revoked more than a day ago.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::DbPool;
use hangar_db::jobs::Retention;
use hangar_db::queue::{self, JobError};
use hangar_db::schema::{jobs, processes, sessions};
use tracing::info;

use super::db_error;

pub(super) async fn handle(pool: &DbPool, Retention { days }: Retention) -> Result<(), JobError> {
    let cutoff = Utc::now() - chrono::Duration::days(days.max(1));
    let mut conn = pool.get().await.map_err(db_error)?;
    let keys = queue::prune_keys(&mut conn, cutoff).await.map_err(db_error)?;
    let dead = diesel::delete(jobs::table.filter(jobs::state.eq("dead")).filter(jobs::created_at.lt(cutoff)))
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
    let gone = diesel::delete(
        processes::table.filter(processes::last_seen_at.lt(Utc::now() - chrono::Duration::hours(1))),
    )
    .execute(&mut conn)
    .await
    .map_err(db_error)?;
    // A day of grace keeps a just-ended session explainable in the logs.
    let day_ago = Utc::now() - chrono::Duration::days(1);
    let ended = diesel::delete(
        sessions::table.filter(sessions::expires_at.lt(day_ago).or(sessions::revoked_at.lt(day_ago))),
    )
    .execute(&mut conn)
    .await
    .map_err(db_error)?;
    info!(keys, dead, processes = gone, sessions = ended, days, "retention cleanup");
    Ok(())
}
