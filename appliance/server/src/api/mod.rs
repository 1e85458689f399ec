//! The GraphQL API's resolvers and what they share: who is asking, what they
//! may do, and the errors they see. The schema that merges the resolvers of
//! this module, of the state backend and of run logs is assembled in
//! `crate::graphql`.
//!
//! Authorization is checked in every resolver of the two root types; nested
//! objects are reachable only through them. Roles: a reader reads everything
//! but secret values (which nobody reads back) and changes nothing; a writer
//! manages stacks, contexts, variables and runs; an admin also manages users,
//! others' API keys, worker pools and workers. A caller without a token may
//! only log in.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod bundles;
pub(crate) mod policies;
pub(crate) mod cost;
mod error;
pub(crate) mod modules;
pub(crate) mod pools;
pub(crate) mod runs;
pub(crate) mod stacks;
mod types;
pub(crate) mod variables;
pub(crate) mod vcs;
pub(crate) mod worker_admin;

use std::sync::Arc;

use async_graphql::Context;
use hangar_db::PooledConn;
use hangar_types::Role;

pub use auth::{LoginGate, Source};
pub use error::ApiError;

use crate::App;
use hangar_store::users::Caller;

/// Request data: the authenticated caller, when there is one.
#[derive(Debug, Clone)]
pub struct Identity(pub Option<Caller>);

/// Request data: every worker pool by id, loaded once on first use. A list of
/// stacks asking for their pools costs one query, not one per stack.
#[derive(Debug, Default)]
pub struct PoolDirectory(tokio::sync::OnceCell<std::collections::HashMap<i64, hangar_store::pools::PoolRow>>);

impl PoolDirectory {
    pub(crate) async fn get(&self, ctx: &Context<'_>, id: i64) -> Result<Option<hangar_store::pools::PoolRow>, ApiError> {
        let pools = self
            .0
            .get_or_try_init(|| async {
                let mut c = conn(ctx).await?;
                let all = hangar_store::pools::list_pools(&mut c).await?;
                Ok::<_, ApiError>(all.into_iter().map(|p| (p.id, p)).collect())
            })
            .await?;
        Ok(pools.get(&id).cloned())
    }
}

pub(crate) fn app<'a>(ctx: &Context<'a>) -> &'a App {
    ctx.data_unchecked::<Arc<App>>()
}

/// The caller, who must hold at least `role`.
pub(crate) fn require<'a>(ctx: &Context<'a>, role: Role) -> Result<&'a Caller, ApiError> {
    match ctx.data_opt::<Identity>().and_then(|i| i.0.as_ref()) {
        None => Err(ApiError::Unauthenticated),
        Some(c) if c.role.allows(role) => Ok(c),
        Some(_) => Err(ApiError::Forbidden { needed: role }),
    }
}

pub(crate) async fn conn(ctx: &Context<'_>) -> Result<PooledConn, ApiError> {
    app(ctx).db.get().await.map_err(|e| ApiError::Unavailable(hangar_types::error_chain(&e)))
}

/// Parses an `ID` argument.
pub(crate) fn id(value: &async_graphql::ID, what: &'static str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::Invalid { field: what, problem: "is not a valid id".into() })
}
