//! The drain's job handlers: one per kind of [`Job`], chosen by one exhaustive
//! match. Every handler is idempotent: a job can be delivered again after a
//! crash.

mod dependencies;
mod drift;
mod push_policy;
mod reaper;
mod retention;
mod schedule;
mod triggers;
pub mod vcs;

use std::sync::Arc;

use hangar_db::DbPool;
use hangar_db::jobs::{Job, JobKind};
use hangar_db::queue::{ClaimedJob, Handlers, JobError, handler_fn};


/// What the handlers share.
struct Drain {
    pool: DbPool,
    vcs: Arc<vcs::VcsContext>,
}

/// Every handler the drain runs: one for each kind of job.
pub fn all(pool: DbPool, vcs: Arc<vcs::VcsContext>) -> Handlers {
    let drain = Arc::new(Drain { pool, vcs });
    let mut h = Handlers::new();
    for kind in JobKind::ALL {
        let drain = drain.clone();
        h.register(
            kind.as_str(),
            handler_fn(move |job| {
                let drain = drain.clone();
                async move { drain.handle(job).await }
            }),
        );
    }
    h
}

impl Drain {
    async fn handle(&self, claimed: ClaimedJob) -> Result<(), JobError> {
        // Retrying a malformed job cannot help.
        let job = Job::parse(&claimed.kind, &claimed.payload)
            .map_err(|e| JobError::permanent(hangar_types::error_chain(&e)))?;
        let pool = &self.pool;
        match job {
            Job::Schedule(p) => schedule::handle(pool, p).await,
            Job::Reap(_) => reaper::handle(pool).await,
            Job::Retention(p) => retention::handle(pool, p).await,
            Job::DriftCheck(p) => drift::check(pool, p).await,
            Job::DriftTrigger(p) => drift::trigger(pool, p).await,
            Job::VcsDelivery(p) => vcs::delivery(pool, &self.vcs, p).await,
            Job::VcsStatus(p) => vcs::status(pool, &self.vcs, p).await,
            Job::VcsPoll(_) => vcs::poll(pool).await,
            Job::VcsPollRepo(p) => vcs::poll_repository(pool, &self.vcs, p).await,
            Job::Dependents(p) => dependencies::handle(pool, &self.vcs, p).await,
            Job::TriggerStack(p) => triggers::handle(pool, &self.vcs, p).await,
        }
    }
}

pub(crate) fn db_error(e: impl std::error::Error + 'static) -> JobError {
    JobError::from_error(&e)
}
