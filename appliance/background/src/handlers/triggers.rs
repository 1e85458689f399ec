//! `stack.trigger`: a trigger policy named a stack when a tracked run of
//! another stack ended (the server evaluates the policy as the run's end is
//! reported). A tracked run of the named stack starts at the head of its
//! branch, once per run and stack: its `triggered_by` names the policy and
//! the run, and a redelivered job finds it there.

use hangar_db::DbPool;
use hangar_db::jobs::StackTrigger;
use hangar_db::queue::JobError;
use hangar_db::runs::{self, NewRun};
use hangar_store::{audit, runs as run_store, stacks};
use hangar_types::RunKind;
use serde_json::json;
use tracing::info;

use super::db_error;
use super::dependencies::branch_head;
use super::vcs::VcsContext;

pub(super) async fn handle(pool: &DbPool, ctx: &VcsContext, StackTrigger { stack, run, policy }: StackTrigger) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    let Some(target) = stacks::stack_by_id(&mut conn, stack).await.map_err(db_error)? else { return Ok(()) };
    let triggered_by = format!("trigger policy {policy} (run {run})");
    if run_store::triggered_by(&mut conn, stack, &triggered_by).await.map_err(db_error)?.is_some() {
        return Ok(());
    }
    let Some(head) = branch_head(&mut conn, ctx, &target, &triggered_by).await? else { return Ok(()) };
    let new = NewRun {
        stack_id: target.id,
        kind: RunKind::Tracked,
        commit_sha: head.clone(),
        branch: target.branch.clone(),
        command: None,
        triggered_by,
    };
    let created = runs::create(&mut conn, &new, "policy:trigger").await.map_err(db_error)?;
    audit::record(
        &mut conn,
        "policy:trigger",
        "run.trigger",
        &format!("run:{}", created.id),
        json!({ "stack": target.slug, "commit": head, "kind": RunKind::Tracked.as_str(), "policy": policy, "after_run": run }),
    )
    .await
    .map_err(db_error)?;
    info!(stack = %target.slug, run = created.id, %policy, after_run = run, "run started by a trigger policy");
    Ok(())
}
