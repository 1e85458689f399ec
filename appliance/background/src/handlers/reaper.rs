//! `runs.reap`: runs whose worker lease expired. A run lost before applying
//! fails and frees its stack. A run lost while applying is never retried — a
//! second apply could fork the state — it fails with "worker lost during apply"
//! and its stack is marked as needing reconciliation; the state lock is left in
//! place for an operator to inspect.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use hangar_db::DbPool;
use hangar_db::queue::JobError;
use hangar_db::runs::{self, TransitionFailure};
use hangar_db::schema::{runs as runs_t, stacks};
use hangar_types::RunState;
use tracing::warn;

use super::db_error;

pub(super) async fn handle(pool: &DbPool) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    reap(&mut conn).await.map_err(db_error)?;
    Ok(())
}

/// Fails every run whose lease has expired; returns how many.
async fn reap(conn: &mut hangar_db::AsyncPgConnection) -> Result<usize, hangar_db::DbError> {
    let on_worker: Vec<&str> = RunState::ALL.iter().filter(|s| s.is_on_worker()).map(|s| s.as_str()).collect();
    let expired: Vec<(i64, String, i64, Option<DateTime<Utc>>)> = runs_t::table
        .filter(runs_t::state.eq_any(&on_worker))
        .filter(runs_t::lease_expires_at.lt(diesel::dsl::now))
        .select((runs_t::id, runs_t::state, runs_t::stack_id, runs_t::lease_expires_at))
        .load(conn)
        .await?;
    let mut reaped = 0;
    for (id, state, stack, lease) in expired {
        let applying = state == RunState::Applying.as_str();
        let reason = if applying {
            "worker lost during apply: not retried, the stack needs reconciliation".to_string()
        } else {
            format!("worker lost during {state}: its lease expired at {}", lease.map(|l| l.to_rfc3339()).unwrap_or_default())
        };
        let result = conn
            .transaction::<_, TransitionFailure, _>(async |c| {
                // Only if still expired and in the same state (a heartbeat may have
                // renewed it since the list was read).
                let run = runs::transition(c, id, Some(&[state.parse().unwrap_or(RunState::Failed)]), RunState::Failed, &reason, "reaper")
                    .await?;
                if applying {
                    diesel::update(stacks::table.filter(stacks::id.eq(stack)))
                        .set(stacks::needs_reconciliation.eq(true))
                        .execute(c)
                        .await?;
                }
                Ok(run)
            })
            .await;
        match result {
            Ok(_) => {
                reaped += 1;
                warn!(run = id, stack, state, "run failed: worker lost");
            }
            Err(TransitionFailure::NotAllowed { .. } | TransitionFailure::NotFound(_)) => {}
            Err(TransitionFailure::Db(e)) => return Err(e),
        }
    }
    Ok(reaped)
}
