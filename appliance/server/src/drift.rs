//! Drift detection: a drift run plans a stack's configuration against the
//! real infrastructure (an ordinary plan, refresh included), and the
//! resources its plan would change are the drift. When a drift run
//! finishes, what it found is recorded on its stack (see
//! [`hangar_store::stacks::record_drift`]), audited when the stack becomes
//! drifted or clean again, and, for a stack with `driftReconcile`, a tracked
//! run is queued that puts the infrastructure back (it applies by itself
//! only with autodeploy; otherwise it waits for a confirmation, and plan and
//! approval policies apply to it as to any tracked run).
//!
//! The findings are recorded just before the run's report that it finished
//! is applied, so that whoever sees the run FINISHED sees them too (a report
//! the worker repeats records them again, with the same result).
//!
//! A plan also differs when the configuration changed and was not applied;
//! a drift run cannot tell the two apart, and says so by naming the
//! resources either way.

use diesel_async::AsyncPgConnection;
use hangar_db::runs::{NewRun, RunRow};
use hangar_store::stacks::{self, DriftedResource};
use hangar_types::{RunKind, RunState};
use serde_json::json;

use crate::App;

/// The resources a plan JSON (`terraform show -json`) would change.
pub(crate) fn drifted(plan: &serde_json::Value) -> Vec<DriftedResource> {
    let mut out: Vec<DriftedResource> = plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rc| {
            let address = rc["address"].as_str()?.to_string();
            let actions: Vec<String> =
                rc["change"]["actions"].as_array()?.iter().filter_map(|a| a.as_str().map(str::to_string)).collect();
            let changes = actions.iter().any(|a| a != "no-op" && a != "read");
            changes.then_some(DriftedResource { address, actions })
        })
        .collect();
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// Before worker `worker`'s report that drift run `run_id` finished is
/// applied, what its plan found is recorded (and a reconcile run queued), so
/// that anyone who sees the run FINISHED sees its findings too. Failures are
/// logged, never the run's: its outcome stands.
pub(crate) async fn before_finish(app: &App, conn: &mut AsyncPgConnection, worker: i64, run_id: i64, to: RunState) {
    if to != RunState::Finished {
        return;
    }
    let run = match hangar_db::runs::get(conn, run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(run_id, error = %e, "cannot read a drift run");
            return;
        }
    };
    if run.kind() != RunKind::Drift || run.state() != RunState::Planning || run.worker_id != Some(worker) {
        return;
    }
    if let Err(e) = record(app, conn, &run).await {
        tracing::error!(run_id = run.id, error = %e, "cannot record what a drift run found");
    }
}

async fn record(app: &App, conn: &mut AsyncPgConnection, run: &RunRow) -> Result<(), String> {
    let plan = crate::workers::plans::open_json(app, conn, run.id).await.map_err(|e| e.to_string())?;
    let Some(plan) = plan else {
        return Err("its worker sent no plan JSON".into());
    };
    let plan: serde_json::Value = serde_json::from_slice(&plan).map_err(|e| format!("its plan JSON does not parse: {e}"))?;
    let found = drifted(&plan);
    let was_drifted = stacks::record_drift(conn, run.stack_id, run.id, &found).await.map_err(|e| e.to_string())?;
    let stack = stacks::stack_by_id(conn, run.stack_id).await.map_err(|e| e.to_string())?.ok_or("its stack is gone")?;
    let target = format!("stack:{}", stack.slug);
    let addresses: Vec<&str> = found.iter().map(|r| r.address.as_str()).collect();
    if !found.is_empty() {
        tracing::warn!(run_id = run.id, stack = %stack.slug, resources = ?addresses, "drift detected");
        let _ = hangar_store::audit::record(conn, "drift", "stack.drift_detected", &target, json!({ "run": run.id, "resources": found }))
            .await
            .map_err(|e| tracing::error!(error = %e, "cannot audit a drift"));
        if stack.drift_reconcile {
            reconcile(conn, &stack, run, "drift", &format!("drift found by run {}", run.id)).await?;
        }
    } else if was_drifted {
        tracing::info!(run_id = run.id, stack = %stack.slug, "no drift any more");
        let _ = hangar_store::audit::record(conn, "drift", "stack.drift_cleared", &target, json!({ "run": run.id }))
            .await
            .map_err(|e| tracing::error!(error = %e, "cannot audit a drift cleared"));
    }
    Ok(())
}

/// Queues a tracked run of the stack at the commit drift run `drift` planned,
/// unless a tracked run of it is under way already (it puts things back as
/// well). Returns the run queued, or the one under way.
pub(crate) async fn reconcile(
    conn: &mut AsyncPgConnection,
    stack: &stacks::StackRow,
    drift: &RunRow,
    actor: &str,
    why: &str,
) -> Result<RunRow, String> {
    if let Some(busy) = hangar_db::runs::active_tracked(conn, stack.id).await.map_err(|e| e.to_string())? {
        tracing::info!(stack = %stack.slug, run_id = busy.id, "a tracked run is under way: no reconcile run queued");
        return Ok(busy);
    }
    let new = NewRun {
        stack_id: stack.id,
        kind: RunKind::Tracked,
        commit_sha: drift.commit_sha.clone(),
        branch: drift.branch.clone(),
        command: None,
        triggered_by: format!("{actor}: {why}"),
    };
    let run = hangar_db::runs::create(conn, &new, actor).await.map_err(|e| e.to_string())?;
    let _ = hangar_store::audit::record(
        conn,
        actor,
        "stack.reconcile",
        &format!("stack:{}", stack.slug),
        json!({ "run": run.id, "drift_run": drift.id, "commit": drift.commit_sha }),
    )
    .await
    .map_err(|e| tracing::error!(error = %e, "cannot audit a reconcile"));
    tracing::info!(stack = %stack.slug, run_id = run.id, drift_run = drift.id, "reconcile run queued");
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resources_a_plan_changes_are_drift() {
        let plan = json!({ "resource_changes": [
            { "address": "b.x", "change": { "actions": ["update"] } },
            { "address": "a.y", "change": { "actions": ["no-op"] } },
            { "address": "data.z.w", "change": { "actions": ["read"] } },
            { "address": "a.v", "change": { "actions": ["delete", "create"] } },
            { "address": 3, "change": { "actions": ["update"] } },
            { "address": "c.u" },
        ]});
        let found = drifted(&plan);
        assert_eq!(found.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(), ["a.v", "b.x"]);
        assert_eq!(found[0].actions, ["delete", "create"]);
        assert!(drifted(&json!({})).is_empty());
        assert!(drifted(&json!({ "resource_changes": "nope" })).is_empty());
    }
}
