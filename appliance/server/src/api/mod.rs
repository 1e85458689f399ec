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
//!
//! Roles hold per space (see `hangar_store::spaces`): what belongs to a space
//! is read and changed with the caller's role there. A thing in a space the
//! caller cannot see is answered as if it did not exist, and lists leave it
//! out, so not even its name shows. Users, the audit trail, dead jobs,
//! upgrades and the host need the role held in the root.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod bundles;
pub(crate) mod policies;
pub(crate) mod cost;
mod error;
pub(crate) mod modules;
pub(crate) mod pools;
pub(crate) mod runs;
pub(crate) mod spaces;
pub(crate) mod stacks;
pub(crate) mod types;
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

/// The caller, who must hold at least `role` in the root space (and so
/// everywhere): for what belongs to no space.
pub(crate) fn require<'a>(ctx: &Context<'a>, role: Role) -> Result<&'a Caller, ApiError> {
    let c = caller(ctx)?;
    if c.global().allows(role) { Ok(c) } else { Err(ApiError::Forbidden { needed: role }) }
}

/// The authenticated caller, whatever their roles.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> Result<&'a Caller, ApiError> {
    ctx.data_opt::<Identity>().and_then(|i| i.0.as_ref()).ok_or(ApiError::Unauthenticated)
}

/// Refuses at once a caller who holds `needed` in no space at all: nothing
/// is looked up for them, and they learn nothing of what exists.
pub(crate) fn gate(caller: &Caller, needed: Role) -> Result<(), ApiError> {
    if caller.access.best().allows(needed) { Ok(()) } else { Err(ApiError::Forbidden { needed }) }
}

/// Checks that `caller` may do what needs `needed` in `space`, to the thing
/// `what` named `key` there: one the caller cannot see does not exist.
pub(crate) fn check_in(caller: &Caller, space: i64, needed: Role, what: &'static str, key: &str) -> Result<(), ApiError> {
    if !caller.sees(space) {
        Err(ApiError::not_found(what, key))
    } else if !caller.may(space, needed) {
        Err(ApiError::Forbidden { needed })
    } else {
        Ok(())
    }
}

/// The stack `slug`, when `caller` holds `needed` in its space.
pub(crate) async fn stack_for(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    slug: &str,
    needed: Role,
) -> Result<hangar_store::stacks::StackRow, ApiError> {
    gate(caller, needed)?;
    let stack = hangar_store::stacks::stack_by_slug(c, slug).await?.ok_or_else(|| ApiError::not_found("stack", slug))?;
    check_in(caller, stack.space_id, needed, "stack", slug)?;
    Ok(stack)
}

/// The context `slug`, when `caller` holds `needed` in its space.
pub(crate) async fn context_for(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    slug: &str,
    needed: Role,
) -> Result<hangar_store::stacks::ContextRow, ApiError> {
    gate(caller, needed)?;
    let context =
        hangar_store::stacks::context_by_slug(c, slug).await?.ok_or_else(|| ApiError::not_found("context", slug))?;
    check_in(caller, context.space_id, needed, "context", slug)?;
    Ok(context)
}

/// The space `slug` names (the root when `None`), when `caller` holds
/// `needed` there.
pub(crate) async fn space_for(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    slug: Option<&str>,
    needed: Role,
) -> Result<hangar_store::spaces::SpaceRow, ApiError> {
    gate(caller, needed)?;
    let slug = slug.unwrap_or(hangar_store::spaces::ROOT_SLUG);
    let space = hangar_store::spaces::space_by_slug(c, slug).await?.ok_or_else(|| ApiError::not_found("space", slug))?;
    check_in(caller, space.id, needed, "space", slug)?;
    Ok(space)
}

/// Refuses to let something of space `used` serve a stack (or a space's
/// thing) in `user`: only what belongs to the same space or one above it may.
pub(crate) async fn check_usable(
    c: &mut diesel_async::AsyncPgConnection,
    what: &'static str,
    name: &str,
    used: i64,
    user: i64,
) -> Result<(), ApiError> {
    if used == user || hangar_store::spaces::ancestors(c, user).await?.contains(&used) {
        Ok(())
    } else {
        Err(ApiError::Refused(format!("{what} {name} belongs to another branch of the space tree: only what belongs to the same space or one above it may be used")))
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
