//! The audit trail: one event per mutation, written in the mutation's own
//! transaction. Details name what changed, never a secret value.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::audit_events;

use crate::StoreError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct AuditRow {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
    pub at: DateTime<Utc>,
}

pub async fn record(
    conn: &mut AsyncPgConnection,
    actor: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    Ok(diesel::insert_into(audit_events::table)
        .values((
            audit_events::actor.eq(actor),
            audit_events::action.eq(action),
            audit_events::target.eq(target),
            audit_events::details.eq(details),
        ))
        .execute(conn)
        .await
        .map(|_| ())?)
}

/// Newest first, `limit` events older than `before` (an event id).
pub async fn list(
    conn: &mut AsyncPgConnection,
    limit: i64,
    before: Option<i64>,
    action: Option<&str>,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut q = audit_events::table.order(audit_events::id.desc()).limit(limit).select(AuditRow::as_select()).into_boxed();
    if let Some(b) = before {
        q = q.filter(audit_events::id.lt(b));
    }
    if let Some(a) = action {
        q = q.filter(audit_events::action.eq(a.to_string()));
    }
    Ok(q.load(conn).await?)
}

/// Failed logins of the account `email` in the last `window`: the login throttle
/// counts them, across every server process.
pub async fn recent_login_failures(
    conn: &mut AsyncPgConnection,
    email: &str,
    window: chrono::Duration,
) -> Result<i64, StoreError> {
    Ok(audit_events::table
        .filter(audit_events::action.eq("user.login_failed"))
        .filter(audit_events::target.eq(format!("user:{email}")))
        .filter(audit_events::at.gt(chrono::Utc::now() - window))
        .count()
        .get_result(conn)
        .await?)
}

/// Failed logins from the address `source` in the last `window`, of the
/// account `email` only when given: the per-address login throttle.
pub async fn recent_login_failures_from(
    conn: &mut AsyncPgConnection,
    source: &str,
    email: Option<&str>,
    window: chrono::Duration,
) -> Result<i64, StoreError> {
    use diesel::sql_types::{Bool, Text};
    let recent = audit_events::table
        .filter(audit_events::action.eq("user.login_failed"))
        .filter(audit_events::at.gt(chrono::Utc::now() - window))
        .filter(diesel::dsl::sql::<Bool>("details->>'source' = ").bind::<Text, _>(source.to_string()));
    Ok(match email {
        Some(email) => recent.filter(audit_events::target.eq(format!("user:{email}"))).count().get_result(conn).await?,
        None => recent.count().get_result(conn).await?,
    })
}
