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
