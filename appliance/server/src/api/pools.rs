//! Worker pools and workers: readers of a pool's space read them, its admins
//! change them.

use async_graphql::{Context, ID, Object};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use serde_json::json;

use super::stacks::check_slug;
use super::types::{Worker, WorkerPool};
use super::{ApiError, caller, check_in, conn, space_for};
use hangar_store::users::Caller;
use hangar_store::{audit, pools};

#[derive(Default)]
pub struct PoolsQuery;

#[Object]
impl PoolsQuery {
    async fn worker_pools(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkerPool>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = pools::list_pools(&mut c).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|p| caller.sees(p.space_id)).map(WorkerPool).collect())
    }

    /// Workers, of one pool when `pool` is given.
    async fn workers(&self, ctx: &Context<'_>, pool: Option<String>) -> async_graphql::Result<Vec<Worker>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let mut all = pools::list_pools(&mut c).await.map_err(ApiError::from)?;
        all.retain(|p| caller.sees(p.space_id));
        let filter = match &pool {
            None => None,
            Some(name) => Some(all.iter().find(|p| &p.name == name).ok_or_else(|| ApiError::not_found("worker pool", name.clone()))?.id),
        };
        let rows = pools::list_workers(&mut c, filter).await.map_err(ApiError::from)?;
        Ok(rows
            .into_iter()
            .filter(|w| all.iter().any(|p| p.id == w.pool_id))
            .map(|w| {
                let generation = all.iter().find(|p| p.id == w.pool_id).map(|p| p.generation);
                Worker { row: w, pool_generation: generation }
            })
            .collect())
    }
}

#[derive(Default)]
pub struct PoolsMutation;

/// The pool `name`, when `caller` may manage it.
pub(crate) async fn pool_named(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    name: &str,
) -> Result<pools::PoolRow, ApiError> {
    super::gate(caller, Op::ManagePools.role())?;
    let pool = pools::pool_by_name(c, name).await?.ok_or_else(|| ApiError::not_found("worker pool", name))?;
    check_in(caller, pool.space_id, Op::ManagePools.role(), "worker pool", name)?;
    Ok(pool)
}

#[Object]
impl PoolsMutation {
    async fn create_worker_pool(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default)] description: String,
        #[graphql(desc = "The space the pool belongs to, by slug (the root when absent).")] space: Option<String>,
    ) -> async_graphql::Result<WorkerPool> {
        let caller = caller(ctx)?.clone();
        check_slug("name", &name)?;
        if description.chars().count() > 2000 || description.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::invalid("description", "must be at most 2000 characters without control characters").into());
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let space = space_for(c, &caller, space.as_deref(), Op::ManagePools.role()).await?;
                let row = pools::insert_pool(c, &name, &description, space.id).await?;
                audit::record(c, &caller.actor(), "worker_pool.create", &format!("worker_pool:{name}"), json!({ "space": space.slug }))
                    .await?;
                Ok(row)
            })
            .await?;
        Ok(WorkerPool(row))
    }

    /// Deletes a pool and its workers; stacks using it are left without a pool.
    async fn delete_worker_pool(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        c.transaction::<_, ApiError, _>(async move |c| {
            let pool = pool_named(c, &caller, &name).await?;
            pools::delete_pool(c, pool.id).await?;
            audit::record(c, &caller.actor(), "worker_pool.delete", &format!("worker_pool:{name}"), json!({})).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Starts a new generation of the pool: workers that joined before must
    /// join again.
    async fn reset_worker_pool(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<WorkerPool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let pool = pool_named(c, &caller, &name).await?;
                let row = pools::reset_pool(c, pool.id).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "worker_pool.reset",
                    &format!("worker_pool:{name}"),
                    json!({ "generation": row.generation }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(WorkerPool(row))
    }

    /// Refuses a worker from now on.
    async fn revoke_worker(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Worker> {
        let caller = caller(ctx)?.clone();
        let wid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                worker_in_managed_pool(c, &caller, wid).await?;
                let row = pools::revoke_worker(c, wid).await?.ok_or_else(|| ApiError::not_found("worker", wid.to_string()))?;
                audit::record(c, &caller.actor(), "worker.revoke", &format!("worker:{wid}"), json!({ "name": row.name })).await?;
                Ok(row)
            })
            .await?;
        Ok(Worker { row, pool_generation: None })
    }
}

/// Refuses to act on worker `id` unless `caller` may manage its pool.
pub(crate) async fn worker_in_managed_pool(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    id: i64,
) -> Result<pools::WorkerRow, ApiError> {
    super::gate(caller, Op::ManagePools.role())?;
    let missing = || ApiError::not_found("worker", id.to_string());
    let worker = pools::worker_by_id(c, id).await?.ok_or_else(missing)?;
    let pool = pools::pool_by_id(c, worker.pool_id).await?.ok_or_else(missing)?;
    check_in(caller, pool.space_id, Op::ManagePools.role(), "worker", &id.to_string())?;
    Ok(worker)
}
