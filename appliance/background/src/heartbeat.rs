//! Heartbeats: each background process keeps a row in `processes` fresh, so the
//! supervisor's readiness check, the API and operators can see who is alive and
//! who leads.

use std::time::Duration;

use hangar_db::DbPool;
use hangar_store::processes::{self, Beat};
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
        let _ = processes::forget(&mut conn, &id).await;
    }
}

async fn write(pool: &DbPool, id: &str, kind: ProcessKind, leader: bool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| hangar_types::error_chain(&e))?;
    let beat = Beat {
        id,
        kind: kind.as_str(),
        hostname: &hostname(),
        pid: std::process::id() as i32,
        version: env!("CARGO_PKG_VERSION"),
        leader,
    };
    processes::beat(&mut conn, &beat).await.map_err(|e| hangar_types::error_chain(&e))
}
