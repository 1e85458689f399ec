//! Worker pools and workers: everyone reads them, admins change them.

use async_graphql::{Context, ID, Object};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use serde_json::json;

use super::stacks::check_slug;
use super::types::{Worker, WorkerPool};
use super::{ApiError, conn, require};
use hangar_store::{audit, pools};

#[derive(Default)]
pub struct PoolsQuery;

#[Object]
impl PoolsQuery {
    async fn worker_pools(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkerPool>> {
        require(ctx, Op::Read.role())?;
        let mut c = conn(ctx).await?;
        Ok(pools::list_pools(&mut c).await.map_err(ApiError::from)?.into_iter().map(WorkerPool).collect())
    }

    /// Workers, of one pool when `pool` is given.
    async fn workers(&self, ctx: &Context<'_>, pool: Option<String>) -> async_graphql::Result<Vec<Worker>> {
        require(ctx, Op::Read.role())?;
        let mut c = conn(ctx).await?;
        let all = pools::list_pools(&mut c).await.map_err(ApiError::from)?;
        let filter = match &pool {
            None => None,
            Some(name) => Some(all.iter().find(|p| &p.name == name).ok_or_else(|| ApiError::not_found("worker pool", name.clone()))?.id),
        };
        let rows = pools::list_workers(&mut c, filter).await.map_err(ApiError::from)?;
        Ok(rows
            .into_iter()
            .map(|w| {
                let generation = all.iter().find(|p| p.id == w.pool_id).map(|p| p.generation);
                Worker { row: w, pool_generation: generation }
            })
            .collect())
    }
}

#[derive(Default)]
pub struct PoolsMutation;

async fn pool_named(c: &mut diesel_async::AsyncPgConnection, name: &str) -> Result<pools::PoolRow, ApiError> {
    pools::pool_by_name(c, name).await?.ok_or_else(|| ApiError::not_found("worker pool", name))
}

#[Object]
impl PoolsMutation {
    async fn create_worker_pool(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default)] description: String,
    ) -> async_graphql::Result<WorkerPool> {
        let caller = require(ctx, Op::ManagePools.role())?.clone();
        check_slug("name", &name)?;
        if description.chars().count() > 2000 || description.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::invalid("description", "must be at most 2000 characters without control characters").into());
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let row = pools::insert_pool(c, &name, &description).await?;
                audit::record(c, &caller.actor(), "worker_pool.create", &format!("worker_pool:{name}"), json!({})).await?;
                Ok(row)
            })
            .await?;
        Ok(WorkerPool(row))
    }

    /// Deletes a pool and its workers; stacks using it are left without a pool.
    async fn delete_worker_pool(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<bool> {
        let caller = require(ctx, Op::ManagePools.role())?.clone();
        let mut c = conn(ctx).await?;
        c.transaction::<_, ApiError, _>(async move |c| {
            let pool = pool_named(c, &name).await?;
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
        let caller = require(ctx, Op::ManagePools.role())?.clone();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let pool = pool_named(c, &name).await?;
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
        let caller = require(ctx, Op::ManagePools.role())?.clone();
        let wid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let row = pools::revoke_worker(c, wid).await?.ok_or_else(|| ApiError::not_found("worker", wid.to_string()))?;
                audit::record(c, &caller.actor(), "worker.revoke", &format!("worker:{wid}"), json!({ "name": row.name })).await?;
                Ok(row)
            })
            .await?;
        Ok(Worker { row, pool_generation: None })
    }
}
