//! The audit trail, for admins.

use async_graphql::{Context, ID, Json, Object};
use hangar_store::access::Op;

use super::types::{AuditEvent, AuditPage};
use super::{ApiError, conn, require};
use hangar_store::audit;

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Newest first; `after` is the `nextCursor` of the previous page.
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
        after: Option<ID>,
        action: Option<String>,
    ) -> async_graphql::Result<AuditPage> {
        require(ctx, Op::ReadAudit.role())?;
        if !(1..=500).contains(&first) {
            return Err(ApiError::invalid("first", "must be between 1 and 500").into());
        }
        let before = after.as_ref().map(|a| super::id(a, "after")).transpose()?;
        let mut c = conn(ctx).await?;
        let mut rows = audit::list(&mut c, i64::from(first) + 1, before, action.as_deref()).await.map_err(ApiError::from)?;
        let more = rows.len() > first as usize;
        rows.truncate(first as usize);
        let next_cursor = if more { rows.last().map(|r| ID(r.id.to_string())) } else { None };
        Ok(AuditPage {
            items: rows
                .into_iter()
                .map(|r| AuditEvent {
                    id: ID(r.id.to_string()),
                    actor: r.actor,
                    action: r.action,
                    target: r.target,
                    details: Json(r.details),
                    at: r.at,
                })
                .collect(),
            next_cursor,
        })
    }
}
