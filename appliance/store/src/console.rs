//! What the web console's pages read: the stacks list with each stack's last
//! run, filtered and paginated in the database, the audit trail filtered by
//! actor, action and target, and the rows of the other pages. Reads only, and
//! never a secret's value: every change goes through the API's operations.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{
    api_keys, audit_events, context_attachments, contexts, run_events, runs, stacks, state_locks, state_versions, users, variables,
    vcs_integrations, webhook_deliveries, worker_pools, workers,
};

/// What every read here returns.
pub type Q<T> = Result<T, diesel::result::Error>;

/// The spaces whose things a read may return: `None` for every space (a
/// viewer whose own role reads everything), else the spaces they see.
pub type Scope<'a> = Option<&'a [i64]>;

/// Which stacks the list shows.
#[derive(Debug, Clone, Default)]
pub struct StackFilter {
    /// Part of the slug or name, any case.
    pub text: String,
    /// A label the stack carries.
    pub label: String,
    /// The state of its last run (`NONE`: never run).
    pub state: String,
}

/// One line of the stacks list.
#[derive(Debug, Clone, QueryableByName)]
pub struct StackLine {
    #[diesel(sql_type = Text)]
    pub slug: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub branch: String,
    #[diesel(sql_type = Array<Text>)]
    pub labels: Vec<String>,
    #[diesel(sql_type = Bool)]
    pub needs_reconciliation: bool,
    /// The last drift run found drift.
    #[diesel(sql_type = Bool)]
    pub drifted: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub pool: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub run_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub run_state: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub run_at: Option<DateTime<Utc>>,
    /// Every stack the filter matches, on each line.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
}

/// `LIKE` pattern for text anywhere, with the pattern characters escaped.
fn contains_pattern(s: &str) -> String {
    let mut p = String::from("%");
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A page of the stacks list by slug, with each stack's newest run; the
/// total matching is on every line (zero lines: none match, or past the end).
pub async fn stack_lines(c: &mut AsyncPgConnection, f: &StackFilter, scope: Scope<'_>, offset: i64, limit: i64) -> Q<Vec<StackLine>> {
    // The newest run of each stack comes from runs_stack_idx (stack_id, id DESC).
    diesel::sql_query(
        "SELECT s.slug, s.name, s.branch, s.labels, s.needs_reconciliation, s.drift_detected_at IS NOT NULL AS drifted, p.name AS pool,
                r.id AS run_id, r.state AS run_state, r.updated_at AS run_at,
                count(*) OVER () AS total
         FROM stacks s
         LEFT JOIN worker_pools p ON p.id = s.worker_pool_id
         LEFT JOIN LATERAL (SELECT id, state, updated_at FROM runs WHERE runs.stack_id = s.id ORDER BY id DESC LIMIT 1) r ON true
         WHERE ($1 = '' OR s.slug ILIKE $2 ESCAPE '\\' OR s.name ILIKE $2 ESCAPE '\\')
           AND ($3 = '' OR s.labels @> ARRAY[$3])
           AND ($4 = '' OR ($4 = 'NONE' AND r.id IS NULL) OR r.state = $4)
           AND ($7 OR s.space_id = ANY($8))
         ORDER BY s.slug
         OFFSET $5 LIMIT $6",
    )
    .bind::<Text, _>(&f.text)
    .bind::<Text, _>(contains_pattern(&f.text))
    .bind::<Text, _>(&f.label)
    .bind::<Text, _>(&f.state)
    .bind::<BigInt, _>(offset)
    .bind::<BigInt, _>(limit)
    .bind::<Bool, _>(scope.is_none())
    .bind::<Array<BigInt>, _>(scope.unwrap_or_default().to_vec())
    .load(c)
    .await
}

/// The stacks' one row type (with its VCS integration, which the stack page links).
pub use crate::stacks::StackRow;

pub async fn stack(c: &mut AsyncPgConnection, slug: &str) -> Q<Option<StackRow>> {
    stacks::table.filter(stacks::slug.eq(slug)).select(StackRow::as_select()).first(c).await.optional()
}

pub async fn stack_by_id(c: &mut AsyncPgConnection, id: i64) -> Q<Option<StackRow>> {
    stacks::table.find(id).select(StackRow::as_select()).first(c).await.optional()
}

pub async fn pool_name(c: &mut AsyncPgConnection, id: i64) -> Q<Option<String>> {
    worker_pools::table.find(id).select(worker_pools::name).first(c).await.optional()
}

/// The integration's name and web address.
pub async fn integration(c: &mut AsyncPgConnection, id: i64) -> Q<Option<(String, String, String)>> {
    vcs_integrations::table
        .find(id)
        .select((vcs_integrations::name, vcs_integrations::kind, vcs_integrations::base_url))
        .first(c)
        .await
        .optional()
}

/// Newest first, `limit` runs of a stack older than run `before`.
pub async fn runs_of(c: &mut AsyncPgConnection, stack: i64, before: Option<i64>, limit: i64) -> Q<Vec<hangar_db::runs::RunRow>> {
    let mut q = runs::table
        .filter(runs::stack_id.eq(stack))
        .order(runs::id.desc())
        .limit(limit)
        .select(hangar_db::runs::RunRow::as_select())
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(runs::id.lt(b));
    }
    q.load(c).await
}

pub async fn run(c: &mut AsyncPgConnection, id: i64) -> Q<Option<hangar_db::runs::RunRow>> {
    runs::table.find(id).select(hangar_db::runs::RunRow::as_select()).first(c).await.optional()
}

/// The plan's reported change summary and whether an errored state was kept.
pub async fn run_outcome(c: &mut AsyncPgConnection, id: i64) -> Q<(Option<serde_json::Value>, bool)> {
    runs::table.find(id).select((runs::changes, runs::errored_state_key.is_not_null())).first(c).await
}

/// Every state a run went through, oldest first: (state, at).
pub async fn run_history(c: &mut AsyncPgConnection, id: i64) -> Q<Vec<(String, DateTime<Utc>)>> {
    run_events::table
        .filter(run_events::run_id.eq(id))
        .order(run_events::id.asc())
        .select((run_events::to_state, run_events::at))
        .load(c)
        .await
}

/// A stack's variables: (name, secret, plain value, updated). A secret's value
/// is never selected.
pub async fn stack_variables(c: &mut AsyncPgConnection, stack: i64) -> Q<Vec<(String, bool, Option<String>, DateTime<Utc>)>> {
    variables::table
        .filter(variables::stack_id.eq(stack))
        .order(variables::name.asc())
        .select((variables::name, variables::secret, variables::value, variables::updated_at))
        .load(c)
        .await
}

/// Contexts attached to a stack: (slug, name, priority).
pub async fn stack_contexts(c: &mut AsyncPgConnection, stack: i64, scope: Scope<'_>) -> Q<Vec<(String, String, i32)>> {
    let mut q = context_attachments::table
        .inner_join(contexts::table)
        .filter(context_attachments::stack_id.eq(stack))
        .order((context_attachments::priority.asc(), contexts::slug.asc()))
        .select((contexts::slug, contexts::name, context_attachments::priority))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(contexts::space_id.eq_any(seen.to_vec()));
    }
    q.load(c).await
}

/// Who holds a stack's state lock, since when.
pub async fn lock_of(c: &mut AsyncPgConnection, stack: i64) -> Q<Option<(String, String, DateTime<Utc>)>> {
    state_locks::table
        .find(stack)
        .select((state_locks::lock_id, state_locks::held_by, state_locks::created_at))
        .first(c)
        .await
        .optional()
}

/// How many state versions a stack has: the newest is version that number.
pub async fn count_state_versions(c: &mut AsyncPgConnection, stack: i64) -> Q<i64> {
    state_versions::table.filter(state_versions::stack_id.eq(stack)).count().get_result(c).await
}

/// Newest first: (id, serial, lineage, created_by, created_at).
pub async fn state_versions_of(c: &mut AsyncPgConnection, stack: i64, limit: i64) -> Q<Vec<(i64, i64, String, String, DateTime<Utc>)>> {
    state_versions::table
        .filter(state_versions::stack_id.eq(stack))
        .order(state_versions::id.desc())
        .limit(limit)
        .select((state_versions::id, state_versions::serial, state_versions::lineage, state_versions::created_by, state_versions::created_at))
        .load(c)
        .await
}

/// Names of every worker pool and VCS integration, for the forms' choices.
pub async fn names(c: &mut AsyncPgConnection, scope: Scope<'_>) -> Q<(Vec<String>, Vec<String>)> {
    let mut pools = worker_pools::table.order(worker_pools::name.asc()).select(worker_pools::name).into_boxed();
    let mut vcs = vcs_integrations::table.order(vcs_integrations::name.asc()).select(vcs_integrations::name).into_boxed();
    if let Some(seen) = scope {
        pools = pools.filter(worker_pools::space_id.eq_any(seen.to_vec()));
        vcs = vcs.filter(vcs_integrations::space_id.eq_any(seen.to_vec()));
    }
    Ok((pools.load(c).await?, vcs.load(c).await?))
}

/// A pool as the pools page shows it: id, name, description, generation, space.
pub type PoolLine = (i64, String, String, i32, i64);

/// A worker as the pools page shows it.
#[derive(Debug, Clone, Queryable)]
pub struct WorkerLine {
    pub id: i64,
    pub pool_id: i64,
    pub name: String,
    pub status: String,
    pub drained: bool,
    pub metadata: serde_json::Value,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub pool_generation: i32,
}

/// Every pool (id, name, description, generation, space) and every worker.
pub async fn pools_and_workers(c: &mut AsyncPgConnection, scope: Scope<'_>) -> Q<(Vec<PoolLine>, Vec<WorkerLine>)> {
    let mut q = worker_pools::table
        .order(worker_pools::name.asc())
        .select((worker_pools::id, worker_pools::name, worker_pools::description, worker_pools::generation, worker_pools::space_id))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(worker_pools::space_id.eq_any(seen.to_vec()));
    }
    let pools: Vec<PoolLine> = q.load(c).await?;
    let pool_ids: Vec<i64> = pools.iter().map(|p| p.0).collect();
    let workers = workers::table
        .filter(workers::pool_id.eq_any(pool_ids))
        .order(workers::name.asc())
        .select((
            workers::id,
            workers::pool_id,
            workers::name,
            workers::status,
            workers::drained,
            workers::metadata,
            workers::last_seen_at,
            workers::revoked_at,
            workers::pool_generation,
        ))
        .load(c)
        .await?;
    Ok((pools, workers))
}

/// Every VCS integration: (id, name, kind, base_url, created_at, linked stacks).
pub async fn integrations(c: &mut AsyncPgConnection, scope: Scope<'_>) -> Q<Vec<(i64, String, String, String, DateTime<Utc>, i64)>> {
    let mut q = vcs_integrations::table
        .order(vcs_integrations::name.asc())
        .select((vcs_integrations::id, vcs_integrations::name, vcs_integrations::kind, vcs_integrations::base_url, vcs_integrations::created_at))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(vcs_integrations::space_id.eq_any(seen.to_vec()));
    }
    let rows: Vec<(i64, String, String, String, DateTime<Utc>)> = q.load(c).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, name, kind, base, at) in rows {
        let n = stacks::table.filter(stacks::vcs_integration_id.eq(id)).count().get_result(c).await?;
        out.push((id, name, kind, base, at, n));
    }
    Ok(out)
}

/// An integration by name: (id, kind, base_url, username).
pub async fn integration_named(c: &mut AsyncPgConnection, name: &str, scope: Scope<'_>) -> Q<Option<(i64, String, String, Option<String>)>> {
    let mut q = vcs_integrations::table
        .filter(vcs_integrations::name.eq(name))
        .select((vcs_integrations::id, vcs_integrations::kind, vcs_integrations::base_url, vcs_integrations::username))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(vcs_integrations::space_id.eq_any(seen.to_vec()));
    }
    q.first(c).await.optional()
}

/// Slugs and names of the stacks linked to an integration.
pub async fn linked_stacks(c: &mut AsyncPgConnection, integration: i64, scope: Scope<'_>) -> Q<Vec<(String, String)>> {
    let mut q = stacks::table
        .filter(stacks::vcs_integration_id.eq(integration))
        .order(stacks::slug.asc())
        .select((stacks::slug, stacks::name))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(stacks::space_id.eq_any(seen.to_vec()));
    }
    q.load(c).await
}

/// A delivery as the log shows it.
#[derive(Debug, Clone, Queryable)]
pub struct DeliveryLine {
    pub delivery_id: String,
    pub event: String,
    pub received_at: DateTime<Utc>,
    pub outcome: String,
    pub detail: Option<String>,
    pub run_ids: Vec<i64>,
    pub error: Option<String>,
}

/// The newest `limit` deliveries of an integration.
pub async fn deliveries(c: &mut AsyncPgConnection, integration: i64, limit: i64) -> Q<Vec<DeliveryLine>> {
    webhook_deliveries::table
        .filter(webhook_deliveries::integration_id.eq(integration))
        .order(webhook_deliveries::id.desc())
        .limit(limit)
        .select((
            webhook_deliveries::delivery_id,
            webhook_deliveries::event,
            webhook_deliveries::received_at,
            webhook_deliveries::outcome,
            webhook_deliveries::detail,
            webhook_deliveries::run_ids,
            webhook_deliveries::error,
        ))
        .load(c)
        .await
}

/// Every context: (slug, name, description, variables, stacks attached).
pub async fn contexts_list(c: &mut AsyncPgConnection, scope: Scope<'_>) -> Q<Vec<(i64, String, String, String)>> {
    let mut q = contexts::table
        .order(contexts::slug.asc())
        .select((contexts::id, contexts::slug, contexts::name, contexts::description))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(contexts::space_id.eq_any(seen.to_vec()));
    }
    q.load(c).await
}

pub async fn context_named(c: &mut AsyncPgConnection, slug: &str, scope: Scope<'_>) -> Q<Option<(i64, String, String, String)>> {
    let mut q = contexts::table
        .filter(contexts::slug.eq(slug))
        .select((contexts::id, contexts::slug, contexts::name, contexts::description))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(contexts::space_id.eq_any(seen.to_vec()));
    }
    q.first(c).await.optional()
}

/// A context's variables: (name, secret, plain value, updated). A secret's
/// value is never selected.
pub async fn context_variables(c: &mut AsyncPgConnection, context: i64) -> Q<Vec<(String, bool, Option<String>, DateTime<Utc>)>> {
    variables::table
        .filter(variables::context_id.eq(context))
        .order(variables::name.asc())
        .select((variables::name, variables::secret, variables::value, variables::updated_at))
        .load(c)
        .await
}

/// Stacks a context is attached to: (slug, name, priority).
pub async fn context_stacks(c: &mut AsyncPgConnection, context: i64, scope: Scope<'_>) -> Q<Vec<(String, String, i32)>> {
    let mut q = context_attachments::table
        .inner_join(stacks::table)
        .filter(context_attachments::context_id.eq(context))
        .order(stacks::slug.asc())
        .select((stacks::slug, stacks::name, context_attachments::priority))
        .into_boxed();
    if let Some(seen) = scope {
        q = q.filter(stacks::space_id.eq_any(seen.to_vec()));
    }
    q.load(c).await
}

/// Every stack's slug, for choosing one.
pub async fn stack_slugs(c: &mut AsyncPgConnection, scope: Scope<'_>) -> Q<Vec<String>> {
    let mut q = stacks::table.order(stacks::slug.asc()).select(stacks::slug).into_boxed();
    if let Some(seen) = scope {
        q = q.filter(stacks::space_id.eq_any(seen.to_vec()));
    }
    q.load(c).await
}

/// Every user: (id, email, name, role, disabled, created_at).
pub async fn users_list(c: &mut AsyncPgConnection) -> Q<Vec<(i64, String, String, String, bool, DateTime<Utc>)>> {
    users::table
        .order(users::email.asc())
        .select((users::id, users::email, users::name, users::role, users::disabled, users::created_at))
        .load(c)
        .await
}

/// An API key as listed: (id, owner email, name, prefix, role, created, last used, expires, revoked).
pub type KeyLine =
    (i64, String, String, String, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// API keys, of one user (by email) or of everyone.
pub async fn api_keys_list(c: &mut AsyncPgConnection, owner: Option<&str>) -> Q<Vec<KeyLine>> {
    let mut q = api_keys::table
        .inner_join(users::table)
        .order(api_keys::id.desc())
        .select((
            api_keys::id,
            users::email,
            api_keys::name,
            api_keys::prefix,
            api_keys::role,
            api_keys::created_at,
            api_keys::last_used_at,
            api_keys::expires_at,
            api_keys::revoked_at,
        ))
        .into_boxed();
    if let Some(o) = owner {
        q = q.filter(users::email.eq(o.to_string()));
    }
    q.load(c).await
}

/// Which audit events the trail shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: String,
    pub action: String,
    pub target: String,
}

/// Newest first, `limit` events older than `before`: (id, actor, action, target, details, at).
pub async fn audit_page(
    c: &mut AsyncPgConnection,
    f: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> Q<Vec<(i64, String, String, String, serde_json::Value, DateTime<Utc>)>> {
    let mut q = audit_events::table
        .order(audit_events::id.desc())
        .limit(limit)
        .select((audit_events::id, audit_events::actor, audit_events::action, audit_events::target, audit_events::details, audit_events::at))
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(audit_events::id.lt(b));
    }
    if !f.actor.is_empty() {
        q = q.filter(audit_events::actor.ilike(contains_pattern(&f.actor)));
    }
    if !f.action.is_empty() {
        q = q.filter(audit_events::action.eq(f.action.clone()));
    }
    if !f.target.is_empty() {
        q = q.filter(audit_events::target.ilike(contains_pattern(&f.target)));
    }
    q.load(c).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(contains_pattern("net"), "%net%");
        assert_eq!(contains_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
    }
}
