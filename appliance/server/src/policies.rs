//! Policies at work: the plan policies a run's plan must pass before it may
//! wait for confirmation (or apply, or finish), the approval policies a run
//! awaiting confirmation must satisfy before `confirmRun` lets it go on, and
//! the trigger policies that name the stacks to start when a tracked run
//! ends.
//!
//! Each policy that applies to the run's stack (by hand or by label, see
//! `hangar_store::policies`) is evaluated at its latest version, on a thread
//! of its own under the evaluator's limits (`hangar_policy`), and every
//! evaluation is recorded with its input, sealed. An evaluation that fails
//! (time limit, a rule of the wrong type) counts as a denial, with its reason:
//! a policy that cannot decide never lets a run through.

use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use hangar_db::runs::RunRow;
use hangar_policy::{ApprovalInput, Evaluation, MessageLevel, Outcome, PlanInput, PlanSummary, Policy, PolicyKind};
use hangar_policy::{ReviewDecision, ReviewInput, RunInput, StackInput, TriggerInput};
use hangar_store::policies::{self, NewEvaluation, PolicyRow, PolicyVersionRow};
use hangar_store::stacks::StackRow;

use crate::App;

pub(crate) use hangar_store::policies::MAX_RECORDED_INPUT;

/// The longest run note a denial writes.
const MAX_NOTE: usize = 2000;

/// Policies could not be evaluated at all (the database, the object store).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyFailure {
    #[error("{0}")]
    Internal(String),
}

impl PolicyFailure {
    pub(crate) fn internal(what: &str, e: impl std::error::Error) -> PolicyFailure {
        PolicyFailure::Internal(format!("{what}: {}", hangar_types::error_chain(&e)))
    }
}

/// What the plan policies decided about a run.
#[derive(Debug, Default)]
pub(crate) struct PlanVerdict {
    /// One line per denying policy: which, which version, and why.
    pub(crate) denials: Vec<String>,
}

impl PlanVerdict {
    /// The run's failure note.
    pub(crate) fn note(&self) -> Option<String> {
        if self.denials.is_empty() {
            return None;
        }
        Some(self.denials.join(" / ").chars().take(MAX_NOTE).collect())
    }
}

/// What the approval policies decided about a run awaiting confirmation.
#[derive(Debug, Default)]
pub(crate) struct ApprovalVerdict {
    /// Why it may not be confirmed yet; empty when it may.
    pub(crate) blocking: Vec<String>,
}

/// The outcome of one policy, as recorded.
struct Decided {
    result: Result<Evaluation, String>,
    duration: Duration,
}

fn stack_input(s: &StackRow) -> StackInput {
    StackInput {
        id: s.id,
        slug: s.slug.clone(),
        name: s.name.clone(),
        labels: s.labels.clone(),
        branch: s.branch.clone(),
        repository: s.repository.clone(),
    }
}

async fn run_input(conn: &mut AsyncPgConnection, run: &RunRow) -> Result<RunInput, PolicyFailure> {
    let author = policies::author_of(conn, &run.triggered_by).await.map_err(|e| PolicyFailure::internal("finding a run's author", e))?;
    Ok(RunInput {
        id: run.id,
        kind: run.kind.clone(),
        state: run.state.clone(),
        commit_sha: run.commit_sha.clone(),
        branch: run.branch.clone(),
        triggered_by: run.triggered_by.clone(),
        author,
    })
}

async fn stack_of(conn: &mut AsyncPgConnection, run: &RunRow) -> Result<StackRow, PolicyFailure> {
    hangar_store::stacks::stack_by_id(conn, run.stack_id)
        .await
        .map_err(|e| PolicyFailure::internal("reading a run's stack", e))?
        .ok_or_else(|| PolicyFailure::Internal(format!("the stack of run {} is gone", run.id)))
}

/// Compiles `body` and evaluates it against `input` off the async runtime.
pub(crate) async fn evaluate(app: &App, kind: PolicyKind, body: String, input: std::sync::Arc<String>) -> Result<Evaluation, String> {
    let evaluator = app.policies.clone();
    tokio::task::spawn_blocking(move || {
        let policy = Policy::compile(kind, &body).map_err(|e| format!("the policy does not compile: {e}"))?;
        evaluator.json(&policy, &input).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the evaluation's task failed: {e}")))
}

/// Evaluates an already compiled policy against `input` off the async runtime.
pub(crate) async fn evaluate_compiled(app: &App, policy: Policy, input: std::sync::Arc<String>) -> Result<Evaluation, String> {
    let evaluator = app.policies.clone();
    tokio::task::spawn_blocking(move || evaluator.json(&policy, &input).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("the evaluation's task failed: {e}")))
}

/// Evaluates every policy of `attached` against `input` and records each.
async fn evaluate_all(
    app: &App,
    conn: &mut AsyncPgConnection,
    run: i64,
    kind: PolicyKind,
    attached: Vec<(PolicyRow, PolicyVersionRow)>,
    input: String,
) -> Result<Vec<(PolicyRow, PolicyVersionRow, Decided)>, PolicyFailure> {
    let input_bytes = input.len();
    let sealed = if input_bytes <= MAX_RECORDED_INPUT {
        Some(
            app.secrets
                .seal(conn, input.as_bytes(), &policies::input_context(run))
                .await
                .map_err(|e| PolicyFailure::internal("sealing a policy input", e))?,
        )
    } else {
        None
    };
    let input = std::sync::Arc::new(input);
    let mut out = Vec::with_capacity(attached.len());
    for (policy, version) in attached {
        let started = Instant::now();
        let result = evaluate(app, kind, version.body.clone(), input.clone()).await;
        let duration = started.elapsed();
        let (outcome, messages, error) = match &result {
            Ok(ev) => (ev.outcome.as_str(), serde_json::to_value(&ev.messages).unwrap_or_default(), None),
            Err(e) => ("error", serde_json::json!([]), Some(e.clone())),
        };
        policies::record_evaluation(
            conn,
            &NewEvaluation {
                run_id: Some(run),
                stack_id: None,
                policy_id: policy.id,
                policy_version_id: version.id,
                policy_name: policy.name.clone(),
                policy_version: version.version,
                kind: kind.as_str().to_string(),
                result: outcome.to_string(),
                messages,
                error,
                duration_us: i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
                input_bytes: input_bytes as i64,
                input: sealed.clone(),
            },
        )
        .await
        .map_err(|e| PolicyFailure::internal("recording a policy evaluation", e))?;
        tracing::info!(run_id = run, policy = %policy.name, version = version.version, result = outcome, micros = duration.as_micros() as u64, "policy evaluated");
        out.push((policy, version, Decided { result, duration }));
    }
    Ok(out)
}

/// Runs the plan policies of the run's stack against its plan JSON.
pub(crate) async fn check_plan(app: &App, run: &RunRow) -> Result<PlanVerdict, PolicyFailure> {
    let mut conn = app.db.get().await.map_err(|e| PolicyFailure::internal("connecting to the database", e))?;
    let stack = stack_of(&mut conn, run).await?;
    let attached = policies::applying_to(&mut conn, stack.id, &stack.labels, PolicyKind::Plan.as_str())
        .await
        .map_err(|e| PolicyFailure::internal("listing a stack's plan policies", e))?;
    if attached.is_empty() {
        return Ok(PlanVerdict::default());
    }
    let names = attached.iter().map(|(p, _)| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let plan = match crate::workers::plans::open_json(app, &mut conn, run.id).await? {
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return Ok(PlanVerdict {
                    denials: vec![format!("the plan JSON of the run does not parse ({e}): plan policies {names} cannot read it")],
                });
            }
        },
        None => {
            return Ok(PlanVerdict {
                denials: vec![format!(
                    "the worker sent no plan JSON (too large, or an older worker): plan policies {names} cannot read the plan"
                )],
            });
        }
    };
    let input = PlanInput { plan, run: run_input(&mut conn, run).await?, stack: stack_input(&stack) };
    let input = serde_json::to_string(&input).map_err(|e| PolicyFailure::internal("encoding a plan policy input", e))?;
    let decided = evaluate_all(app, &mut conn, run.id, PolicyKind::Plan, attached, input).await?;
    let mut verdict = PlanVerdict::default();
    for (policy, version, d) in decided {
        let who = format!("plan policy {} (version {})", policy.name, version.version);
        match d.result {
            Ok(ev) if ev.outcome == Outcome::Deny => {
                let why: Vec<&str> =
                    ev.messages.iter().filter(|m| m.level == MessageLevel::Deny).map(|m| m.text.as_str()).collect();
                verdict.denials.push(format!("denied by {who}: {}", why.join("; ")));
            }
            Ok(_) => {}
            Err(e) => verdict.denials.push(format!("{who} failed after {} ms: {e}", d.duration.as_millis())),
        }
    }
    Ok(verdict)
}

/// Runs the approval policies of the run's stack against its reviews so far,
/// on `conn`: the confirmation runs it in the transaction that holds the
/// run's row, so that no review lands between the decision and the confirm.
pub(crate) async fn check_approval(app: &App, conn: &mut AsyncPgConnection, run: &RunRow) -> Result<ApprovalVerdict, PolicyFailure> {
    let stack = stack_of(conn, run).await?;
    let attached = policies::applying_to(conn, stack.id, &stack.labels, PolicyKind::Approval.as_str())
        .await
        .map_err(|e| PolicyFailure::internal("listing a stack's approval policies", e))?;
    if attached.is_empty() {
        return Ok(ApprovalVerdict::default());
    }
    let run_in = run_input(conn, run).await?;
    let reviews = policies::reviews_of_run(conn, run.id)
        .await
        .map_err(|e| PolicyFailure::internal("reading a run's reviews", e))?
        .into_iter()
        .map(|r| ReviewInput {
            is_author: run_in.author.as_ref().map(|a| *a == r.reviewer),
            reviewer: r.reviewer,
            role: r.role,
            decision: if r.decision == "reject" { ReviewDecision::Reject } else { ReviewDecision::Approve },
            note: r.note,
            at: r.created_at.to_rfc3339(),
        })
        .collect();
    let plan = hangar_store::runs::outcome(conn, run.id)
        .await
        .map_err(|e| PolicyFailure::internal("reading a run's plan summary", e))?
        .and_then(|(changes, _)| changes)
        .and_then(|c| serde_json::from_value::<hangar_types::worker::Changes>(c).ok())
        .map(|c| PlanSummary { add: c.add, change: c.change, destroy: c.destroy, outputs: c.outputs });
    let input = ApprovalInput { run: run_in, stack: stack_input(&stack), plan, reviews };
    let input = serde_json::to_string(&input).map_err(|e| PolicyFailure::internal("encoding an approval policy input", e))?;
    let decided = evaluate_all(app, conn, run.id, PolicyKind::Approval, attached, input).await?;
    let mut verdict = ApprovalVerdict::default();
    for (policy, version, d) in decided {
        let who = format!("approval policy {} (version {})", policy.name, version.version);
        match d.result {
            Ok(ev) => match ev.outcome {
                Outcome::Approve => {}
                Outcome::Reject => verdict.blocking.push(format!("{who} rejects the run")),
                _ => verdict.blocking.push(format!("{who} has not approved the run yet")),
            },
            Err(e) => verdict.blocking.push(format!("{who} failed after {} ms: {e}", d.duration.as_millis())),
        }
    }
    Ok(verdict)
}

/// When tracked run `run` has ended on its worker (finished or failed), the
/// trigger policies of its stack name the stacks to start: each named
/// stack other than the run's own gets a `stack.trigger` job, which the
/// drain turns into a tracked run at the head of its branch. A policy starts
/// only stacks of its own space and the spaces below it (its input lists
/// only those): a name that is no such stack is logged and skipped; an
/// evaluation that fails starts nothing.
/// Returns the slugs of the stacks queued.
pub(crate) async fn fire_triggers(app: &App, conn: &mut AsyncPgConnection, run: &RunRow) -> Result<Vec<String>, PolicyFailure> {
    let stack = stack_of(conn, run).await?;
    let attached = policies::applying_to(conn, stack.id, &stack.labels, PolicyKind::Trigger.as_str())
        .await
        .map_err(|e| PolicyFailure::internal("listing a stack's trigger policies", e))?;
    if attached.is_empty() {
        return Ok(Vec::new());
    }
    // Each attached policy is of the stack's space or above it, so their
    // reaches nest: the widest is the reach of the highest one.
    let mut reach: std::collections::HashMap<i64, Vec<i64>> = std::collections::HashMap::new();
    for (p, _) in &attached {
        if let std::collections::hash_map::Entry::Vacant(slot) = reach.entry(p.space_id) {
            let below = hangar_store::spaces::descendants(conn, p.space_id)
                .await
                .map_err(|e| PolicyFailure::internal("reading a policy's spaces", e))?;
            slot.insert(below);
        }
    }
    let widest: std::collections::HashSet<i64> = reach.values().flatten().copied().collect();
    let all: Vec<_> = hangar_store::stacks::list_stacks(conn, None)
        .await
        .map_err(|e| PolicyFailure::internal("listing the stacks", e))?
        .into_iter()
        .filter(|s| widest.contains(&s.space_id))
        .collect();
    let input = TriggerInput { run: run_input(conn, run).await?, stack: stack_input(&stack), stacks: all.iter().map(stack_input).collect() };
    let input = serde_json::to_string(&input).map_err(|e| PolicyFailure::internal("encoding a trigger policy input", e))?;
    let decided = evaluate_all(app, conn, run.id, PolicyKind::Trigger, attached, input).await?;
    let mut queued = Vec::new();
    for (policy, version, d) in decided {
        let ev = match d.result {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(run_id = run.id, policy = %policy.name, version = version.version, error = %e, "a trigger policy failed: it starts nothing");
                continue;
            }
        };
        for slug in ev.messages.iter().filter(|m| m.level == MessageLevel::Trigger).map(|m| m.text.as_str()) {
            let within = reach.get(&policy.space_id);
            let Some(target) = all.iter().find(|s| s.slug == slug && within.is_some_and(|w| w.contains(&s.space_id))) else {
                tracing::warn!(run_id = run.id, policy = %policy.name, stack = %slug.chars().take(100).collect::<String>(), "a trigger policy named no stack of its space or below");
                continue;
            };
            if target.id == stack.id {
                tracing::warn!(run_id = run.id, policy = %policy.name, "a trigger policy named the run's own stack: skipped, it would start itself forever");
                continue;
            }
            let job = hangar_db::jobs::Job::TriggerStack(hangar_db::jobs::StackTrigger {
                stack: target.id,
                run: run.id,
                policy: policy.name.clone(),
            })
            .to_new()
            .unique_key(format!("trigger:{}:{}", run.id, target.id));
            hangar_db::queue::enqueue(conn, &job).await.map_err(|e| PolicyFailure::internal("queueing a triggered stack", e))?;
            queued.push(target.slug.clone());
        }
    }
    Ok(queued)
}

