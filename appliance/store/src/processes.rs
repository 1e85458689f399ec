//! Heartbeats of the appliance's processes (`processes`): each keeps its row
//! fresh, so readiness checks, the API and operators can see who is alive and
//! who leads.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::processes;

use crate::StoreError;

/// One heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// `<kind>@<host>:<pid>`.
    pub id: &'a str,
    pub kind: &'a str,
    pub hostname: &'a str,
    pub pid: i32,
    pub version: &'a str,
    pub leader: bool,
}

/// Creates or refreshes the process's row.
pub async fn beat(conn: &mut AsyncPgConnection, b: &Beat<'_>) -> Result<(), StoreError> {
    diesel::insert_into(processes::table)
        .values((
            processes::id.eq(b.id),
            processes::kind.eq(b.kind),
            processes::hostname.eq(b.hostname),
            processes::pid.eq(b.pid),
            processes::version.eq(b.version),
            processes::leader.eq(b.leader),
        ))
        .on_conflict(processes::id)
        .do_update()
        .set((processes::last_seen_at.eq(diesel::dsl::now), processes::leader.eq(b.leader)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes the row of a process that is stopping.
pub async fn forget(conn: &mut AsyncPgConnection, id: &str) -> Result<(), StoreError> {
    diesel::delete(processes::table.filter(processes::id.eq(id))).execute(conn).await?;
    Ok(())
}

/// Removes the rows of processes silent since `before`; returns how many.
pub async fn forget_silent_since(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, StoreError> {
    Ok(diesel::delete(processes::table.filter(processes::last_seen_at.lt(before))).execute(conn).await?)
}
