//! The drain's job handlers, by kind. Every handler is idempotent: a job can be
//! delivered again after a crash.

mod drift;
mod reaper;
mod retention;
mod schedule;
pub mod vcs;

use hangar_db::DbPool;
use hangar_db::queue::{Handlers, JobError};

pub use drift::{DRIFT_CHECK, DRIFT_TRIGGER};
pub use reaper::REAP;
pub use retention::RETENTION;
pub use schedule::SCHEDULE;

/// Every handler the drain runs.
pub fn all(pool: DbPool, vcs: std::sync::Arc<vcs::VcsContext>) -> Handlers {
    let mut h = Handlers::new();
    h.register(SCHEDULE, schedule::handler(pool.clone()));
    h.register(REAP, reaper::handler(pool.clone()));
    h.register(RETENTION, retention::handler(pool.clone()));
    h.register(DRIFT_CHECK, drift::check_handler(pool.clone()));
    h.register(DRIFT_TRIGGER, drift::trigger_handler(pool.clone()));
    h.register(vcs::DELIVERY, vcs::delivery_handler(pool.clone(), vcs.clone()));
    h.register(vcs::STATUS, vcs::status_handler(pool.clone(), vcs.clone()));
    h.register(vcs::POLL, vcs::poll_handler(pool.clone()));
    h.register(vcs::POLL_REPO, vcs::poll_repo_handler(pool, vcs));
    h
}

/// Reads a field of a job's payload, failing permanently when it is missing:
/// retrying a malformed job cannot help.
pub(crate) fn field<T: serde::de::DeserializeOwned>(payload: &serde_json::Value, name: &str) -> Result<T, JobError> {
    serde_json::from_value(payload.get(name).cloned().unwrap_or(serde_json::Value::Null))
        .map_err(|e| JobError::permanent(format!("payload field {name:?}: {e}")))
}

pub(crate) fn db_error(e: impl std::error::Error + 'static) -> JobError {
    JobError::from_error(&e)
}
