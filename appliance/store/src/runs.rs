//! Reading runs for the API. Every change of a run's state goes through
//! `hangar_db::runs`, never through here.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::runs::RunRow;
use hangar_db::schema::runs;

/// Newest first, `limit` runs of a stack older than `before` (a run id).
pub async fn list_for_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<RunRow>, diesel::result::Error> {
    let mut q = runs::table
        .filter(runs::stack_id.eq(stack_id))
        .order(runs::id.desc())
        .limit(limit)
        .select(RunRow::as_select())
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(runs::id.lt(b));
    }
    q.load(conn).await
}

/// What a run's worker reported beyond its state: the plan's change summary
/// (JSON of `hangar_types::worker::Changes`) and whether an errored state was
/// stored. `None` when the run does not exist.
pub async fn outcome(
    conn: &mut AsyncPgConnection,
    run: i64,
) -> Result<Option<(Option<serde_json::Value>, bool)>, diesel::result::Error> {
    runs::table
        .find(run)
        .select((runs::changes, runs::errored_state_key.is_not_null()))
        .first(conn)
        .await
        .optional()
}
