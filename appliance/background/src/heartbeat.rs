//! Heartbeats: each background process keeps a row in `processes` fresh, so the
//! supervisor's readiness check, the API and operators can see who is alive and
//! who leads.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::DbPool;
use hangar_db::schema::processes;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What kind of process a heartbeat row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    Server,
    Drain,
    Scheduler,
}

impl ProcessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Server => "server",
            ProcessKind::Drain => "drain",
            ProcessKind::Scheduler => "scheduler",
        }
    }
}

/// How often a process says it is alive; a row older than three of these is dead.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `<kind>@<host>:<pid>` for this process.
pub fn process_id(kind: ProcessKind) -> String {
    format!("{}@{}:{}", kind.as_str(), hostname(), std::process::id())
}

/// Writes the heartbeat now and every [`HEARTBEAT_EVERY`] until `stop`; removes
/// the row on the way out. `leader` is read at each beat.
pub(crate) async fn beat(
    pool: DbPool,
    kind: ProcessKind,
    leader: impl Fn() -> bool + Send + 'static,
    stop: CancellationToken,
) {
    let id = process_id(kind);
    loop {
        if let Err(e) = write(&pool, &id, kind, leader()).await {
            warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
    if let Ok(mut conn) = pool.get().await {
        let _ = diesel::delete(processes::table.filter(processes::id.eq(&id))).execute(&mut conn).await;
    }
}

async fn write(pool: &DbPool, id: &str, kind: ProcessKind, leader: bool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| hangar_db::error_chain(&e))?;
    diesel::insert_into(processes::table)
        .values((
            processes::id.eq(id),
            processes::kind.eq(kind.as_str()),
            processes::hostname.eq(hostname()),
            processes::pid.eq(std::process::id() as i32),
            processes::version.eq(env!("CARGO_PKG_VERSION")),
            processes::leader.eq(leader),
        ))
        .on_conflict(processes::id)
        .do_update()
        .set((processes::last_seen_at.eq(diesel::dsl::now), processes::leader.eq(leader)))
        .execute(&mut conn)
        .await
        .map_err(|e| hangar_db::error_chain(&e))?;
    Ok(())
}
