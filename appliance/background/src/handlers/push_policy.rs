//! Push policies in the drain: when a push reaches the repository of a stack
//! that push policies apply to, they decide what it starts (`track`,
//! `propose`, `ignore`) in place of the branch and path rules, which remain
//! the answer when no policy decides.
//!
//! Every evaluation is recorded with its input, sealed, as the server records
//! plan and approval decisions: on the run the push made, or on the stack when
//! it made none. A policy that cannot decide (time limit, a rule of the wrong
//! type) makes no run: a failing policy must not let a push through, and it
//! must not silently drop the branch rule either, so the delivery log says
//! which policy failed and why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use hangar_policy::{Evaluator, Outcome, Policy, PolicyKind, PushEvent, PushInput, StackInput};
use hangar_store::StoreError;
use hangar_store::policies::{self, NewEvaluation, PolicyRow, PolicyVersionRow};
use hangar_store::secrets::SecretBox;
use hangar_store::vcs::LinkedStack;
use hangar_vcs::Push;
use tracing::info;

/// What push policies need in the drain.
#[derive(Clone, Debug, Default)]
pub struct PushPolicies {
    pub evaluator: Evaluator,
    /// Seals recorded inputs; without it, decisions are recorded without them.
    pub secrets: Option<Arc<SecretBox>>,
}

/// What the push policies of one stack decided about one push.
#[derive(Debug)]
pub(super) enum Choice {
    /// No policy applies: the branch and path rules decide.
    NoPolicy,
    /// Policies apply and none decided: the branch and path rules decide.
    Undecided,
    Track { by: String },
    Propose { by: String },
    Ignore { by: String },
    /// A policy could not decide: no run.
    Failed { why: String },
}

/// The evaluations behind a [`Choice`], recorded once the run (if any) exists.
pub(super) struct Pending {
    stack: i64,
    input: String,
    decided: Vec<(PolicyRow, PolicyVersionRow, Result<hangar_policy::Evaluation, String>, Duration)>,
}

/// Evaluates the push policies of `stack` against `push`. `default` is what
/// the branch and path rules would do (`track` or `ignore`) and why.
pub(super) async fn decide(
    c: &mut AsyncPgConnection,
    ctx: &PushPolicies,
    stack: &LinkedStack,
    push: &Push,
    touches: Option<bool>,
    default: (&str, &str),
) -> Result<(Choice, Option<Pending>), StoreError> {
    let attached = policies::applying_to(c, stack.id, &stack.labels, PolicyKind::Push.as_str()).await?;
    if attached.is_empty() {
        return Ok((Choice::NoPolicy, None));
    }
    let branch = push.branch().unwrap_or_default().to_string();
    let input = PushInput {
        push: PushEvent {
            repository: push.repository.full_name.clone(),
            tracked_branch: branch == stack.branch,
            branch,
            before: push.before.clone(),
            after: push.after.clone().unwrap_or_default(),
            pusher: push.pusher.clone(),
            paths: push.changed_paths.iter().cloned().collect(),
            paths_complete: push.paths_complete,
            touches_project_root: touches,
        },
        stack: StackInput {
            id: stack.id,
            slug: stack.slug.clone(),
            name: stack.name.clone(),
            labels: stack.labels.clone(),
            branch: stack.branch.clone(),
            repository: stack.repository.clone(),
        },
        project_root: stack.project_root.clone(),
        default: default.0.to_string(),
        default_reason: default.1.to_string(),
    };
    // Strings and booleans only: encoding cannot fail, and if it did the empty
    // input would fail every policy, which makes no run.
    let input = serde_json::to_string(&input).unwrap_or_default();
    let shared = Arc::new(input.clone());
    let mut decided = Vec::with_capacity(attached.len());
    for (policy, version) in attached {
        let started = Instant::now();
        let (evaluator, body, json) = (ctx.evaluator.clone(), version.body.clone(), shared.clone());
        let result = tokio::task::spawn_blocking(move || {
            let policy = Policy::compile(PolicyKind::Push, &body).map_err(|e| format!("the policy does not compile: {e}"))?;
            evaluator.json(&policy, &json).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the evaluation's task failed: {e}")));
        decided.push((policy, version, result, started.elapsed()));
    }
    let name = |p: &PolicyRow, v: &PolicyVersionRow| format!("push policy {} (version {})", p.name, v.version);
    let first = |outcome: Outcome| {
        decided.iter().find(|(_, _, r, _)| r.as_ref().is_ok_and(|ev| ev.outcome == outcome)).map(|(p, v, _, _)| name(p, v))
    };
    // A failure first, then the most cautious decision: ignoring over
    // tracking over proposing.
    let failed = decided.iter().find_map(|(p, v, r, d)| {
        r.as_ref().err().map(|e| format!("{} failed after {} ms: {e}", name(p, v), d.as_millis()))
    });
    let choice = if let Some(why) = failed {
        Choice::Failed { why }
    } else if let Some(by) = first(Outcome::Ignore) {
        Choice::Ignore { by }
    } else if let Some(by) = first(Outcome::Track) {
        Choice::Track { by }
    } else if let Some(by) = first(Outcome::Propose) {
        Choice::Propose { by }
    } else {
        Choice::Undecided
    };
    Ok((choice, Some(Pending { stack: stack.id, input, decided })))
}

/// Records the evaluations of a decision, on `run` when the push made one.
pub(super) async fn record(c: &mut AsyncPgConnection, ctx: &PushPolicies, pending: Pending, run: Option<i64>) -> Result<(), StoreError> {
    let input_bytes = pending.input.len();
    let sealed = match &ctx.secrets {
        Some(secrets) if input_bytes <= policies::MAX_RECORDED_INPUT => {
            let context = match run {
                Some(run) => policies::input_context(run),
                None => policies::push_input_context(pending.stack),
            };
            Some(secrets.seal(c, pending.input.as_bytes(), &context).await?)
        }
        _ => None,
    };
    for (policy, version, result, duration) in pending.decided {
        let (outcome, error) = match &result {
            Ok(ev) => (ev.outcome.as_str(), None),
            Err(e) => ("error", Some(e.clone())),
        };
        policies::record_evaluation(
            c,
            &NewEvaluation {
                run_id: run,
                stack_id: Some(pending.stack),
                policy_id: policy.id,
                policy_version_id: version.id,
                policy_name: policy.name.clone(),
                policy_version: version.version,
                kind: PolicyKind::Push.as_str().to_string(),
                result: outcome.to_string(),
                messages: serde_json::json!([]),
                error,
                duration_us: i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
                input_bytes: input_bytes as i64,
                input: sealed.clone(),
            },
        )
        .await?;
        info!(stack_id = pending.stack, run_id = run, policy = %policy.name, version = version.version, result = outcome, micros = duration.as_micros() as u64, "push policy evaluated");
    }
    Ok(())
}
