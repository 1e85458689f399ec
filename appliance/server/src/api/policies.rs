//! Policies through the API: creating and saving them (each save a new
//! version, refused with line and column when it does not compile),
//! attaching them to stacks, reviews of runs, and replaying a policy that is
//! not attached yet against the recorded inputs of past evaluations.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_policy::{Policy as Compiled, PolicyKind};
use hangar_store::access::Op;
use hangar_store::policies::{self as store, EvaluationRow, PolicyRow, PolicyVersionRow, ReviewRow};
use hangar_store::{audit, stacks};
use serde_json::json;

use super::types::{Run, Stack};
use super::{ApiError, app, caller, check_in, check_usable, conn, gate, space_for, stack_for};
use hangar_store::users::Caller;
use hangar_types::Role;

/// Most policies a `testPolicy` replays at once.
const MAX_REPLAY: i32 = 100;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum PolicyKindValue {
    /// Reads the plan: `deny` fails the run, `warn` is shown.
    Plan,
    /// Decides whether a run awaiting confirmation may be confirmed: `approve`/`reject`.
    Approval,
    /// When a tracked run of its stack ends: `trigger`, the slugs of the stacks to start.
    Trigger,
    /// When a push reaches its stack's repository: `track`, `propose` or `ignore`.
    Push,
}

impl PolicyKindValue {
    /// The kind as the database spells it.
    fn of(kind: &str) -> PolicyKindValue {
        match kind {
            "approval" => PolicyKindValue::Approval,
            "trigger" => PolicyKindValue::Trigger,
            "push" => PolicyKindValue::Push,
            _ => PolicyKindValue::Plan,
        }
    }
}

impl From<PolicyKindValue> for PolicyKind {
    fn from(k: PolicyKindValue) -> Self {
        match k {
            PolicyKindValue::Plan => PolicyKind::Plan,
            PolicyKindValue::Approval => PolicyKind::Approval,
            PolicyKindValue::Trigger => PolicyKind::Trigger,
            PolicyKindValue::Push => PolicyKind::Push,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ReviewDecisionValue {
    Approve,
    Reject,
}

impl ReviewDecisionValue {
    fn as_str(self) -> &'static str {
        match self {
            ReviewDecisionValue::Approve => "approve",
            ReviewDecisionValue::Reject => "reject",
        }
    }
}

#[derive(InputObject, Debug)]
pub struct PolicyInput {
    /// 1-100 of a-z, 0-9 and '-'.
    pub name: String,
    pub kind: PolicyKindValue,
    /// Rego v1, at most 128 KiB.
    pub body: String,
    #[graphql(default)]
    pub description: String,
    /// `autoattach:<stack label>` attaches the policy to every stack with that
    /// label, `autoattach:*` to every stack.
    #[graphql(default)]
    pub labels: Vec<String>,
    /// The space the policy belongs to, by slug (the root when absent).
    pub space: Option<String>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(ApiError::invalid("name", "must be 1-100 of a-z, 0-9 and '-', not starting with '-'")) }
}

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > 2000 || d.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid("description", "must be at most 2000 characters without control characters"));
    }
    Ok(())
}

fn clean_labels(labels: Vec<String>) -> Result<Vec<String>, ApiError> {
    if labels.len() > 50 {
        return Err(ApiError::invalid("labels", "at most 50"));
    }
    let mut out: Vec<String> = Vec::new();
    for l in labels {
        let ok = (1..=80).contains(&l.len())
            && (l == "autoattach:*" || l.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)));
        if !ok {
            return Err(ApiError::invalid("labels", format!("{:?} must be 1-80 of letters, digits and - _ . : / (or autoattach:*)", l.chars().take(80).collect::<String>())));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// Compiles `body` as a policy of `kind`: refused with line and column.
fn compile(kind: PolicyKind, body: &str) -> Result<Compiled, ApiError> {
    Compiled::compile(kind, body).map_err(|e| ApiError::invalid("body", format!("is refused: {e}")))
}

pub struct Policy(pub PolicyRow);

#[Object]
impl Policy {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> PolicyKindValue {
        PolicyKindValue::of(&self.0.kind)
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn labels(&self) -> &[String] {
        &self.0.labels
    }
    /// The space the policy belongs to; it applies to stacks of that space
    /// and the spaces below.
    async fn space(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<super::spaces::Space>> {
        super::spaces::space_object(ctx, self.0.space_id).await
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// Every saved version, newest first.
    async fn versions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<PolicyVersion>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::versions(&mut c, self.0.id).await.map_err(ApiError::from)?.into_iter().map(PolicyVersion).collect())
    }
    /// The stacks it is attached to by hand (label attachment is in `labels`).
    async fn stacks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Stack>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let mut out = Vec::new();
        for id in store::attached_stack_ids(&mut c, self.0.id).await.map_err(ApiError::from)? {
            if let Some(s) = stacks::stack_by_id(&mut c, id).await.map_err(ApiError::from)?.filter(|s| caller.sees(s.space_id)) {
                out.push(Stack(s));
            }
        }
        Ok(out)
    }
}

pub struct PolicyVersion(pub PolicyVersionRow);

#[Object]
impl PolicyVersion {
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn body(&self) -> &str {
        &self.0.body
    }
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A message of a plan policy.
#[derive(SimpleObject, Debug, Clone, serde::Deserialize)]
pub struct PolicyMessage {
    /// `deny` or `warn`.
    pub level: String,
    pub text: String,
}

/// One recorded evaluation of a policy for a run.
pub struct PolicyEvaluation(pub EvaluationRow);

#[Object]
impl PolicyEvaluation {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn policy_name(&self) -> &str {
        &self.0.policy_name
    }
    async fn policy_version(&self) -> i32 {
        self.0.policy_version
    }
    async fn kind(&self) -> PolicyKindValue {
        PolicyKindValue::of(&self.0.kind)
    }
    /// `pass`, `warn`, `deny`, `approve`, `reject`, `undecided` or `error`.
    async fn result(&self) -> &str {
        &self.0.result
    }
    async fn messages(&self) -> Vec<PolicyMessage> {
        serde_json::from_value(self.0.messages.clone()).unwrap_or_default()
    }
    /// Why the evaluation gave no decision (its time limit, a rule of the wrong type).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn duration_ms(&self) -> f64 {
        self.0.duration_us as f64 / 1000.0
    }
    /// The size of the input document; it is kept (sealed) for replay up to 8 MiB.
    async fn input_bytes(&self) -> i64 {
        self.0.input_bytes
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

pub struct RunReview(pub ReviewRow);

#[Object]
impl RunReview {
    async fn reviewer(&self) -> &str {
        &self.0.reviewer
    }
    async fn role(&self) -> &str {
        &self.0.role
    }
    async fn decision(&self) -> ReviewDecisionValue {
        if self.0.decision == "reject" { ReviewDecisionValue::Reject } else { ReviewDecisionValue::Approve }
    }
    async fn note(&self) -> &str {
        &self.0.note
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// What a policy would have decided about one recorded input.
#[derive(SimpleObject, Debug)]
pub struct PolicyReplay {
    /// The run decided about; null for a push that made no run.
    pub run_id: Option<ID>,
    /// The stack, for push decisions.
    pub stack_id: Option<ID>,
    pub evaluation_id: ID,
    /// The policy that was evaluated then, its version and its decision.
    pub recorded_policy: String,
    pub recorded_version: i32,
    pub recorded_result: String,
    /// What the tested policy decides; null when it could not (see `error`).
    pub result: Option<String>,
    pub messages: Vec<PolicyMessage>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

pub(crate) async fn evaluations_of(ctx: &Context<'_>, run: i64) -> async_graphql::Result<Vec<PolicyEvaluation>> {
    caller(ctx)?;
    let mut c = conn(ctx).await?;
    Ok(store::evaluations_of_run(&mut c, run).await.map_err(ApiError::from)?.into_iter().map(PolicyEvaluation).collect())
}

pub(crate) async fn reviews_of(ctx: &Context<'_>, run: i64) -> async_graphql::Result<Vec<RunReview>> {
    caller(ctx)?;
    let mut c = conn(ctx).await?;
    Ok(store::reviews_of_run(&mut c, run).await.map_err(ApiError::from)?.into_iter().map(RunReview).collect())
}

/// The policy `name`, when `caller` holds `needed` in its space.
async fn policy_by_name(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    name: &str,
    needed: Role,
) -> Result<PolicyRow, ApiError> {
    super::gate(caller, needed)?;
    let shown: String = name.chars().take(100).collect();
    let row = store::by_name(c, name).await?.ok_or_else(|| ApiError::not_found("policy", shown.clone()))?;
    check_in(caller, row.space_id, needed, "policy", &shown)?;
    Ok(row)
}

#[derive(Default)]
pub struct PoliciesQuery;

#[Object]
impl PoliciesQuery {
    /// Every policy, by name.
    async fn policies(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Policy>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = store::list(&mut c).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|p| caller.sees(p.space_id)).map(Policy).collect())
    }

    async fn policy(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<Option<Policy>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::by_name(&mut c, &name).await.map_err(ApiError::from)?.filter(|p| caller.sees(p.space_id)).map(Policy))
    }

    /// What `body`, a policy of `kind` not attached anywhere yet, would have
    /// decided for the inputs of the last `runs` recorded evaluations of that
    /// kind, newest first (admins: the inputs hold the plans; an admin of some
    /// spaces replays the decisions about their stacks).
    async fn test_policy(
        &self,
        ctx: &Context<'_>,
        kind: PolicyKindValue,
        body: String,
        #[graphql(default = 10)] runs: i32,
    ) -> async_graphql::Result<Vec<PolicyReplay>> {
        // The recorded inputs hold plans: an admin of the root replays them
        // all, an admin of some spaces those of their stacks.
        let caller = caller(ctx)?;
        gate(caller, Op::ManagePolicies.role())?;
        if !(1..=MAX_REPLAY).contains(&runs) {
            return Err(ApiError::invalid("runs", format!("must be between 1 and {MAX_REPLAY}")).into());
        }
        let kind = PolicyKind::from(kind);
        let policy = compile(kind, &body)?;
        let app = app(ctx);
        let mut c = conn(ctx).await?;
        let within: Option<Vec<i64>> = if caller.global().allows(Op::ManagePolicies.role()) {
            None
        } else {
            let all = hangar_store::spaces::list_spaces(&mut c).await.map_err(ApiError::from)?;
            Some(all.into_iter().map(|s| s.id).filter(|s| caller.may(*s, Op::ManagePolicies.role())).collect())
        };
        let recorded =
            store::recorded_inputs(&mut c, kind.as_str(), i64::from(runs), within.as_deref()).await.map_err(ApiError::from)?;
        let mut out = Vec::with_capacity(recorded.len());
        for r in recorded {
            let e = &r.evaluation;
            let mut replay = PolicyReplay {
                run_id: e.run_id.map(|r| ID(r.to_string())),
                stack_id: e.stack_id.map(|s| ID(s.to_string())),
                evaluation_id: ID(e.id.to_string()),
                recorded_policy: e.policy_name.clone(),
                recorded_version: e.policy_version,
                recorded_result: e.result.clone(),
                result: None,
                messages: Vec::new(),
                error: None,
                duration_ms: 0.0,
            };
            let Some(sealed) = r.input else {
                replay.error = Some(format!(
                    "the input ({} bytes) was over the {} bytes kept for replay",
                    e.input_bytes,
                    crate::policies::MAX_RECORDED_INPUT
                ));
                out.push(replay);
                continue;
            };
            let input = app
                .secrets
                .open(&mut c, &sealed, &store::recorded_input_context(e))
                .await
                .map_err(ApiError::from)?;
            let input = String::from_utf8(input).map_err(|_| ApiError::Internal(format!("evaluation {} has an input that is not UTF-8", e.id)))?;
            let started = std::time::Instant::now();
            match crate::policies::evaluate_compiled(app, policy.clone(), Arc::new(input)).await {
                Ok(ev) => {
                    replay.result = Some(ev.outcome.as_str().to_string());
                    replay.messages = ev
                        .messages
                        .into_iter()
                        .map(|m| PolicyMessage {
                            level: match m.level {
                                hangar_policy::MessageLevel::Deny => "deny".into(),
                                hangar_policy::MessageLevel::Warn => "warn".into(),
                                hangar_policy::MessageLevel::Trigger => "trigger".into(),
                            },
                            text: m.text,
                        })
                        .collect();
                }
                Err(err) => replay.error = Some(err),
            }
            replay.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            out.push(replay);
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct PoliciesMutation;

#[Object]
impl PoliciesMutation {
    /// Creates a policy with its first version (admin). A body that does not
    /// compile is refused with its line and column.
    async fn create_policy(&self, ctx: &Context<'_>, input: PolicyInput) -> async_graphql::Result<Policy> {
        let caller = caller(ctx)?.clone();
        check_name(&input.name)?;
        check_description(&input.description)?;
        let labels = clean_labels(input.labels)?;
        let kind = PolicyKind::from(input.kind);
        compile(kind, &input.body)?;
        let actor = caller.actor();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let space = space_for(c, &caller, input.space.as_deref(), Op::ManagePolicies.role()).await?;
                if store::by_name(c, &input.name).await?.is_some() {
                    return Err(ApiError::Conflict(format!("policy {:?} already exists", input.name)));
                }
                let new = store::NewPolicy {
                    name: &input.name,
                    kind: kind.as_str(),
                    description: &input.description,
                    labels: &labels,
                    space: space.id,
                };
                let (row, version) = store::create(c, new, &input.body, &actor).await?;
                audit::record(
                    c,
                    &actor,
                    "policy.create",
                    &format!("policy:{}", row.name),
                    json!({ "kind": row.kind, "version": version.version, "labels": row.labels, "space": space.slug }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(Policy(row))
    }

    /// Saves a policy (admin): a new body becomes its next version; labels
    /// and description change in place.
    async fn update_policy(
        &self,
        ctx: &Context<'_>,
        name: String,
        body: Option<String>,
        labels: Option<Vec<String>>,
        description: Option<String>,
    ) -> async_graphql::Result<Policy> {
        let caller = caller(ctx)?.clone();
        if let Some(d) = &description {
            check_description(d)?;
        }
        let labels = labels.map(clean_labels).transpose()?;
        let actor = caller.actor();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let current = policy_by_name(c, &caller, &name, Op::ManagePolicies.role()).await?;
                if let Some(b) = &body {
                    let kind: PolicyKind = current.kind.parse().map_err(ApiError::Internal)?;
                    compile(kind, b)?;
                }
                let (row, version) =
                    store::save(c, current.id, body.as_deref(), labels.as_deref(), description.as_deref(), &actor).await?;
                audit::record(
                    c,
                    &actor,
                    "policy.update",
                    &format!("policy:{}", row.name),
                    json!({ "version": version.map(|v| v.version), "labels": row.labels }),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(Policy(row))
    }

    /// Attaches a policy to a stack by hand (admin).
    async fn attach_policy(&self, ctx: &Context<'_>, policy: String, stack: String) -> async_graphql::Result<bool> {
        self.attachment(ctx, policy, stack, true).await
    }

    /// Detaches a hand-attached policy from a stack (admin); `false` when it was not attached by hand.
    async fn detach_policy(&self, ctx: &Context<'_>, policy: String, stack: String) -> async_graphql::Result<bool> {
        self.attachment(ctx, policy, stack, false).await
    }

    /// Reviews a run (writers): approve or reject it, with a note. A reviewer's
    /// latest review replaces the earlier one. The approval policies of the
    /// run's stack read the reviews when the run is to be confirmed.
    async fn review_run(
        &self,
        ctx: &Context<'_>,
        id: ID,
        decision: ReviewDecisionValue,
        #[graphql(default)] note: String,
    ) -> async_graphql::Result<Run> {
        let caller = caller(ctx)?.clone();
        let rid = super::id(&id, "id")?;
        if note.chars().count() > 2000 || note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::invalid("note", "must be at most 2000 characters without control characters").into());
        }
        let mut c = conn(ctx).await?;
        super::runs::check_run(&mut c, &caller, rid, Op::Write.role()).await?;
        let run = hangar_db::runs::get(&mut c, rid).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::not_found("run", rid.to_string()))?;
        // The role recorded with the review is the reviewer's in the run's space.
        let space = stacks::stack_by_id(&mut c, run.stack_id).await.map_err(ApiError::from)?.map_or(0, |s| s.space_id);
        let role = caller.access.role_in(space);
        if run.state().is_terminal() {
            return Err(ApiError::Refused(format!("run {rid} already ended ({}): it can no longer be reviewed", run.state())).into());
        }
        let actor = caller.actor();
        c.transaction::<_, ApiError, _>(async |c| {
            // One at a time with a confirmation of the run (see confirmRun).
            hangar_db::runs::get_locked(c, rid).await?;
            store::review(c, rid, caller.user_id, &caller.email, role.as_str(), decision.as_str(), &note).await?;
            audit::record(c, &actor, "run.review", &format!("run:{rid}"), json!({ "decision": decision.as_str() })).await?;
            Ok(())
        })
        .await?;
        Ok(Run(run))
    }
}

impl PoliciesMutation {
    async fn attachment(&self, ctx: &Context<'_>, policy: String, stack: String, attach: bool) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let changed = c
            .transaction::<_, ApiError, _>(async move |c| {
                let p = policy_by_name(c, &caller, &policy, Op::ManagePolicies.role()).await?;
                let shown: String = stack.chars().take(100).collect();
                let s = stack_for(c, &caller, &shown, Op::Write.role()).await?;
                if attach {
                    check_usable(c, "policy", &p.name, p.space_id, s.space_id).await?;
                }
                let changed = if attach { store::attach(c, s.id, p.id).await? } else { store::detach(c, s.id, p.id).await? };
                let action = if attach { "policy.attach" } else { "policy.detach" };
                audit::record(c, &actor, action, &format!("policy:{}", p.name), json!({ "stack": s.slug })).await?;
                Ok(changed)
            })
            .await?;
        Ok(changed)
    }
}
