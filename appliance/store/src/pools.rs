//! Worker pools and the workers registered in them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{worker_pools, workers};

use crate::StoreError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = worker_pools)]
pub struct PoolRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub generation: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub space_id: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = workers)]
pub struct WorkerRow {
    pub id: i64,
    pub pool_id: i64,
    pub name: String,
    pub pool_generation: i32,
    pub cert_serial: String,
    pub cert_not_after: DateTime<Utc>,
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list_pools(conn: &mut AsyncPgConnection) -> Result<Vec<PoolRow>, StoreError> {
    Ok(worker_pools::table.order(worker_pools::name.asc()).select(PoolRow::as_select()).load(conn).await?)
}

pub async fn pool_by_name(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<PoolRow>, StoreError> {
    Ok(worker_pools::table.filter(worker_pools::name.eq(name)).select(PoolRow::as_select()).first(conn).await.optional()?)
}

pub async fn pool_by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<PoolRow>, StoreError> {
    Ok(worker_pools::table.find(id).select(PoolRow::as_select()).first(conn).await.optional()?)
}

pub async fn insert_pool(
    conn: &mut AsyncPgConnection,
    name: &str,
    description: &str,
    space: i64,
) -> Result<PoolRow, StoreError> {
    Ok(diesel::insert_into(worker_pools::table)
        .values((worker_pools::name.eq(name), worker_pools::description.eq(description), worker_pools::space_id.eq(space)))
        .returning(PoolRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete_pool(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    Ok(diesel::delete(worker_pools::table.find(id)).execute(conn).await? == 1)
}

/// Bumps the pool's generation: credentials issued for an older generation are
/// refused from then on.
pub async fn reset_pool(conn: &mut AsyncPgConnection, id: i64) -> Result<PoolRow, StoreError> {
    Ok(diesel::update(worker_pools::table.find(id))
        .set((worker_pools::generation.eq(worker_pools::generation + 1), worker_pools::updated_at.eq(diesel::dsl::now)))
        .returning(PoolRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn list_workers(
    conn: &mut AsyncPgConnection,
    pool_id: Option<i64>,
) -> Result<Vec<WorkerRow>, StoreError> {
    let mut q = workers::table.order(workers::id.asc()).select(WorkerRow::as_select()).into_boxed();
    if let Some(p) = pool_id {
        q = q.filter(workers::pool_id.eq(p));
    }
    Ok(q.load(conn).await?)
}

pub async fn revoke_worker(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<WorkerRow>, StoreError> {
    Ok(diesel::update(workers::table.find(id))
        .set((workers::revoked_at.eq(diesel::dsl::now), workers::status.eq("offline")))
        .returning(WorkerRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

pub async fn worker_by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<WorkerRow>, StoreError> {
    Ok(workers::table.find(id).select(WorkerRow::as_select()).first(conn).await.optional()?)
}
