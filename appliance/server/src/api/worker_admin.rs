//! Admin mutations for the worker protocol: join tokens (shown once) and the
//! drain flag a worker reads in every heartbeat reply.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use hangar_db::schema::workers;
use serde_json::json;

use super::types::Worker;
use super::pools::{pool_named, worker_in_managed_pool};
use super::{ApiError, caller, conn};
use hangar_store::{audit, pools};
use crate::workers::join::{self, JoinTokenError};

/// A join token, shown this once.
#[derive(SimpleObject)]
pub struct JoinToken {
    /// `hjt_…`: give it to `hangar-worker join --token`.
    token: String,
    pool: String,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct WorkerAdminMutation;

impl From<JoinTokenError> for ApiError {
    fn from(e: JoinTokenError) -> Self {
        match e {
            JoinTokenError::NoSuchPool { pool } => ApiError::not_found("worker pool", pool),
            e @ JoinTokenError::BadTtl { .. } => ApiError::invalid("ttlMinutes", e.to_string()),
            JoinTokenError::Query(q) => ApiError::from(q),
            JoinTokenError::Store(s) => ApiError::from(s),
        }
    }
}

async fn set_drained(ctx: &Context<'_>, id: &ID, drained: bool) -> async_graphql::Result<Worker> {
    let caller = caller(ctx)?.clone();
    let wid = super::id(id, "id")?;
    let mut c = conn(ctx).await?;
    let row = c
        .transaction::<_, ApiError, _>(async move |c| {
            worker_in_managed_pool(c, &caller, wid).await?;
            // The status follows at once; the worker's next heartbeat keeps it.
            let status = if drained { "drained" } else { "idle" };
            let n = diesel::update(workers::table.find(wid))
                .set((workers::drained.eq(drained), workers::status.eq(status)))
                .execute(c)
                .await?;
            if n == 0 {
                return Err(ApiError::not_found("worker", wid.to_string()));
            }
            let action = if drained { "worker.drain" } else { "worker.undrain" };
            audit::record(c, &caller.actor(), action, &format!("worker:{wid}"), json!({})).await?;
            let row = pools::list_workers(c, None)
                .await?
                .into_iter()
                .find(|w| w.id == wid)
                .ok_or_else(|| ApiError::not_found("worker", wid.to_string()))?;
            Ok(row)
        })
        .await?;
    Ok(Worker { row, pool_generation: None })
}

#[Object]
impl WorkerAdminMutation {
    /// A one-time token with which one worker host joins `pool`.
    async fn create_join_token(
        &self,
        ctx: &Context<'_>,
        pool: String,
        #[graphql(default = 60)] ttl_minutes: i32,
    ) -> async_graphql::Result<JoinToken> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        pool_named(&mut c, &caller, &pool).await?;
        let made = join::create_join_token(&mut c, &pool, i64::from(ttl_minutes), &caller.actor())
            .await
            .map_err(ApiError::from)?;
        Ok(JoinToken { token: made.token.expose().to_string(), pool, expires_at: made.expires_at })
    }

    /// The worker finishes what it holds and claims nothing new.
    async fn drain_worker(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Worker> {
        set_drained(ctx, &id, true).await
    }

    /// The worker claims runs again.
    async fn undrain_worker(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Worker> {
        set_drained(ctx, &id, false).await
    }
}
