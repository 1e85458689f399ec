//! `runs.reap`: runs whose worker lease expired. A run lost before applying
//! fails and frees its stack. A run lost while applying is never retried — a
//! second apply could fork the state — it fails with "worker lost during apply"
//! and its stack is marked as needing reconciliation; the state lock is left in
//! place for an operator to inspect.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_db::DbPool;
use hangar_db::queue::JobError;
use hangar_db::runs::{self, TransitionFailure};
use hangar_store::runs::{ExpiredLease, expired_leases};
use hangar_store::{StoreError, stacks};
use hangar_types::RunState;
use tracing::warn;

use super::db_error;

pub(super) async fn handle(pool: &DbPool) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    reap(&mut conn).await.map_err(db_error)?;
    Ok(())
}

/// Why a lost run could not be failed.
enum ReapFailure {
    Transition(TransitionFailure),
    Store(StoreError),
}

impl From<TransitionFailure> for ReapFailure {
    fn from(e: TransitionFailure) -> Self {
        ReapFailure::Transition(e)
    }
}

impl From<StoreError> for ReapFailure {
    fn from(e: StoreError) -> Self {
        ReapFailure::Store(e)
    }
}

impl From<diesel::result::Error> for ReapFailure {
    fn from(e: diesel::result::Error) -> Self {
        ReapFailure::Store(e.into())
    }
}

/// Fails every run whose lease has expired; returns how many.
async fn reap(conn: &mut AsyncPgConnection) -> Result<usize, StoreError> {
    let mut reaped = 0;
    for ExpiredLease { run_id: id, state, stack_id: stack, lease_expires_at: lease } in expired_leases(conn).await? {
        let applying = state == RunState::Applying.as_str();
        let reason = if applying {
            "worker lost during apply: not retried, the stack needs reconciliation".to_string()
        } else {
            format!("worker lost during {state}: its lease expired at {}", lease.map(|l| l.to_rfc3339()).unwrap_or_default())
        };
        let result = conn
            .transaction::<_, ReapFailure, _>(async |c| {
                // Only if still expired and in the same state (a heartbeat may have
                // renewed it since the list was read).
                let run = runs::transition(c, id, Some(&[state.parse().unwrap_or(RunState::Failed)]), RunState::Failed, &reason, "reaper")
                    .await?;
                if applying {
                    stacks::mark_needs_reconciliation(c, stack).await?;
                }
                Ok(run)
            })
            .await;
        match result {
            Ok(_) => {
                reaped += 1;
                warn!(run = id, stack, state, "run failed: worker lost");
            }
            Err(ReapFailure::Transition(TransitionFailure::NotAllowed { .. } | TransitionFailure::NotFound(_))) => {}
            Err(ReapFailure::Transition(TransitionFailure::Db(e))) => return Err(e.into()),
            Err(ReapFailure::Store(e)) => return Err(e),
        }
    }
    Ok(reaped)
}
