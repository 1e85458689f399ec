//! Runs and dead jobs. Every state change goes through `hangar_db::runs`, which
//! checks the one transition table and records the event; this module only
//! decides which transition an operator's request means.

use hangar_store::access::Op;
use async_graphql::{Context, ID, Json, Object};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_db::runs::{self as db_runs, NewRun, RunRow, TransitionFailure};
use hangar_types::{RunKind, RunState};
use serde_json::json;

use super::types::{DeadJob, Run, RunKindValue, RunPage, run_page};
use super::{ApiError, app, caller, check_in, conn, require, stack_for};
use hangar_store::{audit, stacks};
use crate::git;
use hangar_store::users::Caller;

/// Refuses `caller` unless they hold `needed` in the space of run `run`'s
/// stack; a run they cannot see does not exist.
pub(crate) async fn check_run(c: &mut AsyncPgConnection, caller: &Caller, run: i64, needed: hangar_types::Role) -> Result<(), ApiError> {
    super::gate(caller, needed)?;
    let missing = || ApiError::not_found("run", run.to_string());
    let row = db_runs::get(c, run).await?.ok_or_else(missing)?;
    let stack = stacks::stack_by_id(c, row.stack_id).await?.ok_or_else(missing)?;
    check_in(caller, stack.space_id, needed, "run", &run.to_string())
}

fn transition_error(run: i64, e: TransitionFailure, wanted: &str) -> ApiError {
    match e {
        TransitionFailure::NotFound(_) => ApiError::not_found("run", run.to_string()),
        TransitionFailure::NotAllowed { source, .. } => {
            ApiError::Refused(format!("run {run} is {}: {wanted}", source.from))
        }
        TransitionFailure::Db(d) => d.into(),
    }
}


/// The longest command a task may run.
const MAX_TASK_CHARS: usize = 4096;

/// Queues a run of `kind` on stack `stack` at `commit_sha` or the head of its
/// branch, for `caller`, audited.
async fn queue(
    ctx: &Context<'_>,
    caller: &Caller,
    stack: String,
    commit_sha: Option<String>,
    kind: RunKind,
    command: Option<String>,
) -> Result<Run, ApiError> {
    let commit = commit_sha.as_deref().map(check_sha).transpose()?;
    let app = app(ctx);
    let mut c = conn(ctx).await?;
    let s = stack_for(&mut c, caller, &stack, Op::Write.role()).await?;
    let commit = match commit {
        Some(c) => c,
        None => {
            // No connection is held while git talks to the repository.
            drop(c);
            let sha = git::resolve_branch(&s.repository, &s.branch, app.git_timeout)
                .await
                .map_err(|e| ApiError::Refused(format!("cannot resolve the head of branch {}: {e}", s.branch)))?;
            c = conn(ctx).await?;
            sha
        }
    };
    let actor = caller.actor();
    let new = NewRun {
        stack_id: s.id,
        kind,
        commit_sha: commit.clone(),
        branch: s.branch.clone(),
        command: command.clone(),
        triggered_by: actor.clone(),
    };
    let row = c
        .transaction::<_, ApiError, _>(async move |c| {
            let run = db_runs::create(c, &new, &actor).await?;
            audit::record(
                c,
                &actor,
                "run.trigger",
                &format!("run:{}", run.id),
                json!({ "stack": s.slug, "commit": commit, "kind": kind.as_str(), "command": command }),
            )
            .await?;
            Ok(run)
        })
        .await?;
    tracing::info!(run_id = row.id, stack = %stack, "run triggered");
    Ok(Run(row))
}

fn check_sha(sha: &str) -> Result<String, ApiError> {
    let sha = sha.to_ascii_lowercase();
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(ApiError::invalid("commitSha", "must be a full commit id (40 or 64 hexadecimal characters)"))
    }
}

/// Moves `run` from one of `from` to `to`, with its audit event, in one transaction.
async fn operate(
    c: &mut AsyncPgConnection,
    caller: &Caller,
    run: i64,
    from: &'static [RunState],
    to: RunState,
    action: &'static str,
    wanted: &'static str,
) -> Result<RunRow, ApiError> {
    let actor = caller.actor();
    c.transaction::<_, ApiError, _>(async move |c| {
        let cause = format!("{} by {actor}", action.trim_start_matches("run."));
        let row = db_runs::transition(c, run, Some(from), to, &cause, &actor)
            .await
            .map_err(|e| transition_error(run, e, wanted))?;
        audit::record(c, &actor, action, &format!("run:{run}"), json!({ "to": to.as_str() })).await?;
        Ok(row)
    })
    .await
}

#[derive(Default)]
pub struct RunsQuery;

#[Object]
impl RunsQuery {
    /// A stack's runs, newest first, `first` at a time.
    async fn runs(
        &self,
        ctx: &Context<'_>,
        stack: String,
        #[graphql(default = 20)] first: i32,
        after: Option<ID>,
    ) -> async_graphql::Result<RunPage> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let s = stack_for(&mut c, caller, &stack, Op::Read.role()).await?;
        drop(c);
        Ok(run_page(ctx, s.id, first, after).await?)
    }

    async fn run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Run>> {
        let caller = caller(ctx)?;
        let rid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        let Some(run) = db_runs::get(&mut c, rid).await.map_err(ApiError::from)? else { return Ok(None) };
        let stack = stacks::stack_by_id(&mut c, run.stack_id).await.map_err(ApiError::from)?;
        Ok(stack.filter(|s| caller.sees(s.space_id)).map(|_| Run(run)))
    }

    /// Jobs that failed every attempt, newest first (admin).
    async fn dead_jobs(&self, ctx: &Context<'_>, #[graphql(default = 50)] limit: i32) -> async_graphql::Result<Vec<DeadJob>> {
        require(ctx, Op::ManageJobs.role())?;
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 500").into());
        }
        let mut c = conn(ctx).await?;
        let rows = hangar_db::queue::dead_jobs(&mut c, i64::from(limit)).await.map_err(ApiError::from)?;
        Ok(rows
            .into_iter()
            .map(|j| DeadJob {
                id: ID(j.id.to_string()),
                queue: j.queue,
                kind: j.kind,
                payload: Json(j.payload),
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                last_error: j.last_error,
                created_at: j.created_at,
            })
            .collect())
    }
}

#[derive(Default)]
pub struct RunsMutation;

#[Object]
impl RunsMutation {
    /// Queues a run of a stack at `commitSha`, or at the head of the stack's
    /// branch (asked of the repository) when none is given: TRACKED (the
    /// default; may apply), PROPOSED (plans only, beside the tracked runs) or
    /// DRIFT (a drift check now, as the stack's drift schedule would).
    async fn trigger_run(
        &self,
        ctx: &Context<'_>,
        stack: String,
        commit_sha: Option<String>,
        #[graphql(default_with = "RunKindValue::Tracked")] kind: RunKindValue,
    ) -> async_graphql::Result<Run> {
        let caller = caller(ctx)?.clone();
        let kind = RunKind::from(kind);
        // Tasks need a command: runTask.
        if !matches!(kind, RunKind::Tracked | RunKind::Proposed | RunKind::Drift) {
            return Err(ApiError::invalid("kind", "must be TRACKED, PROPOSED or DRIFT (a task is started with runTask)").into());
        }
        Ok(queue(ctx, &caller, stack, commit_sha, kind, None).await?)
    }

    /// Runs a one-off command in the stack's workspace on a worker, after
    /// `terraform init` at the commit (the branch's head by default), e.g.
    /// `terraform state list` or `terraform import ADDR ID`: a TASK run, which
    /// holds the stack's lock like a tracked run, its output logged as any
    /// run's; it ends FINISHED when the command exits 0, FAILED otherwise.
    async fn run_task(
        &self,
        ctx: &Context<'_>,
        stack: String,
        command: String,
        commit_sha: Option<String>,
    ) -> async_graphql::Result<Run> {
        let caller = caller(ctx)?.clone();
        let command = command.trim().to_string();
        if command.is_empty() || command.chars().count() > MAX_TASK_CHARS {
            return Err(ApiError::invalid("command", format!("1 to {MAX_TASK_CHARS} characters")).into());
        }
        if command.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ApiError::invalid("command", "one line, without control characters").into());
        }
        Ok(queue(ctx, &caller, stack, commit_sha, RunKind::Task, Some(command)).await?)
    }

    /// Approves the plan of an UNCONFIRMED run: it goes on to apply. When
    /// approval policies apply to its stack, every one must approve (and none
    /// reject) first; otherwise the refusal says which and why.
    async fn confirm_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let caller = caller(ctx)?.clone();
        let rid = super::id(&id, "id")?;
        let app = app(ctx);
        let mut c = conn(ctx).await?;
        check_run(&mut c, &caller, rid, Op::Write.role()).await?;
        // The run's row stays locked from the policies' reading of the reviews
        // to the confirmation (a review takes the same lock), and a refusal
        // commits: its evaluations are kept.
        let outcome = c
            .transaction::<_, ApiError, _>(async |c| {
                let run = db_runs::get_locked(c, rid).await?.ok_or_else(|| ApiError::not_found("run", rid.to_string()))?;
                if run.state() == RunState::Unconfirmed {
                    let verdict =
                        crate::policies::check_approval(app, c, &run).await.map_err(|e| ApiError::Internal(e.to_string()))?;
                    if !verdict.blocking.is_empty() {
                        return Ok(Err(format!("run {rid} cannot be confirmed: {}", verdict.blocking.join("; "))));
                    }
                }
                let row = operate(
                    c,
                    &caller,
                    rid,
                    &[RunState::Unconfirmed],
                    RunState::Confirmed,
                    "run.confirm",
                    "only an UNCONFIRMED run can be confirmed",
                )
                .await?;
                Ok(Ok(row))
            })
            .await?;
        Ok(Run(outcome.map_err(ApiError::Refused)?))
    }

    /// Rejects the plan of an UNCONFIRMED run.
    async fn discard_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let caller = caller(ctx)?.clone();
        let rid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        check_run(&mut c, &caller, rid, Op::Write.role()).await?;
        let row = operate(
            &mut c,
            &caller,
            rid,
            &[RunState::Unconfirmed],
            RunState::Discarded,
            "run.discard",
            "only an UNCONFIRMED run can be discarded",
        )
        .await?;
        Ok(Run(row))
    }

    /// Stops a run: CANCELED before a worker took it, STOPPED while a worker
    /// prepares, plans or waits to apply. An apply is never interrupted.
    async fn cancel_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        const WAITING: &[RunState] = &[RunState::Queued, RunState::Ready];
        const ON_WORKER: &[RunState] =
            &[RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Confirmed];
        let caller = caller(ctx)?.clone();
        let rid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        check_run(&mut c, &caller, rid, Op::Write.role()).await?;
        // The row is locked while the state is read and changed: a worker
        // taking the run meanwhile makes it a stop rather than a refusal.
        let row = c
            .transaction::<_, ApiError, _>(async |c| {
                let run = db_runs::get_locked(c, rid).await?.ok_or_else(|| ApiError::not_found("run", rid.to_string()))?;
                let state = run.state();
                let wanted = "it can no longer be canceled";
                if WAITING.contains(&state) {
                    operate(c, &caller, rid, WAITING, RunState::Canceled, "run.cancel", wanted).await
                } else if ON_WORKER.contains(&state) {
                    operate(c, &caller, rid, ON_WORKER, RunState::Stopped, "run.cancel", wanted).await
                } else {
                    Err(ApiError::Refused(match state {
                        RunState::Applying => {
                            format!("run {rid} is APPLYING: an apply cannot be stopped (it could leave state and infrastructure apart); wait for it to finish or fail")
                        }
                        RunState::Unconfirmed => format!("run {rid} is UNCONFIRMED: discard it instead"),
                        other => format!("run {rid} already ended ({other})"),
                    }))
                }
            })
            .await?;
        Ok(Run(row))
    }

    /// Puts a dead job back in the queue with fresh attempts (admin).
    async fn retry_dead_job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let caller = require(ctx, Op::ManageJobs.role())?.clone();
        let jid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        c.transaction::<_, ApiError, _>(async move |c| {
            if !hangar_db::queue::requeue_dead(c, jid).await? {
                return Err(ApiError::not_found("dead job", jid.to_string()));
            }
            audit::record(c, &caller.actor(), "job.retry", &format!("job:{jid}"), json!({})).await?;
            Ok(true)
        })
        .await
        .map_err(Into::into)
    }
}

