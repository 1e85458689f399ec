//! The objects of the GraphQL schema, built from database rows. Fields that
//! need more data load it on demand, with the reader role checked again.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use hangar_db::runs::{RunEventRow, RunRow};
use hangar_store::dependencies::{Held, Standing};

use super::{ApiError, caller, conn};
use hangar_store::{self as store, pools::PoolRow, pools::WorkerRow, stacks::ContextRow, stacks::StackRow, stacks::VariableRow};

/// What the API shows instead of a secret value.
pub const MASK: &str = "********";

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "hangar_types::Role")]
pub enum UserRole {
    /// As a user's own role: nothing outside the spaces granted to them.
    NoAccess,
    Reader,
    Writer,
    Admin,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "hangar_types::Tool")]
pub enum IacTool {
    Terraform,
    Opentofu,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "hangar_types::RunState")]
pub enum RunStateValue {
    Queued,
    Ready,
    Preparing,
    Initializing,
    Planning,
    Unconfirmed,
    Confirmed,
    Applying,
    Finished,
    Failed,
    Discarded,
    Canceled,
    Stopped,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "hangar_types::RunKind")]
pub enum RunKindValue {
    Tracked,
    Proposed,
    Drift,
    Task,
}

#[derive(SimpleObject, Debug, Clone)]
pub struct User {
    pub id: ID,
    pub email: String,
    pub name: String,
    pub role: UserRole,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::users::UserRow> for User {
    fn from(u: store::users::UserRow) -> Self {
        User {
            id: ID(u.id.to_string()),
            role: u.role().into(),
            email: u.email,
            name: u.name,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(SimpleObject, Debug, Clone)]
#[graphql(complex)]
pub struct ApiKey {
    pub id: ID,
    pub name: String,
    /// The key's public part, to recognise it; the rest was shown once.
    pub prefix: String,
    pub role: UserRole,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub user_id: i64,
}

#[ComplexObject]
impl ApiKey {
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::users::get_user(&mut c, self.user_id).await.map_err(ApiError::from)?.map(User::from))
    }

    async fn active(&self) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > Utc::now())
    }
}

impl From<store::users::ApiKeyRow> for ApiKey {
    fn from(k: store::users::ApiKeyRow) -> Self {
        ApiKey {
            id: ID(k.id.to_string()),
            role: k.role().into(),
            name: k.name,
            prefix: format!("{}_{}", store::users::API_KEY_KIND, k.prefix),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            user_id: k.user_id,
        }
    }
}

#[derive(SimpleObject, Debug, Clone)]
pub struct Variable {
    pub id: ID,
    pub name: String,
    pub secret: bool,
    /// The value of a plain variable; a fixed mask for a secret one.
    pub value: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<VariableRow> for Variable {
    fn from(v: VariableRow) -> Self {
        Variable {
            id: ID(v.id.to_string()),
            value: if v.secret { MASK.to_string() } else { v.value.unwrap_or_default() },
            name: v.name,
            secret: v.secret,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// A variable as a run of the stack will see it, and where it comes from.
#[derive(SimpleObject, Debug, Clone)]
pub struct EffectiveVariable {
    pub name: String,
    pub secret: bool,
    pub value: String,
    /// `stack`, or `context:<slug>`.
    pub source: String,
}

pub struct Stack(pub StackRow);

/// A dependency of a stack.
#[derive(SimpleObject)]
pub struct StackDependency {
    /// The stack depended on.
    pub stack: Stack,
    /// Its outputs passed to the dependent's runs as `TF_VAR_<input>`.
    pub outputs: Vec<DependencyOutput>,
    pub standing: DependencyStanding,
}

#[derive(SimpleObject, InputObject, Clone)]
#[graphql(input_name = "DependencyOutputInput")]
pub struct DependencyOutput {
    /// The output of the dependency.
    pub output: String,
    /// The variable of the dependent it sets.
    pub input: String,
}

/// Where a dependency stands, from its newest tracked run.
#[derive(SimpleObject)]
pub struct DependencyStanding {
    /// `APPLIED`, `RUNNING`, `STOPPED` (its last apply did not finish) or `NEVER_APPLIED`.
    pub status: String,
    pub run_id: Option<ID>,
    pub run_state: Option<RunStateValue>,
}

impl From<Standing> for DependencyStanding {
    fn from(s: Standing) -> Self {
        let (status, run, state) = match s {
            Standing::Applied { run, .. } => ("APPLIED", Some(run), Some(hangar_types::RunState::Finished)),
            Standing::Running { run, state } => ("RUNNING", Some(run), Some(state)),
            Standing::Stopped { run, state, .. } => ("STOPPED", Some(run), Some(state)),
            Standing::NeverApplied => ("NEVER_APPLIED", None, None),
        };
        DependencyStanding { status: status.into(), run_id: run.map(|r| ID(r.to_string())), run_state: state.map(Into::into) }
    }
}

/// What holds a stack's chain of dependencies.
#[derive(SimpleObject)]
pub struct StackHold {
    /// `WAITING` (upstream is applying), `STOPPED` (an upstream apply did not
    /// finish) or `NEVER_APPLIED` (a dependency never applied).
    pub kind: String,
    /// The upstream stack.
    pub stack: String,
    pub run_id: Option<ID>,
    /// One line, as the console shows it.
    pub message: String,
}

impl From<Held> for StackHold {
    fn from(h: Held) -> Self {
        let kind = match h {
            Held::Waiting { .. } => "WAITING",
            Held::Stopped { .. } => "STOPPED",
            Held::NeverApplied { .. } => "NEVER_APPLIED",
        };
        let (stack, run) = h.upstream();
        let run = run.filter(|_| !h.is_veiled());
        StackHold { kind: kind.into(), stack: stack.to_string(), run_id: run.map(|r| ID(r.to_string())), message: h.message() }
    }
}

/// What a stack's last drift run found.
#[derive(SimpleObject)]
pub struct StackDrift {
    /// The last drift run found resources to change.
    pub drifted: bool,
    /// When a drift run last finished; null when none ever did.
    pub checked_at: Option<DateTime<Utc>>,
    /// Since when the stack is drifted.
    pub detected_at: Option<DateTime<Utc>>,
    /// The last drift run.
    pub run_id: Option<ID>,
    /// The resources whose real state differs from the configuration.
    pub resources: Vec<DriftedResource>,
}

#[derive(SimpleObject)]
pub struct DriftedResource {
    pub address: String,
    /// The plan's actions for it (`update`, `create`, `delete`, …).
    pub actions: Vec<String>,
}

#[Object]
impl Stack {
    /// The lock on this stack's Terraform state, if any: who holds it, for
    /// which run, since when.
    async fn state_lock(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<crate::state::api::StateLock>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let lock = crate::state::store::current_lock(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(lock.map(crate::state::api::StateLock::from))
    }
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn repository(&self) -> &str {
        &self.0.repository
    }
    async fn branch(&self) -> &str {
        &self.0.branch
    }
    async fn project_root(&self) -> &str {
        &self.0.project_root
    }
    async fn tool(&self) -> IacTool {
        self.0.tool.parse::<hangar_types::Tool>().unwrap_or(hangar_types::Tool::Terraform).into()
    }
    async fn tool_version(&self) -> &str {
        &self.0.tool_version
    }
    async fn autodeploy(&self) -> bool {
        self.0.autodeploy
    }
    async fn labels(&self) -> &[String] {
        &self.0.labels
    }
    async fn drift_schedule(&self) -> Option<&str> {
        self.0.drift_schedule.as_deref()
    }
    /// Set when an apply lost its worker: state may not match reality.
    async fn needs_reconciliation(&self) -> bool {
        self.0.needs_reconciliation
    }
    /// A drift found queues a tracked run that puts things back.
    async fn drift_reconcile(&self) -> bool {
        self.0.drift_reconcile
    }
    /// What the last drift run found.
    async fn drift(&self) -> StackDrift {
        StackDrift {
            drifted: self.0.drift_detected_at.is_some(),
            checked_at: self.0.drift_checked_at,
            detected_at: self.0.drift_detected_at,
            run_id: self.0.drift_run_id.map(|id| ID(id.to_string())),
            resources: self
                .0
                .drifted()
                .into_iter()
                .map(|r| DriftedResource { address: r.address, actions: r.actions })
                .collect(),
        }
    }
    /// The stacks this one depends on, with the outputs each passes and
    /// where each stands.
    async fn depends_on(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<StackDependency>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let deps = hangar_store::dependencies::dependencies_of(&mut c, self.0.id).await.map_err(ApiError::from)?;
        let mut standings = hangar_store::dependencies::standings(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(deps
            .into_iter()
            .filter(|d| who.sees(d.on.space_id))
            .map(|d| {
                let standing = standings.remove(&d.on.id).unwrap_or(Standing::NeverApplied);
                StackDependency {
                    outputs: d.outputs.into_iter().map(|o| DependencyOutput { output: o.output, input: o.input }).collect(),
                    standing: standing.into(),
                    stack: Stack(d.on),
                }
            })
            .collect())
    }
    /// The stacks that depend on this one directly.
    async fn dependents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Stack>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = hangar_store::dependencies::dependents_of(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().filter(|s| who.sees(s.space_id)).map(Stack).collect())
    }
    /// What upstream holds this stack's chain, the nearest first: a stack
    /// still applying, one whose last apply did not finish, or a dependency
    /// never applied. Null when everything upstream is applied.
    async fn held(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<StackHold>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let held = hangar_store::dependencies::held_as_seen(&mut c, self.0.id, |s| who.sees(s)).await.map_err(ApiError::from)?;
        Ok(held.map(StackHold::from))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The space the stack belongs to.
    async fn space(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<super::spaces::Space>> {
        super::spaces::space_object(ctx, self.0.space_id).await
    }

    async fn worker_pool(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<WorkerPool>> {
        let who = caller(ctx)?;
        let Some(id) = self.0.worker_pool_id else { return Ok(None) };
        let pool = match ctx.data_opt::<super::PoolDirectory>() {
            Some(pools) => pools.get(ctx, id).await?,
            None => store::pools::pool_by_id(&mut *conn(ctx).await?, id).await.map_err(ApiError::from)?,
        };
        Ok(pool.filter(|p| who.sees(p.space_id)).map(WorkerPool))
    }

    async fn variables(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Variable>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = store::stacks::variables_of(&mut c, store::stacks::Owner::Stack(self.0.id))
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(Variable::from).collect())
    }

    /// Attached contexts, highest precedence (lowest priority number) first.
    async fn contexts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ContextAttachment>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = store::stacks::attachments_of_stack(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(rows
            .into_iter()
            .filter(|(_, context)| who.sees(context.space_id))
            .map(|(priority, context)| ContextAttachment { priority, context: ContextObj(context) })
            .collect())
    }

    /// The environment a run of this stack gets: its own variables over those of
    /// its contexts, contexts in priority order.
    async fn effective_variables(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<EffectiveVariable>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let mut out: Vec<EffectiveVariable> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let own = store::stacks::variables_of(&mut c, store::stacks::Owner::Stack(self.0.id))
            .await
            .map_err(ApiError::from)?;
        let mut layers = vec![("stack".to_string(), own)];
        for (_, context) in store::stacks::attachments_of_stack(&mut c, self.0.id).await.map_err(ApiError::from)? {
            let vars = store::stacks::variables_of(&mut c, store::stacks::Owner::Context(context.id))
                .await
                .map_err(ApiError::from)?;
            // A context of a space above that the caller cannot see still
            // shapes the environment, but its name stays unsaid.
            let source = if who.sees(context.space_id) { format!("context:{}", context.slug) } else { "context".to_string() };
            layers.push((source, vars));
        }
        for (source, vars) in layers {
            for v in vars {
                if seen.insert(v.name.clone()) {
                    let shown = Variable::from(v);
                    out.push(EffectiveVariable { name: shown.name, secret: shown.secret, value: shown.value, source: source.clone() });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Newest first; `after` is the `nextCursor` of the previous page.
    async fn runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
        after: Option<ID>,
    ) -> async_graphql::Result<RunPage> {
        Ok(run_page(ctx, self.0.id, first, after).await?)
    }
}

pub(crate) async fn run_page(ctx: &Context<'_>, stack_id: i64, first: i32, after: Option<ID>) -> Result<RunPage, ApiError> {
    caller(ctx)?;
    if !(1..=100).contains(&first) {
        return Err(ApiError::invalid("first", "must be between 1 and 100"));
    }
    let before = after.as_ref().map(|a| super::id(a, "after")).transpose()?;
    let mut c = conn(ctx).await?;
    let mut rows = store::runs::list_for_stack(&mut c, stack_id, i64::from(first) + 1, before).await?;
    let more = rows.len() > first as usize;
    rows.truncate(first as usize);
    let next_cursor = if more { rows.last().map(|r| ID(r.id.to_string())) } else { None };
    Ok(RunPage { items: rows.into_iter().map(Run).collect(), next_cursor })
}

#[derive(SimpleObject)]
pub struct ContextAttachment {
    pub priority: i32,
    pub context: ContextObj,
}

#[derive(SimpleObject)]
pub struct StackAttachment {
    pub priority: i32,
    pub stack: Stack,
}

pub struct ContextObj(pub ContextRow);

#[Object(name = "Context")]
impl ContextObj {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn variables(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Variable>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = store::stacks::variables_of(&mut c, store::stacks::Owner::Context(self.0.id))
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(Variable::from).collect())
    }
    async fn stacks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<StackAttachment>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = store::stacks::stacks_of_context(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().filter(|(_, s)| who.sees(s.space_id)).map(|(priority, s)| StackAttachment { priority, stack: Stack(s) }).collect())
    }
}

pub struct WorkerPool(pub PoolRow);

#[Object]
impl WorkerPool {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Bumped by every reset; workers of an older generation are no longer accepted.
    async fn generation(&self) -> i32 {
        self.0.generation
    }
    /// The space the pool belongs to.
    async fn space(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<super::spaces::Space>> {
        super::spaces::space_object(ctx, self.0.space_id).await
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn workers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Worker>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = store::pools::list_workers(&mut c, Some(self.0.id)).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(|w| Worker { row: w, pool_generation: Some(self.0.generation) }).collect())
    }
}

pub struct Worker {
    pub row: WorkerRow,
    /// The pool's current generation, when known.
    pub pool_generation: Option<i32>,
}

#[Object]
impl Worker {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.row.name
    }
    /// idle, busy, drained or offline; `revoked` once revoked, `stale` when its
    /// pool was reset after it registered.
    async fn status(&self) -> String {
        if self.row.revoked_at.is_some() {
            "revoked".into()
        } else if self.pool_generation.is_some_and(|g| g > self.row.pool_generation) {
            "stale".into()
        } else {
            self.row.status.clone()
        }
    }
    async fn pool_generation(&self) -> i32 {
        self.row.pool_generation
    }
    async fn cert_not_after(&self) -> DateTime<Utc> {
        self.row.cert_not_after
    }
    async fn registered_at(&self) -> DateTime<Utc> {
        self.row.registered_at
    }
    async fn last_seen_at(&self) -> Option<DateTime<Utc>> {
        self.row.last_seen_at
    }
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.row.revoked_at
    }
    async fn pool(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<WorkerPool>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::pools::pool_by_id(&mut c, self.row.pool_id).await.map_err(ApiError::from)?.filter(|p| who.sees(p.space_id)).map(WorkerPool))
    }
}

pub struct Run(pub RunRow);

#[Object]
impl Run {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> RunKindValue {
        self.0.kind().into()
    }
    async fn state(&self) -> RunStateValue {
        self.0.state().into()
    }
    async fn commit_sha(&self) -> &str {
        &self.0.commit_sha
    }
    /// The commit's subject (first line of its message, at most 500
    /// characters), once a worker checked the commit out.
    async fn commit_message(&self) -> Option<&str> {
        self.0.commit_message.as_deref()
    }
    async fn branch(&self) -> &str {
        &self.0.branch
    }
    async fn command(&self) -> Option<&str> {
        self.0.command.as_deref()
    }
    async fn triggered_by(&self) -> &str {
        &self.0.triggered_by
    }
    async fn failure_reason(&self) -> Option<&str> {
        self.0.failure_reason.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn stack(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Stack>> {
        let who = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::stacks::stack_by_id(&mut c, self.0.stack_id).await.map_err(ApiError::from)?.filter(|s| who.sees(s.space_id)).map(Stack))
    }
    /// Every state the run went through, oldest first.
    async fn events(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunEvent>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let rows = hangar_db::runs::events(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(RunEvent).collect())
    }
    /// What the plan changes, once planning ended; null before and for runs
    /// that never planned.
    async fn changes(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<RunChanges>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let reported = store::runs::outcome(&mut c, self.0.id).await.map_err(ApiError::from)?;
        let Some((Some(json), _)) = reported else { return Ok(None) };
        // Written by the worker API from the same type; unreadable means not reported.
        Ok(serde_json::from_value::<hangar_types::worker::Changes>(json).ok().map(RunChanges::from))
    }
    /// Every policy evaluation of the run, oldest first: plan policies when
    /// its plan was ready, approval policies at each review and confirmation.
    async fn policy_evaluations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<super::policies::PolicyEvaluation>> {
        super::policies::evaluations_of(ctx, self.0.id).await
    }
    /// The run's reviews, oldest first (each reviewer's latest).
    async fn reviews(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<super::policies::RunReview>> {
        super::policies::reviews_of(ctx, self.0.id).await
    }
    /// Whether Terraform could not save the state during the apply and its
    /// `errored.tfstate` was stored on the appliance (sealed) for an operator.
    async fn errored_state_uploaded(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let reported = store::runs::outcome(&mut c, self.0.id).await.map_err(ApiError::from)?;
        Ok(reported.is_some_and(|(_, errored)| errored))
    }
}

/// A plan's change summary, as the worker reported it.
#[derive(SimpleObject, Debug, Clone, Copy)]
pub struct RunChanges {
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
    /// Output values the plan changes.
    pub outputs: u32,
}

impl From<hangar_types::worker::Changes> for RunChanges {
    fn from(c: hangar_types::worker::Changes) -> Self {
        RunChanges { add: c.add, change: c.change, destroy: c.destroy, outputs: c.outputs }
    }
}

pub struct RunEvent(pub RunEventRow);

#[Object]
impl RunEvent {
    async fn from_state(&self) -> Option<RunStateValue> {
        self.0.from_state.as_deref().and_then(|s| s.parse::<hangar_types::RunState>().ok()).map(Into::into)
    }
    async fn to_state(&self) -> RunStateValue {
        self.0.to_state.parse::<hangar_types::RunState>().unwrap_or(hangar_types::RunState::Failed).into()
    }
    async fn cause(&self) -> &str {
        &self.0.cause
    }
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

#[derive(SimpleObject)]
pub struct RunPage {
    pub items: Vec<Run>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<ID>,
}

#[derive(SimpleObject)]
pub struct DeadJob {
    pub id: ID,
    pub queue: String,
    pub kind: String,
    pub payload: Json<serde_json::Value>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct AuditEvent {
    pub id: ID,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: Json<serde_json::Value>,
    pub at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    pub next_cursor: Option<ID>,
}
