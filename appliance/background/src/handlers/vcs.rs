//! VCS integrations in the drain: what a git server's events mean for stacks.
//!
//! - `vcs.delivery` parses a verified webhook delivery (enqueued raw by the
//!   server) and turns pushes into tracked runs and pull/merge requests into
//!   proposed runs, recording one line per event in the delivery log.
//! - `vcs.status` reports a run's state to the git server as a commit status;
//!   the `runs_vcs_status` trigger enqueues one on every state change of a run
//!   that came from a git server. Reporting never touches the run.
//! - `vcs.poll` (fired by the scheduler) lists every repository of the plain-git
//!   integrations' stacks with `git ls-remote` once per poll interval and turns
//!   moved branch heads into the same events a webhook would have sent.
//!
//! Every handler is idempotent: a delivery is acted on in one transaction with
//! its row marked processed, a status is sent only when the commit's state
//! moves, and a poll compares against the listing it stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_db::DbPool;
use hangar_db::jobs::{Delivery, Job, PollRepo, RunRef};
use hangar_db::queue::{self, JobError};
use hangar_db::runs::{self, NewRun, TransitionFailure};
use hangar_store::secrets::SecretBox;
use hangar_store::vcs::{self as store, DeliveryOutcome, IntegrationRow, Kind, LinkedStack};
use hangar_store::{StoreError, runs as run_store, stacks};
use hangar_types::{RunKind, RunState};
use hangar_vcs::{
    Base, CommitStatus, Credentials, Event, GitCache, LsRemote, PrAction, ProjectRoot, PullRequest, Push, RemoteRefs, StatusClient,
    StatusClientConfig, Touches, VcsConfig, commit_state,
};
use tracing::{info, warn};

use super::db_error;
use super::push_policy::{self, Choice, PushPolicies};

/// What the VCS handlers need beyond the database.
#[derive(Clone, Default)]
pub struct VcsContext {
    /// Opens integration tokens; without it (no `[secrets]` in the drain's
    /// configuration) statuses wait and polling goes without credentials.
    pub secrets: Option<Arc<SecretBox>>,
    pub config: VcsConfig,
    /// The server's public URL, for the link in commit statuses.
    pub public_url: Option<String>,
    /// Bare copies of repositories under the drain's data directory, to ask
    /// git what a push changed when its delivery does not list every path.
    pub git_cache: Option<Arc<GitCache>>,
    /// Evaluates push policies.
    pub policies: hangar_policy::Evaluator,
}

impl VcsContext {
    fn push_policies(&self) -> PushPolicies {
        PushPolicies { evaluator: self.policies.clone(), secrets: self.secrets.clone() }
    }
}

impl std::fmt::Debug for VcsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcsContext")
            .field("secrets", &self.secrets.is_some())
            .field("config", &self.config)
            .field("public_url", &self.public_url)
            .field("git_cache", &self.git_cache.as_ref().map(|c| c.dir().to_path_buf()))
            .finish()
    }
}

/// What git said about one push to one stack when the delivery did not list
/// every changed path.
#[derive(Debug, Clone)]
struct Verdict {
    touches: bool,
    /// Why, for the delivery log.
    note: String,
}

/// Verdicts by (stack, ref, pushed commit).
type Verdicts = HashMap<(i64, String, String), Verdict>;

fn verdict_key(stack: i64, push: &Push) -> (i64, String, String) {
    (stack, push.git_ref.clone(), push.after.clone().unwrap_or_default())
}

/// The host of an `https://` URL, lowercased; `None` for any other scheme.
fn https_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// How the drain reaches a stack's repository: the integration's token and CA
/// go only to the integration's own host, over HTTPS.
async fn remote_for(
    c: &mut AsyncPgConnection,
    ctx: &VcsContext,
    cache: &GitCache,
    integration: &IntegrationRow,
    repository: &str,
) -> Result<hangar_vcs::Remote, JobError> {
    let mut remote = hangar_vcs::Remote { url: repository.to_string(), credentials: None, ca_file: None };
    let same_host = https_host(repository).is_some() && https_host(repository) == https_host(&integration.base_url);
    if !same_host {
        return Ok(remote);
    }
    if let Some(pem) = &integration.ca_pem {
        let file = cache.dir().join(format!("ca-{}.pem", integration.id));
        std::fs::create_dir_all(cache.dir()).map_err(|e| JobError::from_error(&e))?;
        std::fs::write(&file, pem).map_err(|e| JobError::from_error(&e))?;
        remote.ca_file = Some(file);
    }
    if let Some(secrets) = &ctx.secrets {
        let opened = store::open(c, secrets, integration.id).await.map_err(|e| JobError::from_error(&e))?;
        if let Some(token) = opened.token {
            remote.credentials = Some(match &integration.username {
                Some(u) => Credentials::Basic { username: u.clone(), password: token },
                None => Credentials::Bearer(token),
            });
        }
    }
    Ok(remote)
}

/// Asks git, before any row is locked, about every push in `events` whose
/// delivery leaves open whether it touches a linked stack's project root:
/// `git diff --name-only` between the commits before and after it (for a new
/// branch, from its merge base with the stack's last tracked run or the
/// default branch).
async fn ask_git(
    c: &mut AsyncPgConnection,
    ctx: &VcsContext,
    integration: &IntegrationRow,
    events: &[Event],
) -> Result<Verdicts, JobError> {
    let mut verdicts = Verdicts::new();
    let pushes: Vec<&Push> = events
        .iter()
        .filter_map(|e| match e {
            Event::Push(p) if p.after.is_some() && !p.paths_complete => Some(p),
            _ => None,
        })
        .collect();
    if pushes.is_empty() {
        return Ok(verdicts);
    }
    let linked = store::stacks_of(c, integration.id, false).await.map_err(db_error)?;
    for push in pushes {
        let after = push.after.as_deref().unwrap_or_default();
        let branch = push.branch().unwrap_or_default();
        for stack in linked.iter().filter(|s| s.branch == branch && push.repository.matches_url(&s.repository)) {
            let Ok(root) = ProjectRoot::new(&stack.project_root) else { continue };
            if push.touches(&root) != Touches::Unknown {
                continue;
            }
            let Some(cache) = &ctx.git_cache else {
                let note = "the changed paths are not all known and the drain has no [drain] data_dir to ask git, so the run is made to be safe".to_string();
                verdicts.insert(verdict_key(stack.id, push), Verdict { touches: true, note });
                continue;
            };
            let (base, how) = match &push.before {
                Some(before) => (Base::Commit(before.clone()), format!("since {}", short(before))),
                None => {
                    let last = run_store::last_tracked_commit(c, stack.id, false).await.map_err(db_error)?;
                    (Base::NewBranch { known: last.into_iter().collect() }, String::new())
                }
            };
            let remote = remote_for(c, ctx, cache, integration, &stack.repository).await?;
            let verdict = match cache.changed_paths(&remote, &base, after, &root).await {
                Ok(diff) => {
                    let how = if how.is_empty() {
                        format!("since its merge base {} (a new branch)", short(&diff.base))
                    } else {
                        how
                    };
                    let n = diff.paths.len();
                    Verdict {
                        touches: n > 0,
                        note: format!("git diff {how}: {n} changed path{} under {root}", if n == 1 { "" } else { "s" }),
                    }
                }
                Err(e) => {
                    warn!(stack = %stack.slug, commit = %after, error = %hangar_types::error_chain(&e), "git could not tell what a push changed");
                    Verdict {
                        touches: true,
                        note: format!(
                            "git could not tell what the push changed, so the run is made to be safe: {}",
                            hangar_types::error_chain(&e)
                        ),
                    }
                }
            };
            verdicts.insert(verdict_key(stack.id, push), verdict);
        }
    }
    Ok(verdicts)
}

/// What a delivery led to.
#[derive(Debug, Default)]
struct Outcome {
    lines: Vec<String>,
    runs: Vec<i64>,
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Creates a run from a git server's event, with its origin and its first
/// commit status queued, in the caller's transaction.
async fn create_run(
    c: &mut AsyncPgConnection,
    integration: &IntegrationRow,
    stack: &LinkedStack,
    repository: &str,
    new: NewRun,
    pull_request: Option<i64>,
) -> Result<i64, StoreError> {
    let run = runs::create(c, &new, &format!("vcs:{}", integration.name)).await?;
    store::record_origin(c, run.id, integration.id, repository, pull_request).await?;
    if integration.kind().vendor().is_some() {
        queue::enqueue(c, &Job::VcsStatus(RunRef { run: run.id }).to_new()).await?;
    }
    info!(run = run.id, stack = %stack.slug, kind = %new.kind.as_str(), commit = %new.commit_sha, "run created from a VCS event");
    Ok(run.id)
}

/// What the branch and path rules make of a push to a stack: a tracked run
/// (with a note on how that was decided) or nothing (with the line saying why).
enum Default {
    Track { note: String },
    Ignore { line: String, reason: String },
}

fn default_for(stack: &LinkedStack, push: &Push, verdicts: &Verdicts, after: &str) -> (Default, Option<bool>) {
    let branch = push.branch().unwrap_or_default();
    let root = match ProjectRoot::new(&stack.project_root) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            return (Default::Ignore { line: format!("stack {}: {reason}; no run", stack.slug), reason }, None);
        }
    };
    let verdict = verdicts.get(&verdict_key(stack.id, push));
    let touches = match (push.touches(&root), verdict) {
        (Touches::Yes, _) => Some(true),
        (Touches::No, _) => Some(false),
        (Touches::Unknown, Some(v)) => Some(v.touches),
        (Touches::Unknown, None) => None,
    };
    if stack.branch != branch {
        let reason = format!("the stack tracks {}, not {branch}", stack.branch);
        return (Default::Ignore { line: format!("stack {}: push {} to {branch}: {reason}; ignored", stack.slug, short(after)), reason }, touches);
    }
    let decided = match (push.touches(&root), verdict) {
        (Touches::No, _) => {
            let reason = format!("the push changes nothing under {root}");
            Default::Ignore { line: format!("stack {}: push {} to {branch} changes nothing under {root}; ignored", stack.slug, short(after)), reason }
        }
        (Touches::Unknown, Some(v)) if !v.touches => Default::Ignore {
            line: format!("stack {}: push {} to {branch} changes nothing under {root} ({}); ignored", stack.slug, short(after), v.note),
            reason: format!("the push changes nothing under {root} ({})", v.note),
        },
        (Touches::Yes, _) => Default::Track { note: String::new() },
        (Touches::Unknown, Some(v)) => Default::Track { note: format!(" ({})", v.note) },
        (Touches::Unknown, None) => {
            Default::Track { note: " (the changed paths are not all known, so the run is made to be safe)".to_string() }
        }
    };
    (decided, touches)
}

async fn on_push(
    c: &mut AsyncPgConnection,
    policies: &PushPolicies,
    integration: &IntegrationRow,
    stacks: &[LinkedStack],
    push: &Push,
    verdicts: &Verdicts,
    out: &mut Outcome,
) -> Result<(), StoreError> {
    let branch = push.branch().unwrap_or_default();
    let Some(after) = push.after.as_deref() else {
        out.lines.push(format!("{}: no commit after the push; ignored", Event::Push(push.clone())));
        return Ok(());
    };
    let same_repo: Vec<&LinkedStack> = stacks.iter().filter(|s| push.repository.matches_url(&s.repository)).collect();
    if same_repo.is_empty() {
        out.lines.push(format!(
            "push to {branch} of {}: no stack linked to {} uses this repository; ignored",
            push.repository.full_name, integration.name
        ));
        return Ok(());
    }
    let mut considered = 0;
    for stack in same_repo {
        let (default, touches) = default_for(stack, push, verdicts, after);
        let (default_word, default_reason) = match &default {
            Default::Track { note } => ("track", format!("a push to the tracked branch that changes the project root{note}")),
            Default::Ignore { reason, .. } => ("ignore", reason.clone()),
        };
        let (choice, pending) = push_policy::decide(c, policies, stack, push, touches, (default_word, &default_reason)).await?;
        // Without push policies, only the stacks tracking the branch hear of it.
        if matches!(choice, Choice::NoPolicy) && stack.branch != branch {
            continue;
        }
        considered += 1;
        let (kind, note) = match (choice, default) {
            (Choice::NoPolicy | Choice::Undecided, Default::Ignore { line, .. }) => {
                out.lines.push(line);
                (None, String::new())
            }
            (Choice::NoPolicy | Choice::Undecided, Default::Track { note }) => (Some(RunKind::Tracked), note),
            (Choice::Ignore { by }, _) => {
                out.lines.push(format!("stack {}: {by} ignores push {} to {branch}; no run", stack.slug, short(after)));
                (None, String::new())
            }
            (Choice::Failed { why }, _) => {
                out.lines.push(format!("stack {}: {why}; no run for push {} to {branch}", stack.slug, short(after)));
                (None, String::new())
            }
            (Choice::Track { by }, _) if stack.branch != branch => {
                out.lines.push(format!(
                    "stack {}: {by} tracks push {} to {branch}, but the stack tracks {}: a tracked run applies only its own branch; no run",
                    stack.slug,
                    short(after),
                    stack.branch
                ));
                (None, String::new())
            }
            (Choice::Track { by }, _) => (Some(RunKind::Tracked), format!(" ({by} tracks it)")),
            (Choice::Propose { by }, _) => (Some(RunKind::Proposed), format!(" ({by} proposes it)")),
        };
        let run = match kind {
            Some(kind) => new_push_run(c, integration, stack, push, after, kind, &note, out).await?,
            None => None,
        };
        if let Some(pending) = pending {
            push_policy::record(c, policies, pending, run).await?;
        }
    }
    if considered == 0 {
        out.lines.push(format!(
            "push to {branch} of {}: no linked stack tracks branch {branch}; ignored",
            push.repository.full_name
        ));
    }
    Ok(())
}

/// Makes the run a push decided on, unless one of that kind already plans the
/// commit. Returns the run made.
#[allow(clippy::too_many_arguments)]
async fn new_push_run(
    c: &mut AsyncPgConnection,
    integration: &IntegrationRow,
    stack: &LinkedStack,
    push: &Push,
    after: &str,
    kind: RunKind,
    note: &str,
    out: &mut Outcome,
) -> Result<Option<i64>, StoreError> {
    let branch = push.branch().unwrap_or_default();
    // The same commit announced twice (a webhook and a poll, or a push and
    // a redelivery with a new id) makes one run.
    if let Some(existing) = run_store::live_run_at(c, stack.id, kind, after).await? {
        out.lines.push(format!("stack {}: run {existing} already plans {}; no second run", stack.slug, short(after)));
        return Ok(None);
    }
    let who = push.pusher.as_deref().map(|p| format!(" by {p}")).unwrap_or_default();
    let new = NewRun {
        stack_id: stack.id,
        kind,
        commit_sha: after.to_string(),
        branch: branch.to_string(),
        command: None,
        triggered_by: format!("push to {branch}{who} ({})", integration.name),
    };
    let id = create_run(c, integration, stack, &push.repository.full_name, new, None).await?;
    out.runs.push(id);
    let what = if kind == RunKind::Tracked { "tracked" } else { "proposed" };
    out.lines.push(format!("stack {}: {what} run {id} at {}{note}", stack.slug, short(after)));
    Ok(Some(id))
}

async fn on_pull_request(
    c: &mut AsyncPgConnection,
    integration: &IntegrationRow,
    stacks: &[LinkedStack],
    pr: &PullRequest,
    out: &mut Outcome,
) -> Result<(), StoreError> {
    let event = Event::PullRequest(pr.clone());
    if !matches!(pr.action, PrAction::Opened | PrAction::Updated | PrAction::Reopened) {
        out.lines.push(format!("{event}: nothing to plan; ignored"));
        return Ok(());
    }
    let same_repo: Vec<&LinkedStack> = stacks.iter().filter(|s| pr.repository.matches_url(&s.repository)).collect();
    if same_repo.is_empty() {
        out.lines.push(format!(
            "{event}: no stack linked to {} uses this repository; ignored",
            integration.name
        ));
        return Ok(());
    }
    let targets: Vec<&&LinkedStack> = same_repo.iter().filter(|s| s.branch == pr.base_ref).collect();
    if targets.is_empty() {
        out.lines.push(format!("{event}: no linked stack tracks branch {}; ignored", pr.base_ref));
        return Ok(());
    }
    let number = i64::try_from(pr.number).unwrap_or(i64::MAX);
    for stack in targets {
        if let Some(existing) = run_store::live_run_at(c, stack.id, RunKind::Proposed, &pr.head_sha).await? {
            out.lines.push(format!(
                "stack {}: proposed run {existing} already plans {}; no second run",
                stack.slug,
                short(&pr.head_sha)
            ));
            continue;
        }
        // Older proposed runs of this pull request that are still going plan a
        // commit nobody will merge any more.
        let older = store::live_proposed_runs(c, integration.id, &pr.repository.full_name, number, stack.id).await?;
        let cause = format!("superseded by {} pushed to pull request #{}", short(&pr.head_sha), pr.number);
        let actor = format!("vcs:{}", integration.name);
        for old in older {
            let state = runs::get(c, old).await?.map(|r| r.state());
            let to = match state {
                Some(s) if s.can_become(RunState::Canceled) => RunState::Canceled,
                Some(s) if s.can_become(RunState::Stopped) => RunState::Stopped,
                _ => continue,
            };
            match runs::transition(c, old, None, to, &cause, &actor).await {
                Ok(_) => out.lines.push(format!("stack {}: proposed run {old} {} ({cause})", stack.slug, to.as_str().to_lowercase())),
                Err(TransitionFailure::Db(e)) => return Err(e.into()),
                Err(e) => out.lines.push(format!("stack {}: proposed run {old} left as it is: {e}", stack.slug)),
            }
        }
        let who = pr.author.as_deref().map(|a| format!(" by {a}")).unwrap_or_default();
        let new = NewRun {
            stack_id: stack.id,
            kind: RunKind::Proposed,
            commit_sha: pr.head_sha.clone(),
            branch: pr.head_ref.clone(),
            command: None,
            triggered_by: format!("pull request #{}{who} ({})", pr.number, integration.name),
        };
        let id = create_run(c, integration, stack, &pr.repository.full_name, new, Some(number)).await?;
        out.runs.push(id);
        out.lines.push(format!(
            "stack {}: proposed run {id} at {} for pull request #{}",
            stack.slug,
            short(&pr.head_sha),
            pr.number
        ));
    }
    Ok(())
}

/// Acts on parsed events, in the caller's transaction.
async fn act(
    c: &mut AsyncPgConnection,
    policies: &PushPolicies,
    integration: &IntegrationRow,
    events: &[Event],
    verdicts: &Verdicts,
) -> Result<Outcome, StoreError> {
    // Locked: deliveries and polls acting on the same stacks serialize.
    let stacks = store::stacks_of(c, integration.id, true).await?;
    let mut out = Outcome::default();
    if events.is_empty() {
        out.lines.push("the delivery holds no event".into());
    }
    for event in events {
        match event {
            Event::Push(p) => on_push(c, policies, integration, &stacks, p, verdicts, &mut out).await?,
            Event::PullRequest(pr) => on_pull_request(c, integration, &stacks, pr, &mut out).await?,
            Event::BranchDeleted(_) | Event::Tag(_) | Event::Ping | Event::Other { .. } => {
                out.lines.push(format!("{event}: not acted on; ignored"));
            }
        }
    }
    Ok(out)
}

/// Writes what became of a delivery.
async fn finish_delivery(
    c: &mut AsyncPgConnection,
    row_id: i64,
    out: &Outcome,
    error: Option<String>,
) -> Result<(), StoreError> {
    let outcome = if error.is_some() {
        DeliveryOutcome::Failed
    } else if out.runs.is_empty() {
        DeliveryOutcome::Ignored
    } else {
        DeliveryOutcome::RunsCreated
    };
    let detail = (!out.lines.is_empty()).then(|| out.lines.join("\n"));
    store::finish_delivery(c, row_id, outcome, detail, &out.runs, error).await
}

pub(super) async fn delivery(pool: &DbPool, ctx: &VcsContext, job: Delivery) -> Result<(), JobError> {
    let Delivery { integration: integration_id, delivery, event, body } = job;
    let mut conn = pool.get().await.map_err(db_error)?;
    let Some(integration) = store::by_id(&mut conn, integration_id).await.map_err(db_error)? else {
        info!(integration = integration_id, delivery, "delivery of a deleted integration; dropped");
        return Ok(());
    };
    let Kind::Vendor(vendor) = integration.kind() else {
        return Err(JobError::permanent(format!("integration {} is plain git and takes no webhooks", integration.name)));
    };
    let parsed = hangar_vcs::parse(vendor, &event, body.as_bytes());
    let verdicts = match &parsed {
        Ok(events) => ask_git(&mut conn, ctx, &integration, events).await?,
        Err(_) => Verdicts::new(),
    };
    let integ = integration.clone();
    let policies = ctx.push_policies();
    let (d, e) = (delivery.clone(), event.clone());
    let summary = conn
        .transaction::<_, StoreError, _>(async move |c| {
            let Some(row) = store::lock_delivery(c, integ.id, &d, &e).await? else {
                return Ok(None);
            };
            let (out, error) = match &parsed {
                Ok(events) => (act(c, &policies, &integ, events, &verdicts).await?, None),
                Err(err) => (Outcome::default(), Some(err.to_string())),
            };
            finish_delivery(c, row, &out, error.clone()).await?;
            Ok(Some((out.runs.len(), out.lines.len(), error)))
        })
        .await
        .map_err(db_error)?;
    match summary {
        None => info!(integration = %integration.name, delivery, "delivery already processed"),
        Some((runs, events, None)) => {
            info!(integration = %integration.name, delivery, event, runs, events, "delivery processed")
        }
        Some((_, _, Some(error))) => warn!(integration = %integration.name, delivery, event, error, "delivery unreadable"),
    }
    Ok(())
}

/// A job failure out of a transaction, which needs `From<diesel::result::Error>`.
struct TxError(JobError);

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError(db_error(e))
    }
}

fn status_key(state: RunState) -> String {
    let (s, what) = commit_state(state);
    format!("{s:?}: {what}")
}

pub(super) async fn status(pool: &DbPool, ctx: &VcsContext, RunRef { run }: RunRef) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    conn.transaction::<_, TxError, _>(async move |c| report_status(c, ctx, run).await.map_err(TxError))
        .await
        .map_err(|TxError(e)| e)
}

/// Reports run `run_id`'s state when it differs from the last one reported.
/// The origin row stays locked meanwhile, so two reports for one run cannot
/// overtake each other.
async fn report_status(c: &mut AsyncPgConnection, ctx: &VcsContext, run_id: i64) -> Result<(), JobError> {
    let Some(origin) = store::lock_origin(c, run_id).await.map_err(db_error)? else { return Ok(()) };
    let Some(run) = runs::get(c, run_id).await.map_err(db_error)? else { return Ok(()) };
    let Some(integration) = store::by_id(c, origin.integration_id).await.map_err(db_error)? else { return Ok(()) };
    let Kind::Vendor(vendor) = integration.kind() else { return Ok(()) };
    let key = status_key(run.state());
    if origin.reported.as_deref() == Some(key.as_str()) {
        return Ok(());
    }
    let Some(secrets) = &ctx.secrets else {
        return Err(JobError::retry("the drain has no [secrets] section, so it cannot open the integration's API token"));
    };
    let opened = store::open(c, secrets, integration.id).await.map_err(|e| JobError::from_error(&e))?;
    let Some(token) = opened.token else {
        info!(run = run_id, integration = %integration.name, "no API token: commit status not reported");
        return Ok(());
    };
    let client = StatusClient::new(StatusClientConfig {
        vendor,
        base_url: integration.base_url.clone(),
        token,
        ca_pem: integration.ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
        timeout: ctx.config.status_timeout(),
    })
    .map_err(|e| JobError::permanent(hangar_types::error_chain(&e)))?;
    let Some(stack) = stacks::stack_by_id(c, run.stack_id).await.map_err(db_error)? else { return Ok(()) };
    let slug = stack.slug;
    let link = format!("{}/runs/{}", ctx.public_url.as_deref().unwrap_or("").trim_end_matches('/'), run.id);
    let status = CommitStatus::for_run(run.state(), &format!("hangar/{slug}"), &link);
    match client.report(&origin.repository, &run.commit_sha, &status).await {
        Ok(_) => {
            store::mark_reported(c, run_id, &key).await.map_err(db_error)?;
            info!(run = run_id, integration = %integration.name, state = %key, "commit status reported");
            Ok(())
        }
        Err(e) if e.is_retryable() => Err(JobError::retry(hangar_types::error_chain(&e))),
        Err(e) => {
            // A refusal (bad token, unknown commit) will not change by retrying;
            // the run goes on regardless.
            warn!(run = run_id, integration = %integration.name, error = %hangar_types::error_chain(&e), "commit status refused");
            Ok(())
        }
    }
}

pub(super) async fn poll(pool: &DbPool) -> Result<(), JobError> {
    let mut conn = pool.get().await.map_err(db_error)?;
    for (integration, repository) in store::poll_targets(&mut conn).await.map_err(db_error)? {
        let job = Job::VcsPollRepo(PollRepo { integration, repository }).to_new();
        queue::enqueue(&mut conn, &job).await.map_err(db_error)?;
    }
    Ok(())
}

/// Lists `repository`'s branches and tags with `integration`'s credentials
/// and CA (without one: anonymously, with git's trust store). The outer
/// error is the job's; the inner one is git's.
pub(super) async fn list_refs(
    conn: &mut AsyncPgConnection,
    ctx: &VcsContext,
    integration: Option<&IntegrationRow>,
    repository: &str,
) -> Result<Result<RemoteRefs, hangar_vcs::LsRemoteError>, JobError> {
    let mut req = LsRemote::new(repository);
    req.timeout = ctx.config.ls_remote_timeout();
    req.git = ctx.config.git.clone();
    let Some(integration) = integration else { return Ok(hangar_vcs::ls_remote(&req).await) };
    if let Some(secrets) = &ctx.secrets {
        let opened = store::open(conn, secrets, integration.id).await.map_err(|e| JobError::from_error(&e))?;
        if let Some(token) = opened.token {
            req.credentials = Some(match &integration.username {
                Some(u) => Credentials::Basic { username: u.clone(), password: token },
                None => Credentials::Bearer(token),
            });
        }
    }
    let ca_file = match &integration.ca_pem {
        Some(pem) => {
            let f = std::env::temp_dir().join(format!("hangar-vcs-ca-{}-{}.pem", integration.id, std::process::id()));
            std::fs::write(&f, pem).map_err(|e| JobError::from_error(&e))?;
            Some(f)
        }
        None => None,
    };
    req.ca_file = ca_file.clone();
    let listed = hangar_vcs::ls_remote(&req).await;
    if let Some(f) = ca_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(listed)
}


/// Lists one repository if its poll interval has passed, and acts on what moved
/// since the stored listing. The first listing is only stored: what existed
/// before polling began is not news.
pub(super) async fn poll_repository(pool: &DbPool, ctx: &VcsContext, job: PollRepo) -> Result<(), JobError> {
    let PollRepo { integration: integration_id, repository } = job;
    let repository = repository.as_str();
    let mut conn = pool.get().await.map_err(db_error)?;
    let Some(integration) = store::by_id(&mut conn, integration_id).await.map_err(db_error)? else { return Ok(()) };
    let previous = store::poll_heads(&mut conn, integration_id, repository, false).await.map_err(db_error)?;
    // A second of slack: the scheduler's ticks and the interval line up.
    let interval = chrono::Duration::from_std(ctx.config.poll_interval().saturating_sub(Duration::from_secs(1)))
        .unwrap_or(chrono::Duration::zero());
    if previous.as_ref().is_some_and(|(_, at)| Utc::now() - *at < interval) {
        return Ok(());
    }
    let current = match list_refs(&mut conn, ctx, Some(&integration), repository).await? {
        Ok(r) => r,
        Err(e) => {
            warn!(integration = %integration.name, error = %hangar_types::error_chain(&e), "poll failed");
            return Ok(());
        }
    };
    let stored = serde_json::to_value(&current).map_err(|e| JobError::from_error(&e))?;
    // git is asked before the listing row is locked; should another drain have
    // polled meanwhile, pushes it did not ask about make runs to be safe.
    let verdicts = match previous.as_ref().and_then(|(v, _)| serde_json::from_value::<RemoteRefs>(v.clone()).ok()) {
        Some(before) => ask_git(&mut conn, ctx, &integration, &hangar_vcs::poll_events(repository, &before, &current)).await?,
        None => Verdicts::new(),
    };
    let repo = repository.to_string();
    let integ = integration.clone();
    let policies = ctx.push_policies();
    let summary = conn
        .transaction::<_, StoreError, _>(async move |c| {
            // Locked so that two drains polling at once act on one change once.
            let locked = store::poll_heads(c, integ.id, &repo, true).await?;
            store::store_poll_heads(c, integ.id, &repo, &stored).await?;
            let Some(before) = locked.and_then(|(v, _)| serde_json::from_value::<RemoteRefs>(v).ok()) else {
                return Ok(None);
            };
            let events = hangar_vcs::poll_events(&repo, &before, &current);
            let pushes: Vec<Event> = events.into_iter().filter(|e| matches!(e, Event::Push(_))).collect();
            if pushes.is_empty() {
                return Ok(None);
            }
            let out = act(c, &policies, &integ, &pushes, &verdicts).await?;
            // Recorded like a delivery, so the log shows what polling found.
            let heads: Vec<String> = pushes
                .iter()
                .filter_map(|e| match e {
                    Event::Push(p) => Some(format!("{}@{}", p.git_ref, p.after.as_deref().map(short).unwrap_or(""))),
                    _ => None,
                })
                .collect();
            let id = format!("poll:{repo}:{}", heads.join(","));
            if let Some(row) = store::lock_delivery(c, integ.id, &id.chars().take(500).collect::<String>(), "poll").await? {
                finish_delivery(c, row, &out, None).await?;
            }
            Ok(Some(out.runs.len()))
        })
        .await
        .map_err(db_error)?;
    if let Some(runs) = summary {
        info!(integration = %integration.name, repository, runs, "poll found new commits");
    }
    Ok(())
}
