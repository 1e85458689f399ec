//! The state backend in the GraphQL API: stored versions and the lock of a
//! stack, an operator's force-unlock, and importing an existing state as a
//! stack's first version.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;

use super::store::{self, LockRow, VersionRow};
use super::{Principal, StateError, WriteMode, Written};
use crate::api::{ApiError, app, caller, conn, stack_for};
use hangar_store::users::Caller;
use hangar_store::audit;

/// One stored version of a stack's Terraform state.
#[derive(SimpleObject)]
pub struct StateVersion {
    pub id: ID,
    pub serial: i64,
    pub lineage: String,
    /// Bytes of the state JSON.
    pub size: i64,
    /// Hex MD5 of the state JSON.
    pub md5: String,
    /// The run that wrote it, when a run did.
    pub run_id: Option<ID>,
    /// "run 12", or the user (and API key) that wrote or imported it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<VersionRow> for StateVersion {
    fn from(v: VersionRow) -> Self {
        StateVersion {
            id: ID(v.id.to_string()),
            serial: v.serial,
            lineage: v.lineage,
            size: v.size,
            md5: v.md5,
            run_id: v.run_id.map(|r| ID(r.to_string())),
            created_by: v.created_by,
            created_at: v.created_at,
        }
    }
}

/// The lock on a stack's state, as Terraform took it: who holds it, for which
/// run, and since when. Terraform 1.0.3 prints only the lock's ID when it
/// finds the state locked; this is where the rest is.
#[derive(SimpleObject)]
pub struct StateLock {
    pub lock_id: String,
    /// The holder as Hangar knows it: "run 12", or the user (and API key).
    pub held_by: String,
    /// The run holding the lock, when a run does.
    pub run_id: Option<ID>,
    /// Terraform's own account: the operation, and who ran it on which host.
    pub operation: String,
    pub who: String,
    /// When the lock was taken.
    pub created_at: DateTime<Utc>,
}

impl From<LockRow> for StateLock {
    fn from(l: LockRow) -> Self {
        let info: serde_json::Value = serde_json::from_str(&l.info).unwrap_or_default();
        let field = |k: &str| info.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        StateLock {
            operation: field("Operation"),
            who: field("Who"),
            lock_id: l.lock_id,
            held_by: l.held_by,
            run_id: l.run_id.map(|r| ID(r.to_string())),
            created_at: l.created_at,
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Malformed(problem) => ApiError::invalid("state", problem),
            StateError::TooLarge { limit } => ApiError::invalid("state", format!("exceeds {limit} bytes")),
            StateError::Locked { held_by, .. } => ApiError::Conflict(format!("the state is locked by {held_by}")),
            StateError::Conflict(why) => ApiError::Conflict(why),
            StateError::StackNotFound { slug } => ApiError::not_found("stack", slug),
            StateError::VersionNotFound { id, .. } => ApiError::not_found("state version", id),
            StateError::Unavailable(why) => ApiError::Unavailable(why),
            e @ (StateError::Unauthenticated
            | StateError::Forbidden { .. }
            | StateError::ReadOnly { .. }
            | StateError::Md5Mismatch { .. }
            | StateError::MethodNotAllowed
            | StateError::Internal(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The stack `slug`, when `caller` holds `op`'s role in its space.
async fn stack_id(c: &mut diesel_async::AsyncPgConnection, caller: &Caller, slug: &str, op: Op) -> Result<i64, ApiError> {
    Ok(stack_for(c, caller, slug, op.role()).await?.id)
}

#[derive(Default)]
pub struct StateQuery;

#[Object]
impl StateQuery {
    /// A stack's stored state versions, newest first.
    async fn state_versions(
        &self,
        ctx: &Context<'_>,
        stack: String,
        #[graphql(default = 50)] limit: i32,
    ) -> async_graphql::Result<Vec<StateVersion>> {
        let caller = caller(ctx)?;
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 500").into());
        }
        let mut c = conn(ctx).await?;
        let id = stack_id(&mut c, caller, &stack, Op::Read).await?;
        let rows = store::list_versions(&mut c, id, i64::from(limit)).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(StateVersion::from).collect())
    }

    /// The lock on a stack's state, if any.
    async fn state_lock(&self, ctx: &Context<'_>, stack: String) -> async_graphql::Result<Option<StateLock>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let id = stack_id(&mut c, caller, &stack, Op::Read).await?;
        Ok(store::current_lock(&mut c, id).await.map_err(ApiError::from)?.map(StateLock::from))
    }
}

#[derive(Default)]
pub struct StateMutation;

#[Object]
impl StateMutation {
    /// Removes the lock `lockId` from a stack's state (admin), whoever holds
    /// it; returns the lock removed, or null when the state is not locked. A
    /// `lockId` that is not the current lock's is refused, naming the holder.
    /// Audited with the holder it displaced.
    async fn force_unlock_state(
        &self,
        ctx: &Context<'_>,
        stack: String,
        lock_id: String,
    ) -> async_graphql::Result<Option<StateLock>> {
        let caller = caller(ctx)?.clone();
        let lock_id = super::check_lock_id(lock_id)
            .map_err(|_| ApiError::invalid("lockId", "must be 1 to 256 printable characters"))?;
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let removed = c
            .transaction::<_, ApiError, _>(async move |c| {
                let id = stack_id(c, &caller, &stack, Op::ManageState).await?;
                let Some(current) = store::current_lock(c, id).await? else {
                    return Ok(None);
                };
                if current.lock_id != lock_id {
                    return Err(ApiError::Conflict(format!(
                        "the state is locked by {} with lock {:?} since {}, not {lock_id:?}; nothing was released",
                        current.held_by,
                        current.lock_id,
                        current.created_at.to_rfc3339()
                    )));
                }
                if !store::unlock(c, id, &lock_id).await? {
                    return Err(ApiError::Conflict("the lock changed while it was being released; try again".into()));
                }
                audit::record(c, &actor, "state.force_unlock", &format!("stack:{stack}"), super::displaced(&current, "api"))
                    .await?;
                tracing::warn!(stack = %stack, lock = %current.lock_id, held_by = %current.held_by, by = %actor, "state force-unlocked");
                Ok(Some(current))
            })
            .await?;
        Ok(removed.map(StateLock::from))
    }

    /// Stores an existing Terraform state (its JSON) as the first version of a
    /// stack that has none (admin). Audited.
    async fn import_state(&self, ctx: &Context<'_>, stack: String, state: String) -> async_graphql::Result<StateVersion> {
        let caller = caller(ctx)?.clone();
        let app = app(ctx);
        if state.len() as u64 > app.max_state_bytes {
            return Err(ApiError::invalid("state", format!("exceeds {} bytes", app.max_state_bytes)).into());
        }
        let mut c = conn(ctx).await?;
        let id = stack_id(&mut c, &caller, &stack, Op::ManageState).await?;
        let writer = Principal::User(caller.clone()).writer();
        // Audited by write_version, in the transaction that stores the version.
        let row = match super::write_version(app, &mut c, (id, &stack), state.as_bytes(), &writer, WriteMode::Import)
            .await
            .map_err(ApiError::from)?
        {
            Written::Stored(v) | Written::Unchanged(v) => v,
        };
        Ok(row.into())
    }
}
