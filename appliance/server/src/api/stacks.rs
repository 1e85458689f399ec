//! Stacks, shared contexts and environment variables. Secret values are sealed
//! on the way in and never come back out: answers carry a mask, audit events
//! carry the variable's name only.

use async_graphql::{Context, InputObject, Object};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use serde_json::json;

use super::types::{ContextObj, DependencyOutput, IacTool, Stack, Variable};
use hangar_store::dependencies::{self, OutputRef, Refusal};
use super::{ApiError, app, caller, check_usable, conn, context_for, space_for, stack_for};
use hangar_store::users::Caller;
use hangar_types::Role;
use crate::git;
use hangar_store::stacks::{self as store, Content, NewStack, Owner, StackChanges};
use hangar_store::{audit, pools};

#[derive(InputObject)]
pub struct StackInput {
    pub slug: String,
    pub name: String,
    #[graphql(default)]
    pub description: String,
    pub repository: String,
    pub branch: String,
    #[graphql(default)]
    pub project_root: String,
    pub tool: IacTool,
    pub tool_version: String,
    /// Name of the worker pool that runs this stack.
    pub worker_pool: Option<String>,
    #[graphql(default)]
    pub autodeploy: bool,
    #[graphql(default)]
    pub labels: Vec<String>,
    /// Cron expression (5 fields, or 6 with seconds) for drift detection runs.
    pub drift_schedule: Option<String>,
    /// When a drift run finds drift, start a tracked run that puts the
    /// infrastructure back (it applies by itself only with `autodeploy`).
    #[graphql(default)]
    pub drift_reconcile: bool,
    /// The space the stack belongs to, by slug (the root when absent).
    pub space: Option<String>,
}

/// Changes to a stack: absent fields stay as they are; an empty `workerPool`
/// or `driftSchedule` clears it.
#[derive(InputObject)]
pub struct StackUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub project_root: Option<String>,
    pub tool: Option<IacTool>,
    pub tool_version: Option<String>,
    pub worker_pool: Option<String>,
    pub autodeploy: Option<bool>,
    pub labels: Option<Vec<String>>,
    pub drift_schedule: Option<String>,
    pub drift_reconcile: Option<bool>,
}

pub(crate) fn check_slug(field: &'static str, slug: &str) -> Result<(), ApiError> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok { Ok(()) } else { Err(ApiError::invalid(field, "must be 1-63 of a-z, 0-9 and '-', not starting with '-'")) }
}

pub(crate) fn check_text(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = text.chars().count();
    if n < min || n > max || text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(field, format!("must be {min} to {max} characters without control characters")));
    }
    if min > 0 && text.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be blank"));
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), ApiError> {
    if git::valid_repository(repo) {
        Ok(())
    } else {
        Err(ApiError::invalid("repository", "must be an https://, http://, ssh:// or user@host:path git URL"))
    }
}

fn check_branch(branch: &str) -> Result<(), ApiError> {
    if git::valid_branch(branch) { Ok(()) } else { Err(ApiError::invalid("branch", "is not a valid git branch name")) }
}

fn check_project_root(root: &str) -> Result<(), ApiError> {
    let ok = root.len() <= 512
        && !root.starts_with('/')
        && !root.chars().any(|c| c.is_control() || c == '\\')
        && root.split('/').all(|part| part != "..");
    if ok { Ok(()) } else { Err(ApiError::invalid("projectRoot", "must be a relative path inside the repository")) }
}

fn check_tool_version(v: &str) -> Result<(), ApiError> {
    let (core, pre) = v.split_once('-').unwrap_or((v, ""));
    let nums: Vec<&str> = core.split('.').collect();
    let ok = v.len() <= 64
        && nums.len() == 3
        && nums.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if ok { Ok(()) } else { Err(ApiError::invalid("toolVersion", "must be a version like 1.9.3 or 1.10.0-rc1")) }
}

fn clean_labels(labels: Vec<String>) -> Result<Vec<String>, ApiError> {
    if labels.len() > 50 {
        return Err(ApiError::invalid("labels", "at most 50"));
    }
    let mut out: Vec<String> = Vec::new();
    for l in labels {
        let ok = (1..=64).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if !ok {
            return Err(ApiError::invalid("labels", format!("{l:?} must be 1-64 of letters, digits and - _ . : /")));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

fn check_schedule(s: &str) -> Result<(), ApiError> {
    if s.len() > 100 {
        return Err(ApiError::invalid("driftSchedule", "is too long"));
    }
    s.parse::<croner::Cron>()
        .map(|_| ()).map_err(|e| ApiError::invalid("driftSchedule", format!("is not a cron expression ({e})")))
}

fn check_variable(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ApiError::invalid("name", "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)"));
    }
    if value.len() > 64 * 1024 || value.contains('\0') {
        return Err(ApiError::invalid("value", "must be at most 64 KiB and contain no NUL"));
    }
    Ok(())
}

/// The outputs a dependency passes, checked: Terraform names, at most
/// [`dependencies::MAX_OUTPUTS`], each input set once.
fn check_outputs(outputs: &[DependencyOutput]) -> Result<Vec<OutputRef>, ApiError> {
    if outputs.len() > dependencies::MAX_OUTPUTS {
        return Err(ApiError::invalid("outputs", format!("at most {} per dependency", dependencies::MAX_OUTPUTS)));
    }
    let mut refs: Vec<OutputRef> = Vec::with_capacity(outputs.len());
    for o in outputs {
        for name in [&o.output, &o.input] {
            if !dependencies::valid_identifier(name) {
                let shown: String = name.chars().take(64).collect();
                return Err(ApiError::invalid(
                    "outputs",
                    format!("{shown:?} is not a Terraform name (a letter or _, then letters, digits, _ or -; at most 128)"),
                ));
            }
        }
        if refs.iter().any(|r| r.input == o.input) {
            return Err(ApiError::invalid("outputs", format!("input {:?} is set twice", o.input)));
        }
        refs.push(OutputRef { output: o.output.clone(), input: o.input.clone() });
    }
    Ok(refs)
}


/// The pool `name` for a stack of `space`: one the caller sees, of the
/// stack's space or one above it.
async fn pool_id(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    name: Option<&str>,
    space: i64,
) -> Result<Option<i64>, ApiError> {
    match name {
        None | Some("") => Ok(None),
        Some(n) => {
            let pool = pools::pool_by_name(c, n).await?.filter(|p| caller.sees(p.space_id));
            let pool = pool.ok_or_else(|| ApiError::not_found("worker pool", n))?;
            check_usable(c, "worker pool", n, pool.space_id, space).await?;
            Ok(Some(pool.id))
        }
    }
}

/// The stack `slug`, when the caller may change it.
async fn stack_id(c: &mut diesel_async::AsyncPgConnection, caller: &Caller, slug: &str) -> Result<i64, ApiError> {
    Ok(stack_for(c, caller, slug, Op::Write.role()).await?.id)
}

/// The context `slug`, when the caller may change it.
async fn context_id(c: &mut diesel_async::AsyncPgConnection, caller: &Caller, slug: &str) -> Result<i64, ApiError> {
    Ok(context_for(c, caller, slug, Op::Write.role()).await?.id)
}

#[derive(Default)]
pub struct StacksQuery;

#[Object]
impl StacksQuery {
    /// Every stack, by slug; only those carrying `label` when given.
    async fn stacks(&self, ctx: &Context<'_>, label: Option<String>) -> async_graphql::Result<Vec<Stack>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = store::list_stacks(&mut c, label.as_deref()).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|s| caller.sees(s.space_id)).map(Stack).collect())
    }

    async fn stack(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<Option<Stack>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::stack_by_slug(&mut c, &slug).await.map_err(ApiError::from)?.filter(|s| caller.sees(s.space_id)).map(Stack))
    }

    async fn contexts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ContextObj>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = store::list_contexts(&mut c).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|x| caller.sees(x.space_id)).map(ContextObj).collect())
    }

    async fn context(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<Option<ContextObj>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::context_by_slug(&mut c, &slug).await.map_err(ApiError::from)?.filter(|x| caller.sees(x.space_id)).map(ContextObj))
    }
}

#[derive(Default)]
pub struct StacksMutation;

/// Writes a variable (sealing a secret one) and its audit event.
async fn set_variable(
    ctx: &Context<'_>,
    owner_kind: &'static str,
    owner_slug: String,
    name: String,
    value: String,
    secret: bool,
) -> Result<Variable, ApiError> {
    let caller = caller(ctx)?.clone();
    check_variable(&name, &value)?;
    let app = app(ctx);
    let mut c = conn(ctx).await?;
    let row = c
        .transaction::<_, ApiError, _>(async move |c| {
            let owner = match owner_kind {
                "stack" => Owner::Stack(stack_id(c, &caller, &owner_slug).await?),
                _ => Owner::Context(context_id(c, &caller, &owner_slug).await?),
            };
            let content = if secret {
                Content::Sealed(app.secrets.seal(c, value.as_bytes(), &owner.seal_context(&name)).await?)
            } else {
                Content::Plain(value)
            };
            let row = store::upsert_variable(c, owner, &name, content).await?;
            audit::record(
                c,
                &caller.actor(),
                "variable.set",
                &format!("{owner_kind}:{owner_slug}"),
                json!({ "name": name, "secret": secret }),
            )
            .await?;
            Ok(row)
        })
        .await?;
    Ok(row.into())
}

async fn delete_variable(ctx: &Context<'_>, owner_kind: &'static str, owner_slug: String, name: String) -> Result<bool, ApiError> {
    let caller = caller(ctx)?.clone();
    let mut c = conn(ctx).await?;
    c.transaction::<_, ApiError, _>(async move |c| {
        let owner = match owner_kind {
            "stack" => Owner::Stack(stack_id(c, &caller, &owner_slug).await?),
            _ => Owner::Context(context_id(c, &caller, &owner_slug).await?),
        };
        if !store::delete_variable(c, owner, &name).await? {
            return Err(ApiError::not_found("variable", name));
        }
        audit::record(c, &caller.actor(), "variable.delete", &format!("{owner_kind}:{owner_slug}"), json!({ "name": name }))
            .await?;
        Ok(true)
    })
    .await
}

#[Object]
impl StacksMutation {
    async fn create_stack(&self, ctx: &Context<'_>, input: StackInput) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        check_slug("slug", &input.slug)?;
        check_text("name", &input.name, 1, 200)?;
        check_text("description", &input.description, 0, 2000)?;
        check_repository(&input.repository)?;
        check_branch(&input.branch)?;
        check_project_root(&input.project_root)?;
        check_tool_version(&input.tool_version)?;
        let labels = clean_labels(input.labels)?;
        if let Some(s) = &input.drift_schedule {
            check_schedule(s)?;
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let space = space_for(c, &caller, input.space.as_deref(), Op::Write.role()).await?;
                let worker_pool_id = pool_id(c, &caller, input.worker_pool.as_deref(), space.id).await?;
                let tool: hangar_types::Tool = input.tool.into();
                let new = NewStack {
                    slug: input.slug,
                    name: input.name,
                    description: input.description,
                    repository: input.repository,
                    branch: input.branch,
                    project_root: input.project_root,
                    tool: tool.as_str().into(),
                    tool_version: input.tool_version,
                    worker_pool_id,
                    autodeploy: input.autodeploy,
                    labels,
                    drift_schedule: input.drift_schedule.filter(|s| !s.is_empty()),
                    drift_reconcile: input.drift_reconcile,
                    space_id: space.id,
                };
                let row = store::insert_stack(c, &new).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "stack.create",
                    &format!("stack:{}", row.slug),
                    json!({
                        "name": row.name, "repository": row.repository, "branch": row.branch,
                        "tool": row.tool, "tool_version": row.tool_version, "worker_pool": input.worker_pool,
                        "autodeploy": row.autodeploy, "labels": row.labels, "drift_reconcile": row.drift_reconcile,
                        "space": space.slug,
                    }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(Stack(row))
    }

    async fn update_stack(&self, ctx: &Context<'_>, slug: String, input: StackUpdate) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        if let Some(v) = &input.name {
            check_text("name", v, 1, 200)?;
        }
        if let Some(v) = &input.description {
            check_text("description", v, 0, 2000)?;
        }
        if let Some(v) = &input.repository {
            check_repository(v)?;
        }
        if let Some(v) = &input.branch {
            check_branch(v)?;
        }
        if let Some(v) = &input.project_root {
            check_project_root(v)?;
        }
        if let Some(v) = &input.tool_version {
            check_tool_version(v)?;
        }
        if let Some(s) = input.drift_schedule.as_deref().filter(|s| !s.is_empty()) {
            check_schedule(s)?;
        }
        let labels = input.labels.map(clean_labels).transpose()?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let stack = stack_for(c, &caller, &slug, Op::Write.role()).await?;
                let id = stack.id;
                let worker_pool_id = match &input.worker_pool {
                    None => None,
                    Some(name) => Some(pool_id(c, &caller, Some(name), stack.space_id).await?),
                };
                let details = json!({
                    "name": input.name, "description": input.description, "repository": input.repository,
                    "branch": input.branch, "project_root": input.project_root,
                    "tool": input.tool.map(|t| hangar_types::Tool::from(t).as_str()),
                    "tool_version": input.tool_version, "worker_pool": input.worker_pool,
                    "autodeploy": input.autodeploy, "labels": labels, "drift_schedule": input.drift_schedule,
                    "drift_reconcile": input.drift_reconcile,
                });
                let changes = StackChanges {
                    name: input.name,
                    description: input.description,
                    repository: input.repository,
                    branch: input.branch,
                    project_root: input.project_root,
                    tool: input.tool.map(|t| hangar_types::Tool::from(t).as_str().to_string()),
                    tool_version: input.tool_version,
                    worker_pool_id,
                    autodeploy: input.autodeploy,
                    labels: labels.clone(),
                    drift_schedule: input.drift_schedule.map(|s| Some(s).filter(|s| !s.is_empty())),
                    drift_reconcile: input.drift_reconcile,
                };
                let row = store::update_stack(c, id, &changes).await?;
                let details = match details {
                    serde_json::Value::Object(m) => {
                        serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
                    }
                    other => other,
                };
                audit::record(c, &caller.actor(), "stack.update", &format!("stack:{slug}"), details).await?;
                Ok(row)
            })
            .await?;
        Ok(Stack(row))
    }

    /// Puts a drifted stack's infrastructure back: queues a tracked run at
    /// the commit its last drift run planned (or answers the tracked run
    /// already under way). It applies by itself only with autodeploy.
    async fn reconcile_stack(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<super::types::Run> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let stack = stack_for(&mut c, &caller, &slug, Op::Write.role()).await?;
        let drift_run = match (stack.drift_detected_at, stack.drift_run_id) {
            (Some(_), Some(id)) => hangar_db::runs::get(&mut c, id).await.map_err(|e| ApiError::Internal(e.to_string()))?,
            _ => None,
        };
        let Some(drift_run) = drift_run else {
            return Err(ApiError::Refused(format!("stack {slug} is not drifted: its last drift run found nothing to put back")).into());
        };
        let run = crate::drift::reconcile(&mut c, &stack, &drift_run, &caller.actor(), "reconcile asked for")
            .await
            .map_err(ApiError::Internal)?;
        Ok(super::types::Run(run))
    }

    /// Deletes a stack with its runs and variables, and then the objects its
    /// runs left (logs, plans, errored state). A stack others depend on is
    /// refused, naming them; its own dependencies go with it.
    async fn delete_stack(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let s = slug.clone();
        let keys = c
            .transaction::<_, ApiError, _>(async move |c| {
                let id = stack_id(c, &caller, &s).await?;
                // Stacks below would lose an input without a word: they go first.
                dependencies::lock_graph(c).await?;
                let below = dependencies::dependents_of(c, id).await?;
                if !below.is_empty() {
                    let names: Vec<&str> = below.iter().map(|d| d.slug.as_str()).collect();
                    return Err(ApiError::Refused(format!(
                        "stack {s} is depended on by {}: remove those dependencies first",
                        names.join(", ")
                    )));
                }
                let keys = hangar_store::run_objects::keys_of_stack(c, id).await?;
                store::delete_stack(c, id).await?;
                audit::record(c, &caller.actor(), "stack.delete", &format!("stack:{s}"), json!({})).await?;
                Ok(keys)
            })
            .await?;
        hangar_store::run_objects::delete_objects(&app(ctx).objects, &slug, &keys).await;
        Ok(true)
    }

    /// Creates or replaces a variable of a stack. A secret value is sealed and
    /// can never be read back through the API.
    async fn set_stack_variable(
        &self,
        ctx: &Context<'_>,
        stack: String,
        name: String,
        value: String,
        secret: Option<bool>,
    ) -> async_graphql::Result<Variable> {
        Ok(set_variable(ctx, "stack", stack, name, value, secret.unwrap_or(false)).await?)
    }

    async fn delete_stack_variable(&self, ctx: &Context<'_>, stack: String, name: String) -> async_graphql::Result<bool> {
        Ok(delete_variable(ctx, "stack", stack, name).await?)
    }

    async fn create_context(
        &self,
        ctx: &Context<'_>,
        slug: String,
        name: String,
        #[graphql(default)] description: String,
        #[graphql(desc = "The space the context belongs to, by slug (the root when absent).")] space: Option<String>,
    ) -> async_graphql::Result<ContextObj> {
        let caller = caller(ctx)?.clone();
        check_slug("slug", &slug)?;
        check_text("name", &name, 1, 200)?;
        check_text("description", &description, 0, 2000)?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let space = space_for(c, &caller, space.as_deref(), Op::Write.role()).await?;
                let row = store::insert_context(c, &slug, &name, &description, space.id).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "context.create",
                    &format!("context:{slug}"),
                    json!({ "name": name, "space": space.slug }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(ContextObj(row))
    }

    async fn update_context(
        &self,
        ctx: &Context<'_>,
        slug: String,
        name: Option<String>,
        description: Option<String>,
    ) -> async_graphql::Result<ContextObj> {
        let caller = caller(ctx)?.clone();
        if let Some(n) = &name {
            check_text("name", n, 1, 200)?;
        }
        if let Some(d) = &description {
            check_text("description", d, 0, 2000)?;
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let id = context_id(c, &caller, &slug).await?;
                let row = store::update_context(c, id, name.as_deref(), description.as_deref()).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "context.update",
                    &format!("context:{slug}"),
                    json!({ "name": name, "description": description }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(ContextObj(row))
    }

    /// Deletes a context, its variables and its attachments.
    async fn delete_context(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        c.transaction::<_, ApiError, _>(async move |c| {
            let id = context_id(c, &caller, &slug).await?;
            store::delete_context(c, id).await?;
            audit::record(c, &caller.actor(), "context.delete", &format!("context:{slug}"), json!({})).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    async fn set_context_variable(
        &self,
        ctx: &Context<'_>,
        context: String,
        name: String,
        value: String,
        secret: Option<bool>,
    ) -> async_graphql::Result<Variable> {
        Ok(set_variable(ctx, "context", context, name, value, secret.unwrap_or(false)).await?)
    }

    async fn delete_context_variable(&self, ctx: &Context<'_>, context: String, name: String) -> async_graphql::Result<bool> {
        Ok(delete_variable(ctx, "context", context, name).await?)
    }

    /// Attaches a context to a stack (or changes its priority). Lower numbers
    /// take precedence.
    async fn attach_context(
        &self,
        ctx: &Context<'_>,
        stack: String,
        context: String,
        #[graphql(default = 0)] priority: i32,
    ) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        if !(-1000..=1000).contains(&priority) {
            return Err(ApiError::invalid("priority", "must be between -1000 and 1000").into());
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let target = stack_for(c, &caller, &stack, Op::Write.role()).await?;
                let sid = target.id;
                let used = context_for(c, &caller, &context, Role::Reader).await?;
                check_usable(c, "context", &context, used.space_id, target.space_id).await?;
                let cid = used.id;
                store::attach(c, sid, cid, priority).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "context.attach",
                    &format!("stack:{stack}"),
                    json!({ "context": context, "priority": priority }),
                )
                .await?;
                store::stack_by_id(c, sid).await?.ok_or_else(|| ApiError::not_found("stack", stack))
            })
            .await?;
        Ok(Stack(row))
    }

    /// Makes `stack` depend on `dependsOn` (or changes the outputs an
    /// existing dependency passes): a finished tracked run of `dependsOn`
    /// then starts `stack`'s, once all of `stack`'s dependencies are applied,
    /// and each of `outputs` is read from `dependsOn`'s latest state and given
    /// to `stack`'s runs as `TF_VAR_<input>`. A dependency that would close a
    /// cycle is refused with the cycle.
    async fn add_stack_dependency(
        &self,
        ctx: &Context<'_>,
        stack: String,
        depends_on: String,
        #[graphql(default)] outputs: Vec<DependencyOutput>,
    ) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        let refs = check_outputs(&outputs)?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let sid = stack_id(c, &caller, &stack).await?;
                // Its outputs flow into runs of `stack`: whoever adds the edge must see it.
                let on = stack_for(c, &caller, &depends_on, Role::Reader).await?.id;
                // An input set by two dependencies would be one's or the other's by chance.
                for d in dependencies::dependencies_of(c, sid).await? {
                    if d.on.id == on {
                        continue;
                    }
                    if let Some(r) = d.outputs.iter().find(|r| refs.iter().any(|n| n.input == r.input)) {
                        return Err(ApiError::invalid(
                            "outputs",
                            format!("input {:?} is already set by dependency {}", r.input, d.on.slug),
                        ));
                    }
                }
                match dependencies::add(c, sid, on, &refs).await? {
                    Ok(()) => {}
                    Err(Refusal::Cycle(cycle)) => {
                        return Err(ApiError::Refused(format!(
                            "stack {stack} cannot depend on {depends_on}: that would close the cycle {}",
                            cycle.join(" → ")
                        )));
                    }
                    Err(Refusal::TooMany) => {
                        return Err(ApiError::invalid(
                            "dependsOn",
                            format!("a stack may have at most {} dependencies", dependencies::MAX_DEPENDENCIES),
                        ));
                    }
                }
                audit::record(
                    c,
                    &caller.actor(),
                    "stack.depend",
                    &format!("stack:{stack}"),
                    json!({ "depends_on": depends_on, "outputs": refs }),
                )
                .await?;
                store::stack_by_id(c, sid).await?.ok_or_else(|| ApiError::not_found("stack", stack))
            })
            .await?;
        Ok(Stack(row))
    }

    /// Removes the dependency of `stack` on `dependsOn`.
    async fn remove_stack_dependency(&self, ctx: &Context<'_>, stack: String, depends_on: String) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let sid = stack_id(c, &caller, &stack).await?;
                let on = stack_for(c, &caller, &depends_on, Role::Reader).await?.id;
                if !dependencies::remove(c, sid, on).await? {
                    return Err(ApiError::not_found("dependency", format!("{stack} on {depends_on}")));
                }
                audit::record(c, &caller.actor(), "stack.undepend", &format!("stack:{stack}"), json!({ "depends_on": depends_on }))
                    .await?;
                store::stack_by_id(c, sid).await?.ok_or_else(|| ApiError::not_found("stack", stack))
            })
            .await?;
        Ok(Stack(row))
    }

    async fn detach_context(&self, ctx: &Context<'_>, stack: String, context: String) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let sid = stack_id(c, &caller, &stack).await?;
                let cid = context_for(c, &caller, &context, Role::Reader).await?.id;
                if !store::detach(c, sid, cid).await? {
                    return Err(ApiError::not_found("attachment", format!("{context} on {stack}")));
                }
                audit::record(c, &caller.actor(), "context.detach", &format!("stack:{stack}"), json!({ "context": context }))
                    .await?;
                store::stack_by_id(c, sid).await?.ok_or_else(|| ApiError::not_found("stack", stack))
            })
            .await?;
        Ok(Stack(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_checks() {
        assert!(check_slug("slug", "net-prod").is_ok());
        for bad in ["", "-x", "Net", "a b", "x'; DROP TABLE stacks; --"] {
            assert!(check_slug("slug", bad).is_err(), "{bad}");
        }
        assert!(check_tool_version("1.9.3").is_ok() && check_tool_version("1.10.0-rc1").is_ok());
        for bad in ["1.9", "latest", "1.9.3; rm -rf /", "1..3"] {
            assert!(check_tool_version(bad).is_err(), "{bad}");
        }
        assert!(check_project_root("envs/prod").is_ok() && check_project_root("").is_ok());
        for bad in ["/etc", "../x", "a/../../b", "a\\b"] {
            assert!(check_project_root(bad).is_err(), "{bad}");
        }
        assert!(check_schedule("*/15 * * * *").is_ok());
        assert!(check_schedule("every tuesday").is_err());
        assert!(check_variable("TF_VAR_token", "x").is_ok());
        assert!(check_variable("1X", "x").is_err() && check_variable("A-B", "x").is_err());
        assert_eq!(clean_labels(vec!["a".into(), "a".into(), "team:net".into()]).unwrap(), vec!["a", "team:net"]);
        assert!(clean_labels(vec!["has space".into()]).is_err());
    }
}
