//! `stack.dependents`: a tracked run of a stack that others depend on ended.
//!
//! - **Finished**: each stack depending on it directly gets a tracked run at
//!   the head of its branch, once every one of its own dependencies is
//!   applied (its newest tracked run finished). In a diamond the stack below
//!   starts when the last of its dependencies finishes, once: the decision
//!   is taken with the dependent's row locked, and a tracked run of it
//!   created after its dependencies last finished means it was taken.
//!   Dependents that do not depend on each other start together, and each
//!   one's own end is the cue for the next level.
//! - **Failed** (or any other end): the chain stops there. Nothing below
//!   starts; the audit trail records where, and each stack below shows it
//!   (see [`hangar_store::dependencies::held`]).
//!
//! Redelivered, the job starts nothing twice (the same check) and audits a
//! stop again.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_db::DbPool;
use hangar_db::jobs::RunRef;
use hangar_db::queue::JobError;
use hangar_db::runs::{self, NewRun, RunRow};
use hangar_store::dependencies::{self, Standing};
use hangar_store::stacks::{self, StackRow};
use hangar_store::{StoreError, audit};
use hangar_types::{RunKind, RunState};
use serde_json::json;
use tracing::{info, warn};

use super::db_error;
use super::vcs::{VcsContext, list_refs};

pub(super) async fn handle(pool: &DbPool, ctx: &VcsContext, RunRef { run }: RunRef) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    let Some(run) = runs::get(&mut conn, run).await.map_err(db_error)? else { return Ok(()) };
    let Some(stack) = stacks::stack_by_id(&mut conn, run.stack_id).await.map_err(db_error)? else { return Ok(()) };
    let dependents = dependencies::dependents_of(&mut conn, stack.id).await.map_err(db_error)?;
    if run.state() != RunState::Finished {
        let below: Vec<&str> = dependents.iter().map(|d| d.slug.as_str()).collect();
        warn!(stack = %stack.slug, run = run.id, state = %run.state().as_str(), dependents = ?below, "the chain of dependencies stops here");
        let details = json!({ "run": run.id, "state": run.state().as_str(), "reason": run.failure_reason, "dependents": below });
        audit::record(&mut conn, "dependencies", "stack.chain_stopped", &format!("stack:{}", stack.slug), details)
            .await
            .map_err(db_error)?;
        return Ok(());
    }
    for dependent in dependents {
        start(&mut conn, ctx, &stack, &run, dependent).await?;
    }
    Ok(())
}

/// When every dependency of `dependent` is applied: the newest time one of
/// them finished; otherwise what holds it, for the log.
fn all_applied(standings: &[(i64, Standing)]) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let mut newest = None;
    for (id, s) in standings {
        match s {
            Standing::Applied { at, .. } => newest = newest.max(Some(*at)),
            Standing::Running { run, state } => return Err(format!("stack {id} is still at run {run} ({})", state.as_str())),
            Standing::Stopped { run, state, .. } => return Err(format!("stack {id}'s run {run} ended {}", state.as_str())),
            Standing::NeverApplied => return Err(format!("stack {id} was never applied")),
        }
    }
    newest.ok_or_else(|| "it has no dependencies any more".to_string())
}

/// Starts `dependent`'s tracked run after `upstream`'s run `cause` finished,
/// if all its dependencies are applied and no run of it followed them yet.
async fn start(
    conn: &mut AsyncPgConnection,
    ctx: &VcsContext,
    upstream: &StackRow,
    cause: &RunRow,
    dependent: StackRow,
) -> Result<(), JobError> {
    let standings: Vec<(i64, Standing)> =
        dependencies::standings(conn, dependent.id).await.map_err(db_error)?.into_iter().collect();
    if let Err(why) = all_applied(&standings) {
        info!(stack = %dependent.slug, after = %upstream.slug, "not started yet: {why}");
        return Ok(());
    }
    // git is asked before any row is locked.
    let Some(head) = branch_head(conn, ctx, &dependent, &format!("after {} (run {})", upstream.slug, cause.id)).await? else {
        return Ok(());
    };
    let triggered_by = format!("dependency {} (run {})", upstream.slug, cause.id);
    let (slug, upstream_slug, cause_id) = (dependent.slug.clone(), upstream.slug.clone(), cause.id);
    let started = conn
        .transaction::<_, StoreError, _>(async |c| {
            let Some(d) = dependencies::lock_stack(c, dependent.id).await? else { return Ok(None) };
            let standings: Vec<(i64, Standing)> = dependencies::standings(c, d.id).await?.into_iter().collect();
            let Ok(applied_at) = all_applied(&standings) else { return Ok(None) };
            if dependencies::tracked_run_since(c, d.id, applied_at).await?.is_some() {
                return Ok(None);
            }
            let new = NewRun {
                stack_id: d.id,
                kind: RunKind::Tracked,
                commit_sha: head.clone(),
                branch: d.branch.clone(),
                command: None,
                triggered_by: triggered_by.clone(),
            };
            let run = runs::create(c, &new, "dependencies").await?;
            audit::record(
                c,
                "dependencies",
                "run.trigger",
                &format!("run:{}", run.id),
                json!({ "stack": slug, "commit": head, "kind": RunKind::Tracked.as_str(), "dependency": upstream_slug, "dependency_run": cause_id }),
            )
            .await?;
            Ok(Some(run))
        })
        .await
        .map_err(db_error)?;
    if let Some(run) = started {
        info!(stack = %dependent.slug, run = run.id, after = %upstream.slug, "dependent's run started");
    }
    Ok(())
}

/// The commit at the head of `stack`'s branch, asked of its git server with
/// its integration's credentials. A branch that does not exist is audited
/// (`stack.not_started`, with `why` the run was to start) and answers
/// `None`; a git server that cannot be reached fails the job, to be tried
/// again.
pub(super) async fn branch_head(
    conn: &mut AsyncPgConnection,
    ctx: &VcsContext,
    stack: &StackRow,
    why: &str,
) -> Result<Option<String>, JobError> {
    let integration = match stack.vcs_integration_id {
        Some(id) => hangar_store::vcs::by_id(conn, id).await.map_err(db_error)?,
        None => None,
    };
    let refs = list_refs(conn, ctx, integration.as_ref(), &stack.repository).await?.map_err(|e| JobError::from_error(&e))?;
    if let Some(head) = refs.get(&format!("refs/heads/{}", stack.branch)) {
        return Ok(Some(head.to_string()));
    }
    let reason = format!("branch {} does not exist in {}", stack.branch, stack.repository);
    warn!(stack = %stack.slug, "cannot start a tracked run ({why}): {reason}");
    audit::record(conn, "scheduler", "stack.not_started", &format!("stack:{}", stack.slug), json!({ "why": why, "reason": reason }))
        .await
        .map_err(db_error)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependent_goes_only_when_everything_it_needs_is_applied() {
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let early = Standing::Applied { run: 1, at: at("2026-01-01T00:00:00Z") };
        let late = Standing::Applied { run: 2, at: at("2026-01-01T00:05:00Z") };
        assert_eq!(all_applied(&[(1, early.clone()), (2, late)]), Ok(at("2026-01-01T00:05:00Z")));
        let running = Standing::Running { run: 3, state: RunState::Applying };
        assert!(all_applied(&[(1, early.clone()), (2, running)]).unwrap_err().contains("run 3 (APPLYING)"));
        let failed = Standing::Stopped { run: 4, state: RunState::Failed, reason: None };
        assert!(all_applied(&[(1, early), (2, failed)]).unwrap_err().contains("ended FAILED"));
        assert!(all_applied(&[(1, Standing::NeverApplied)]).is_err());
        assert!(all_applied(&[]).is_err());
    }
}
