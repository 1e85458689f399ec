//! Drift detection. `drift.check` (fired by the scheduler with the window since
//! its previous tick) finds stacks whose drift schedule had an occurrence in the
//! window and enqueues one `drift.trigger` per stack and occurrence (deduplicated
//! by key); `drift.trigger` creates a drift run — a plan of the commit last
//! applied, against reality.

use std::str::FromStr;

use croner::Cron;
use hangar_db::DbPool;
use hangar_db::jobs::{DriftOccurrence, Job, Window};
use hangar_db::queue::{self, JobError};
use hangar_db::runs::{self, NewRun};
use hangar_store::{runs as run_store, stacks};
use hangar_types::RunKind;
use tracing::{info, warn};

use super::db_error;

pub(super) async fn check(pool: &DbPool, Window { from, to }: Window) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    for (stack, schedule) in stacks::drift_schedules(&mut conn).await.map_err(db_error)? {
        let cron = match Cron::from_str(&schedule) {
            Ok(c) => c,
            Err(e) => {
                warn!(stack, schedule, error = %e, "invalid drift schedule; skipped");
                continue;
            }
        };
        // The last occurrence in (from, to], if any.
        let Ok(at) = cron.find_previous_occurrence(&to, true) else { continue };
        if at <= from {
            continue;
        }
        let key = format!("drift:{stack}:{}", at.to_rfc3339());
        let job = Job::DriftTrigger(DriftOccurrence { stack, at }).to_new().unique_key(key);
        queue::enqueue(&mut conn, &job).await.map_err(db_error)?;
    }
    Ok(())
}

pub(super) async fn trigger(pool: &DbPool, DriftOccurrence { stack, at }: DriftOccurrence) -> Result<(), JobError> {
    let triggered_by = format!("drift schedule ({})", at.to_rfc3339());
    let mut conn = pool.get().await.map_err(db_error)?;
    // A redelivered job must not make a second run.
    if run_store::triggered_by(&mut conn, stack, &triggered_by).await.map_err(db_error)?.is_some() {
        return Ok(());
    }
    let Some(branch) = stacks::branch_of(&mut conn, stack).await.map_err(db_error)? else {
        return Err(JobError::permanent(format!("stack {stack} no longer exists")));
    };
    // Drift is measured against what was last applied.
    let Some(commit) = run_store::last_tracked_commit(&mut conn, stack, true).await.map_err(db_error)? else {
        info!(stack, "no applied commit yet; no drift run");
        return Ok(());
    };
    let new = NewRun {
        stack_id: stack,
        kind: RunKind::Drift,
        commit_sha: commit,
        branch,
        command: None,
        triggered_by,
    };
    let run = runs::create(&mut conn, &new, "scheduler").await.map_err(db_error)?;
    info!(run = run.id, stack, "drift run created");
    Ok(())
}
