//! Stacks, shared contexts and their attachments, and environment variables
//! (plain, or sealed secrets whose value is never read back here).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{context_attachments, contexts, stacks, variables};

use crate::StoreError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = stacks)]
pub struct StackRow {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub tool: String,
    pub tool_version: String,
    pub worker_pool_id: Option<i64>,
    pub autodeploy: bool,
    pub labels: Vec<String>,
    pub needs_reconciliation: bool,
    pub drift_schedule: Option<String>,
    pub vcs_integration_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A drift found starts a tracked run that puts things back.
    pub drift_reconcile: bool,
    /// When a drift run last finished, and which.
    pub drift_checked_at: Option<DateTime<Utc>>,
    pub drift_run_id: Option<i64>,
    /// Since when the stack is drifted; `None` when it is not.
    pub drift_detected_at: Option<DateTime<Utc>>,
    /// The last drift run's [`DriftedResource`]s (`[]` when clean).
    pub drifted_resources: Option<serde_json::Value>,
    /// The space the stack belongs to.
    pub space_id: i64,
}

/// A resource whose real state differs from the configuration, as a drift
/// run's plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriftedResource {
    pub address: String,
    /// Terraform's plan actions: `update`, `create`, `delete`, …
    pub actions: Vec<String>,
}

impl StackRow {
    /// The drifted resources of the last drift run (none when clean or never checked).
    pub fn drifted(&self) -> Vec<DriftedResource> {
        self.drifted_resources.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }
}

/// What a finished drift run found, recorded on its stack: `resources`
/// empty when the infrastructure matches. Returns whether the stack was
/// drifted before.
pub async fn record_drift(
    conn: &mut AsyncPgConnection,
    stack: i64,
    run: i64,
    resources: &[DriftedResource],
) -> Result<bool, StoreError> {
    let before: Option<DateTime<Utc>> = stacks::table.find(stack).select(stacks::drift_detected_at).first(conn).await?;
    let detected = if resources.is_empty() { None } else { Some(before.unwrap_or_else(Utc::now)) };
    let value = serde_json::to_value(resources).expect("drifted resources serialize");
    diesel::update(stacks::table.find(stack))
        .set((
            stacks::drift_checked_at.eq(Utc::now()),
            stacks::drift_run_id.eq(run),
            stacks::drift_detected_at.eq(detected),
            stacks::drifted_resources.eq(value),
        ))
        .execute(conn)
        .await?;
    Ok(before.is_some())
}

/// A stack as created.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = stacks)]
pub struct NewStack {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub tool: String,
    pub tool_version: String,
    pub worker_pool_id: Option<i64>,
    pub autodeploy: bool,
    pub labels: Vec<String>,
    pub drift_schedule: Option<String>,
    pub drift_reconcile: bool,
    pub space_id: i64,
}

/// Changes to a stack; `None` leaves a column as it is.
#[derive(Debug, Default, Clone, AsChangeset)]
#[diesel(table_name = stacks)]
pub struct StackChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub project_root: Option<String>,
    pub tool: Option<String>,
    pub tool_version: Option<String>,
    pub worker_pool_id: Option<Option<i64>>,
    pub autodeploy: Option<bool>,
    pub labels: Option<Vec<String>>,
    pub drift_schedule: Option<Option<String>>,
    pub drift_reconcile: Option<bool>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = contexts)]
pub struct ContextRow {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub space_id: i64,
}

/// A variable without its secret material (which is never loaded for display).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = variables)]
pub struct VariableRow {
    pub id: i64,
    pub stack_id: Option<i64>,
    pub context_id: Option<i64>,
    pub name: String,
    pub secret: bool,
    pub value: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whose variable it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Stack(i64),
    Context(i64),
}

impl Owner {
    /// Associated data sealed with a secret value: a ciphertext copied to another
    /// owner or name does not open.
    pub fn seal_context(self, name: &str) -> String {
        match self {
            Owner::Stack(id) => format!("stack:{id}:env:{name}"),
            Owner::Context(id) => format!("context:{id}:env:{name}"),
        }
    }
}

pub async fn list_stacks(
    conn: &mut AsyncPgConnection,
    label: Option<&str>,
) -> Result<Vec<StackRow>, StoreError> {
    let mut q = stacks::table.order(stacks::slug.asc()).select(StackRow::as_select()).into_boxed();
    if let Some(l) = label {
        q = q.filter(stacks::labels.contains(vec![l.to_string()]));
    }
    Ok(q.load(conn).await?)
}

pub async fn stack_by_slug(conn: &mut AsyncPgConnection, slug: &str) -> Result<Option<StackRow>, StoreError> {
    Ok(stacks::table.filter(stacks::slug.eq(slug)).select(StackRow::as_select()).first(conn).await.optional()?)
}

pub async fn stack_by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<StackRow>, StoreError> {
    Ok(stacks::table.find(id).select(StackRow::as_select()).first(conn).await.optional()?)
}

pub async fn insert_stack(conn: &mut AsyncPgConnection, new: &NewStack) -> Result<StackRow, StoreError> {
    Ok(diesel::insert_into(stacks::table).values(new).returning(StackRow::as_returning()).get_result(conn).await?)
}

pub async fn update_stack(
    conn: &mut AsyncPgConnection,
    id: i64,
    changes: &StackChanges,
) -> Result<StackRow, StoreError> {
    Ok(diesel::update(stacks::table.find(id))
        .set((changes, stacks::updated_at.eq(diesel::dsl::now)))
        .returning(StackRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete_stack(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    Ok(diesel::delete(stacks::table.find(id)).execute(conn).await? == 1)
}

pub async fn list_contexts(conn: &mut AsyncPgConnection) -> Result<Vec<ContextRow>, StoreError> {
    Ok(contexts::table.order(contexts::slug.asc()).select(ContextRow::as_select()).load(conn).await?)
}

pub async fn context_by_slug(
    conn: &mut AsyncPgConnection,
    slug: &str,
) -> Result<Option<ContextRow>, StoreError> {
    Ok(contexts::table.filter(contexts::slug.eq(slug)).select(ContextRow::as_select()).first(conn).await.optional()?)
}

pub async fn context_by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<ContextRow>, StoreError> {
    Ok(contexts::table.find(id).select(ContextRow::as_select()).first(conn).await.optional()?)
}

pub async fn insert_context(
    conn: &mut AsyncPgConnection,
    slug: &str,
    name: &str,
    description: &str,
    space: i64,
) -> Result<ContextRow, StoreError> {
    Ok(diesel::insert_into(contexts::table)
        .values((
            contexts::slug.eq(slug),
            contexts::name.eq(name),
            contexts::description.eq(description),
            contexts::space_id.eq(space),
        ))
        .returning(ContextRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn update_context(
    conn: &mut AsyncPgConnection,
    id: i64,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<ContextRow, StoreError> {
    Ok(diesel::update(contexts::table.find(id))
        .set((
            name.map(|n| contexts::name.eq(n.to_string())),
            description.map(|d| contexts::description.eq(d.to_string())),
            contexts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ContextRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete_context(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    Ok(diesel::delete(contexts::table.find(id)).execute(conn).await? == 1)
}

/// Attaches (or re-prioritizes) a context on a stack.
pub async fn attach(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    context_id: i64,
    priority: i32,
) -> Result<(), StoreError> {
    Ok(diesel::insert_into(context_attachments::table)
        .values((
            context_attachments::stack_id.eq(stack_id),
            context_attachments::context_id.eq(context_id),
            context_attachments::priority.eq(priority),
        ))
        .on_conflict((context_attachments::stack_id, context_attachments::context_id))
        .do_update()
        .set(context_attachments::priority.eq(priority))
        .execute(conn)
        .await
        .map(|_| ())?)
}

pub async fn detach(conn: &mut AsyncPgConnection, stack_id: i64, context_id: i64) -> Result<bool, StoreError> {
    let n = diesel::delete(
        context_attachments::table
            .filter(context_attachments::stack_id.eq(stack_id))
            .filter(context_attachments::context_id.eq(context_id)),
    )
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Contexts attached to a stack with their priority, highest precedence first.
pub async fn attachments_of_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
) -> Result<Vec<(i32, ContextRow)>, StoreError> {
    Ok(context_attachments::table
        .inner_join(contexts::table)
        .filter(context_attachments::stack_id.eq(stack_id))
        .order((context_attachments::priority.asc(), contexts::slug.asc()))
        .select((context_attachments::priority, ContextRow::as_select()))
        .load(conn)
        .await?)
}

/// Stacks a context is attached to.
pub async fn stacks_of_context(
    conn: &mut AsyncPgConnection,
    context_id: i64,
) -> Result<Vec<(i32, StackRow)>, StoreError> {
    Ok(context_attachments::table
        .inner_join(stacks::table)
        .filter(context_attachments::context_id.eq(context_id))
        .order(stacks::slug.asc())
        .select((context_attachments::priority, StackRow::as_select()))
        .load(conn)
        .await?)
}

pub async fn variables_of(conn: &mut AsyncPgConnection, owner: Owner) -> Result<Vec<VariableRow>, StoreError> {
    let q = variables::table.order(variables::name.asc()).select(VariableRow::as_select()).into_boxed();
    let q = match owner {
        Owner::Stack(id) => q.filter(variables::stack_id.eq(id)),
        Owner::Context(id) => q.filter(variables::context_id.eq(id)),
    };
    Ok(q.load(conn).await?)
}

/// What a variable holds when written.
#[derive(Debug)]
pub enum Content {
    Plain(String),
    Sealed(crate::secrets::Sealed),
}

/// Creates or replaces variable `name` of `owner`.
pub async fn upsert_variable(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    name: &str,
    content: Content,
) -> Result<VariableRow, StoreError> {
    let (stack_id, context_id) = match owner {
        Owner::Stack(id) => (Some(id), None),
        Owner::Context(id) => (None, Some(id)),
    };
    let (secret, value, sealed, data_key_id) = match content {
        Content::Plain(v) => (false, Some(v), None, None),
        Content::Sealed(s) => (true, None, Some(s.bytes), Some(s.data_key_id)),
    };
    let named = variables::table.filter(variables::name.eq(name)).select(variables::id);
    let existing: Option<i64> = match owner {
        Owner::Stack(id) => named.filter(variables::stack_id.eq(id)).for_update().first(conn).await.optional()?,
        Owner::Context(id) => named.filter(variables::context_id.eq(id)).for_update().first(conn).await.optional()?,
    };
    match existing {
        Some(id) => {
            Ok(diesel::update(variables::table.find(id))
                .set((
                    variables::secret.eq(secret),
                    variables::value.eq(value),
                    variables::sealed.eq(sealed),
                    variables::data_key_id.eq(data_key_id),
                    variables::updated_at.eq(diesel::dsl::now),
                ))
                .returning(VariableRow::as_returning())
                .get_result(conn)
                .await?)
        }
        None => {
            Ok(diesel::insert_into(variables::table)
                .values((
                    variables::stack_id.eq(stack_id),
                    variables::context_id.eq(context_id),
                    variables::name.eq(name),
                    variables::secret.eq(secret),
                    variables::value.eq(value),
                    variables::sealed.eq(sealed),
                    variables::data_key_id.eq(data_key_id),
                ))
                .returning(VariableRow::as_returning())
                .get_result(conn)
                .await?)
        }
    }
}

pub async fn delete_variable(conn: &mut AsyncPgConnection, owner: Owner, name: &str) -> Result<bool, StoreError> {
    let n = match owner {
        Owner::Stack(id) => {
            diesel::delete(variables::table.filter(variables::stack_id.eq(id)).filter(variables::name.eq(name)))
                .execute(conn)
                .await?
        }
        Owner::Context(id) => {
            diesel::delete(variables::table.filter(variables::context_id.eq(id)).filter(variables::name.eq(name)))
                .execute(conn)
                .await?
        }
    };
    Ok(n == 1)
}

/// The sealed form of a secret variable, for the one reader entitled to it (a
/// run's worker) and for tests of rotation.
pub async fn sealed_value(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    name: &str,
) -> Result<Option<crate::secrets::Sealed>, StoreError> {
    let q = variables::table
        .filter(variables::name.eq(name))
        .filter(variables::secret.eq(true))
        .select((variables::data_key_id, variables::sealed))
        .into_boxed();
    let q = match owner {
        Owner::Stack(id) => q.filter(variables::stack_id.eq(id)),
        Owner::Context(id) => q.filter(variables::context_id.eq(id)),
    };
    let row: Option<(Option<i64>, Option<Vec<u8>>)> = q.first(conn).await.optional()?;
    Ok(row.and_then(|(k, s)| Some(crate::secrets::Sealed { data_key_id: k?, bytes: s? })))
}

/// Stacks with a drift schedule, and the schedule.
pub async fn drift_schedules(conn: &mut AsyncPgConnection) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(stacks::table
        .filter(stacks::drift_schedule.is_not_null())
        .select((stacks::id, stacks::drift_schedule.assume_not_null()))
        .load(conn)
        .await?)
}

/// The branch stack `id` tracks; `None` when it no longer exists.
pub async fn branch_of(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<String>, StoreError> {
    Ok(stacks::table.find(id).select(stacks::branch).first(conn).await.optional()?)
}

/// Marks stack `id` as needing an operator's reconciliation (an apply lost
/// its worker).
pub async fn mark_needs_reconciliation(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    diesel::update(stacks::table.find(id)).set(stacks::needs_reconciliation.eq(true)).execute(conn).await?;
    Ok(())
}
