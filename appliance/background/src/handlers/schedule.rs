//! `run.schedule`: promotes a stack's queued runs that may go (see
//! `hangar_db::runs::schedule_stack`); the run transitions announce READY runs to
//! their pool's workers.

use std::sync::Arc;

use hangar_db::DbPool;
use hangar_db::queue::{JobHandler, handler_fn};
use hangar_db::runs;
use tracing::info;

use super::{db_error, field};

pub const SCHEDULE: &str = runs::SCHEDULE_JOB;

pub fn handler(pool: DbPool) -> Arc<dyn JobHandler> {
    handler_fn(move |job| {
        let pool = pool.clone();
        async move {
            let stack: i64 = field(&job.payload, "stack")?;
            let mut conn = pool.get().await.map_err(db_error)?;
            let ready = runs::schedule_stack(&mut conn, stack, "drain").await.map_err(db_error)?;
            for r in &ready {
                info!(run = r.id, stack, kind = %r.kind, "run is ready");
            }
            Ok(())
        }
    })
}
