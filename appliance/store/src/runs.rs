//! Reading runs: for the API, and what the drain asks before it acts (leases
//! that expired, the commit last applied, a live run at a commit). Every change
//! of a run's state goes through `hangar_db::runs`, never through here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::runs::RunRow;
use hangar_db::schema::runs;
use hangar_types::{RunKind, RunState};

use crate::StoreError;

/// Newest first, `limit` runs of a stack older than `before` (a run id).
pub async fn list_for_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<RunRow>, StoreError> {
    let mut q = runs::table
        .filter(runs::stack_id.eq(stack_id))
        .order(runs::id.desc())
        .limit(limit)
        .select(RunRow::as_select())
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(runs::id.lt(b));
    }
    Ok(q.load(conn).await?)
}

/// What a run's worker reported beyond its state: the plan's change summary
/// (JSON of `hangar_types::worker::Changes`) and whether an errored state was
/// stored. `None` when the run does not exist.
pub async fn outcome(
    conn: &mut AsyncPgConnection,
    run: i64,
) -> Result<Option<(Option<serde_json::Value>, bool)>, StoreError> {
    Ok(runs::table
        .find(run)
        .select((runs::changes, runs::errored_state_key.is_not_null()))
        .first(conn)
        .await
        .optional()?)
}

/// A run whose worker lease ran out.
#[derive(Debug, Clone, Queryable)]
pub struct ExpiredLease {
    pub run_id: i64,
    pub state: String,
    pub stack_id: i64,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// Runs on a worker whose lease has expired.
pub async fn expired_leases(conn: &mut AsyncPgConnection) -> Result<Vec<ExpiredLease>, StoreError> {
    let on_worker: Vec<&str> = RunState::ALL.iter().filter(|s| s.is_on_worker()).map(|s| s.as_str()).collect();
    Ok(runs::table
        .filter(runs::state.eq_any(&on_worker))
        .filter(runs::lease_expires_at.lt(diesel::dsl::now))
        .select((runs::id, runs::state, runs::stack_id, runs::lease_expires_at))
        .load(conn)
        .await?)
}

/// The run of `stack` triggered by `triggered_by`, if one was made.
pub async fn triggered_by(conn: &mut AsyncPgConnection, stack: i64, triggered_by: &str) -> Result<Option<i64>, StoreError> {
    Ok(runs::table
        .filter(runs::stack_id.eq(stack))
        .filter(runs::triggered_by.eq(triggered_by))
        .select(runs::id)
        .first(conn)
        .await
        .optional()?)
}

/// The commit of `stack`'s newest tracked run, finished ones only when
/// `finished`: the commit last applied.
pub async fn last_tracked_commit(
    conn: &mut AsyncPgConnection,
    stack: i64,
    finished: bool,
) -> Result<Option<String>, StoreError> {
    let mut q = runs::table
        .filter(runs::stack_id.eq(stack))
        .filter(runs::kind.eq(RunKind::Tracked.as_str()))
        .order(runs::id.desc())
        .select(runs::commit_sha)
        .into_boxed();
    if finished {
        q = q.filter(runs::state.eq(RunState::Finished.as_str()));
    }
    Ok(q.first(conn).await.optional()?)
}

/// A live (not terminal) run of `kind` on `stack` at commit `sha`.
pub async fn live_run_at(
    conn: &mut AsyncPgConnection,
    stack: i64,
    kind: RunKind,
    sha: &str,
) -> Result<Option<i64>, StoreError> {
    let terminal: Vec<&str> = RunState::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect();
    Ok(runs::table
        .filter(runs::stack_id.eq(stack))
        .filter(runs::kind.eq(kind.as_str()))
        .filter(runs::commit_sha.eq(sha))
        .filter(runs::state.ne_all(terminal))
        .select(runs::id)
        .first(conn)
        .await
        .optional()?)
}
