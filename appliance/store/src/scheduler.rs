//! The scheduler's state: its entries (`scheduler_entries`), each tick moved
//! forward with a compare-and-set, and leadership, a PostgreSQL advisory lock
//! held by one connection.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::scheduler_entries;

use crate::StoreError;

/// Advisory lock key of scheduler leadership (a constant unique to this purpose).
const LEADER_LOCK: i64 = 0x4841_4e47_4152_0002;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes leadership on `conn` if nobody holds it; it lasts as long as the
/// connection does.
pub async fn try_lead(conn: &mut AsyncPgConnection) -> Result<bool, StoreError> {
    let Locked { locked } = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(LEADER_LOCK)
        .get_result(conn)
        .await?;
    Ok(locked)
}

/// Whether the connection holding leadership still answers.
pub async fn still_connected(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    diesel::sql_query("SELECT 1::bigint AS one").execute(conn).await?;
    Ok(())
}

/// When entry `name` last fired: `None` for an entry never seen.
pub async fn last_fire(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
    Ok(scheduler_entries::table
        .filter(scheduler_entries::name.eq(name))
        .select(scheduler_entries::last_fire_at)
        .get_result(conn)
        .await
        .optional()?)
}

/// Remembers when an entry was first seen, so it fires from its next occurrence.
pub async fn record_start(
    conn: &mut AsyncPgConnection,
    name: &str,
    schedule: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::insert_into(scheduler_entries::table)
        .values((
            scheduler_entries::name.eq(name),
            scheduler_entries::schedule.eq(schedule),
            scheduler_entries::last_fire_at.eq(at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves entry `name`'s last tick from `last` to `at`, fired by `by`; false
/// when another scheduler moved it first.
pub async fn advance(
    conn: &mut AsyncPgConnection,
    name: &str,
    schedule: &str,
    last: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    by: &str,
) -> Result<bool, StoreError> {
    let moved = diesel::update(
        scheduler_entries::table
            .filter(scheduler_entries::name.eq(name))
            .filter(scheduler_entries::last_fire_at.is_not_distinct_from(last)),
    )
    .set((
        scheduler_entries::last_fire_at.eq(at),
        scheduler_entries::last_fired_by.eq(by),
        scheduler_entries::fires.eq(scheduler_entries::fires + 1),
        scheduler_entries::schedule.eq(schedule),
    ))
    .execute(conn)
    .await?;
    Ok(moved == 1)
}
