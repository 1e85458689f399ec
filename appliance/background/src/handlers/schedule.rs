//! `run.schedule`: promotes a stack's queued runs that may go (see
//! `hangar_db::runs::schedule_stack`); the run transitions announce READY runs to
//! their pool's workers.

use hangar_db::DbPool;
use hangar_db::jobs::StackRef;
use hangar_db::queue::JobError;
use hangar_db::runs;
use tracing::info;

use super::db_error;

pub(super) async fn handle(pool: &DbPool, StackRef { stack }: StackRef) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    let ready = runs::schedule_stack(&mut conn, stack, "drain").await.map_err(db_error)?;
    for r in &ready {
        info!(run = r.id, stack, kind = %r.kind, "run is ready");
    }
    Ok(())
}
