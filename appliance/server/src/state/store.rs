//! The state backend's rows: one lock per stack, and every accepted state
//! version with the object that holds it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{runs, stacks, state_locks, state_versions};
use hangar_types::RunState;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = state_locks)]
pub struct LockRow {
    pub lock_id: String,
    /// Terraform's LockInfo JSON as its client sent it.
    pub info: String,
    pub run_id: Option<i64>,
    pub user_id: Option<i64>,
    pub held_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = state_versions)]
pub struct VersionRow {
    pub id: i64,
    pub stack_id: i64,
    pub serial: i64,
    pub lineage: String,
    pub md5: String,
    pub size: i64,
    pub object_key: String,
    pub data_key_id: i64,
    pub run_id: Option<i64>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// Who takes a lock or writes a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub run_id: Option<i64>,
    pub user_id: Option<i64>,
    /// As shown in the API and in Terraform's lock messages.
    pub label: String,
}

impl Writer {
    /// Whether `lock` was taken by this same run, or by this same user.
    pub fn holds(&self, lock: &LockRow) -> bool {
        match (self.run_id, self.user_id) {
            (Some(run), _) => lock.run_id == Some(run),
            (None, Some(user)) => lock.run_id.is_none() && lock.user_id == Some(user),
            (None, None) => false,
        }
    }
}

pub struct NewVersion<'a> {
    pub stack_id: i64,
    pub serial: i64,
    pub lineage: &'a str,
    pub md5: &'a str,
    pub size: i64,
    pub object_key: &'a str,
    pub data_key_id: i64,
    pub writer: &'a Writer,
}

/// Drops the lock of `stack_id` when the run holding it is over — unless the
/// stack awaits reconciliation (an apply lost its worker): that lock stays
/// visible until an operator removes it. Returns the lock removed.
pub async fn release_if_stale(conn: &mut AsyncPgConnection, stack_id: i64) -> QueryResult<Option<LockRow>> {
    let terminal: Vec<&str> = RunState::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect();
    let finished_runs = runs::table.filter(runs::state.eq_any(terminal)).select(runs::id.nullable());
    let reconciling = stacks::table.filter(stacks::id.eq(stack_id)).filter(stacks::needs_reconciliation);
    diesel::delete(
        state_locks::table
            .filter(state_locks::stack_id.eq(stack_id))
            .filter(state_locks::run_id.eq_any(finished_runs))
            .filter(diesel::dsl::not(diesel::dsl::exists(reconciling))),
    )
    .returning(LockRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Takes the lock of `stack_id` when nobody holds it, in one statement: of any
/// number of concurrent callers exactly one gets `true`.
pub async fn try_lock(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    lock_id: &str,
    info: &str,
    writer: &Writer,
) -> QueryResult<bool> {
    let n = diesel::insert_into(state_locks::table)
        .values((
            state_locks::stack_id.eq(stack_id),
            state_locks::lock_id.eq(lock_id),
            state_locks::info.eq(info),
            state_locks::run_id.eq(writer.run_id),
            state_locks::user_id.eq(writer.user_id),
            state_locks::held_by.eq(&writer.label),
        ))
        .on_conflict(state_locks::stack_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn current_lock(conn: &mut AsyncPgConnection, stack_id: i64) -> QueryResult<Option<LockRow>> {
    state_locks::table.find(stack_id).select(LockRow::as_select()).first(conn).await.optional()
}

/// Removes the lock of `stack_id` when its id is `lock_id`.
pub async fn unlock(conn: &mut AsyncPgConnection, stack_id: i64, lock_id: &str) -> QueryResult<bool> {
    let n = diesel::delete(state_locks::table.filter(state_locks::stack_id.eq(stack_id)).filter(state_locks::lock_id.eq(lock_id)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn latest_version(conn: &mut AsyncPgConnection, stack_id: i64) -> QueryResult<Option<VersionRow>> {
    state_versions::table
        .filter(state_versions::stack_id.eq(stack_id))
        .order(state_versions::id.desc())
        .select(VersionRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn version(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<VersionRow>> {
    state_versions::table.find(id).select(VersionRow::as_select()).first(conn).await.optional()
}

/// Newest first, at most `limit`.
pub async fn list_versions(conn: &mut AsyncPgConnection, stack_id: i64, limit: i64) -> QueryResult<Vec<VersionRow>> {
    state_versions::table
        .filter(state_versions::stack_id.eq(stack_id))
        .order(state_versions::id.desc())
        .limit(limit)
        .select(VersionRow::as_select())
        .load(conn)
        .await
}

pub async fn insert_version(conn: &mut AsyncPgConnection, new: &NewVersion<'_>) -> QueryResult<VersionRow> {
    diesel::insert_into(state_versions::table)
        .values((
            state_versions::stack_id.eq(new.stack_id),
            state_versions::serial.eq(new.serial),
            state_versions::lineage.eq(new.lineage),
            state_versions::md5.eq(new.md5),
            state_versions::size.eq(new.size),
            state_versions::object_key.eq(new.object_key),
            state_versions::data_key_id.eq(new.data_key_id),
            state_versions::run_id.eq(new.writer.run_id),
            state_versions::user_id.eq(new.writer.user_id),
            state_versions::created_by.eq(&new.writer.label),
        ))
        .returning(VersionRow::as_returning())
        .get_result(conn)
        .await
}

/// Holds the stack's row for the rest of the transaction, so writes to one
/// stack's state are checked and stored one at a time.
pub async fn hold_stack(conn: &mut AsyncPgConnection, stack_id: i64) -> QueryResult<bool> {
    let found: Option<i64> =
        stacks::table.find(stack_id).select(stacks::id).for_update().first(conn).await.optional()?;
    Ok(found.is_some())
}

/// The kind of run `run_id` (as stored).
pub async fn run_kind(conn: &mut AsyncPgConnection, run_id: i64) -> QueryResult<Option<String>> {
    runs::table.find(run_id).select(runs::kind).first(conn).await.optional()
}
