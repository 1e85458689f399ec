//! A run's page (state, timeline, plan summary, policy decisions and reviews, logs) and what a writer does
//! there (confirm, discard, cancel), each an API operation; and the stream of
//! run changes that live pages follow.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use hangar_types::RunState;
use hangar_types::worker::Phase;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::sse::Event;

use super::{Session, html, not_found, op_error, see_other, unavailable};
use crate::Console;
use hangar_store::console as queries;
use crate::view::{Badge, Frame, Viewer, When, duration, state_class};

/// Log text rendered into the page per phase; the download has all of it.
const PAGE_LOG_BYTES: usize = 2 * 1024 * 1024;

pub(crate) struct RunView {
    pub(crate) id: i64,
    pub(crate) badge: Badge,
    pub(crate) kind: String,
    pub(crate) branch: String,
    pub(crate) commit_short: String,
    /// The commit's subject, once a worker read it (text from git: escaped).
    pub(crate) commit_message: Option<String>,
    pub(crate) triggered_by: String,
    pub(crate) when: When,
}

pub(crate) struct Step {
    pub(crate) state: String,
    pub(crate) class: &'static str,
    pub(crate) when: When,
    pub(crate) duration: Option<String>,
    pub(crate) current: bool,
}

pub(crate) struct PhaseLog {
    pub(crate) name: &'static str,
    pub(crate) title: &'static str,
    /// Escaped text in styled spans (see `ansi`).
    pub(crate) html: String,
    pub(crate) chunks: u64,
    pub(crate) empty: bool,
}

pub(crate) struct Changes {
    pub(crate) add: u32,
    pub(crate) change: u32,
    pub(crate) destroy: u32,
    pub(crate) outputs: u32,
}

/// One recorded policy evaluation, as the run page lists it.
pub(crate) struct PolicyView {
    pub(crate) name: String,
    pub(crate) version: i32,
    pub(crate) kind: String,
    pub(crate) result: Badge,
    /// `(deny|warn, text)`
    pub(crate) messages: Vec<(String, String)>,
    pub(crate) error: Option<String>,
    pub(crate) millis: String,
    pub(crate) when: When,
}

pub(crate) struct ReviewView {
    pub(crate) reviewer: String,
    pub(crate) decision: Badge,
    pub(crate) note: String,
    pub(crate) when: When,
}

fn policy_view(e: hangar_store::policies::EvaluationRow) -> PolicyView {
    #[derive(serde::Deserialize)]
    struct Message {
        level: String,
        text: String,
    }
    let messages: Vec<Message> = serde_json::from_value(e.messages).unwrap_or_default();
    PolicyView {
        name: e.policy_name,
        version: e.policy_version,
        kind: e.kind,
        result: Badge::policy(&e.result),
        messages: messages.into_iter().map(|m| (m.level, m.text)).collect(),
        error: e.error,
        millis: format!("{:.1} ms", e.duration_us as f64 / 1000.0),
        when: When::at(e.created_at),
    }
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    frame: Frame,
    viewer: Viewer,
    run: RunView,
    stack_slug: String,
    stack_name: String,
    commit_url: Option<String>,
    may_confirm: bool,
    may_cancel: bool,
    cancel_label: &'static str,
    failure: Option<String>,
    errored_state: bool,
    changes: Option<Changes>,
    timeline: Vec<Step>,
    phases: Vec<PhaseLog>,
    nothing_yet: bool,
    live: bool,
    policies: Vec<PolicyView>,
    reviews: Vec<ReviewView>,
}

fn phase_title(p: Phase) -> &'static str {
    match p {
        Phase::Preparing => "Preparing",
        Phase::Initializing => "Initializing",
        Phase::Planning => "Planning",
        Phase::Applying => "Applying",
    }
}

const PHASES: [Phase; 4] = [Phase::Preparing, Phase::Initializing, Phase::Planning, Phase::Applying];

/// The web page of a commit, for the git servers whose URL scheme is known.
fn commit_url(kind: &str, base_url: &str, repository: &str, sha: &str) -> Option<String> {
    let base = base_url.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // The repository's path on the server: what follows the host, without `.git`.
    let path = repository.split_once("://").map(|(_, r)| r).unwrap_or(repository);
    let path = path.split_once('/').map(|(_, p)| p).unwrap_or_default().trim_end_matches('/').trim_end_matches(".git");
    if path.is_empty() || path.contains("..") {
        return None;
    }
    match kind {
        "github" | "gitea" => Some(format!("{base}/{path}/commit/{sha}")),
        "gitlab" => Some(format!("{base}/{path}/-/commit/{sha}")),
        _ => None,
    }
}

pub(super) async fn show(c: &Console, s: &Session, id: &str) -> Response {
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else { return not_found(Some(&s.viewer)) };
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let read = async {
        let Some(run) = queries::run(&mut conn, id).await? else { return Ok(None) };
        let stack = queries::stack_by_id(&mut conn, run.stack_id).await?;
        let integration = match stack.as_ref().and_then(|s| s.vcs_integration_id) {
            Some(v) => queries::integration(&mut conn, v).await?,
            None => None,
        };
        let outcome = queries::run_outcome(&mut conn, id).await?;
        let history = queries::run_history(&mut conn, id).await?;
        Ok::<_, diesel::result::Error>(Some((run, stack, integration, outcome, history)))
    };
    let found = read.await;
    let decisions = async {
        let evaluations = hangar_store::policies::evaluations_of_run(&mut conn, id).await?;
        let reviews = hangar_store::policies::reviews_of_run(&mut conn, id).await?;
        Ok::<_, hangar_store::StoreError>((evaluations, reviews))
    };
    let (evaluations, reviews) = match decisions.await {
        Ok(d) => d,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let (run, stack, integration, (changes, errored_state), history) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(Some(&s.viewer)),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    drop(conn);
    // A run of a space the viewer cannot see does not exist for them.
    let Some(stack) = stack.filter(|st| s.viewer.sees(st.space_id)) else { return not_found(Some(&s.viewer)) };
    let viewer = s.viewer.in_space(stack.space_id);
    let state = run.state();

    let mut phases = Vec::new();
    for p in PHASES {
        let (text, chunks) = match c.backend.log_text(id, p, PAGE_LOG_BYTES).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(run_id = id, phase = p.as_str(), error = %e, "console cannot read a run log");
                (String::new(), 0)
            }
        };
        phases.push(PhaseLog {
            name: p.as_str(),
            title: phase_title(p),
            empty: text.is_empty(),
            html: crate::ansi::to_html(&text),
            chunks,
        });
    }
    let nothing_yet = phases.iter().all(|p| p.empty);

    let now = chrono::Utc::now();
    let last = history.len().saturating_sub(1);
    let timeline = history
        .iter()
        .enumerate()
        .map(|(i, (st, at))| {
            let parsed = st.parse::<RunState>().unwrap_or(RunState::Failed);
            let end = history.get(i + 1).map(|(_, next)| *next).or((!parsed.is_terminal()).then_some(now));
            Step {
                state: st.clone(),
                class: state_class(parsed),
                when: When::at(*at),
                duration: end.map(|e| duration((e - *at).num_seconds())),
                current: i == last && !parsed.is_terminal(),
            }
        })
        .collect();

    let changes = changes
        .and_then(|v| serde_json::from_value::<hangar_types::worker::Changes>(v).ok())
        .map(|c| Changes { add: c.add, change: c.change, destroy: c.destroy, outputs: c.outputs });
    let (may_cancel, cancel_label) = match state {
        RunState::Queued | RunState::Ready => (true, "Cancel"),
        RunState::Preparing | RunState::Initializing | RunState::Planning | RunState::Confirmed => (true, "Stop"),
        _ => (false, ""),
    };
    let live = !state.is_terminal();
    let commit_url = integration.and_then(|(_, kind, base)| commit_url(&kind, &base, &stack.repository, &run.commit_sha));
    let mut frame = Frame::new(format!("Run #{id} of {}", stack.name), "stacks", Some(viewer.clone()));
    if live {
        frame.refresh_secs = Some(5);
    }
    let page = RunPage {
        frame,
        viewer,
        run: RunView {
            id,
            badge: Badge::run(state),
            kind: run.kind().as_str().to_string(),
            branch: run.branch.clone(),
            commit_short: super::stacks::short(&run.commit_sha),
            commit_message: run.commit_message.clone(),
            triggered_by: run.triggered_by.clone(),
            when: When::at(run.created_at),
        },
        stack_slug: stack.slug.clone(),
        stack_name: stack.name.clone(),
        commit_url,
        may_confirm: state == RunState::Unconfirmed,
        may_cancel,
        cancel_label,
        failure: run.failure_reason.clone().filter(|_| state == RunState::Failed),
        errored_state,
        changes,
        timeline,
        phases,
        nothing_yet,
        live,
        policies: evaluations.into_iter().map(policy_view).collect(),
        reviews: reviews
            .into_iter()
            .map(|r| ReviewView {
                decision: Badge::of(&r.decision, if r.decision == "approve" { "ok" } else { "bad" }),
                reviewer: r.reviewer,
                note: r.note,
                when: When::at(r.created_at),
            })
            .collect(),
    };
    html(StatusCode::OK, &page)
}

pub(super) async fn act(c: &Console, s: &Session, id: &str, action: &str) -> Response {
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else { return not_found(Some(&s.viewer)) };
    let mutation = match action {
        "confirm" => "mutation($id: ID!) { confirmRun(id: $id) { id } }",
        "discard" => "mutation($id: ID!) { discardRun(id: $id) { id } }",
        _ => "mutation($id: ID!) { cancelRun(id: $id) { id } }",
    };
    match c.backend.execute(Some(&s.token), mutation, json!({ "id": id.to_string() })).await {
        Ok(_) => see_other(&format!("/runs/{id}")),
        Err(e) => op_error(&s.viewer, &e),
    }
}

/// A writer's review of a run: approve or reject, with an optional note.
pub(super) async fn review(c: &Console, s: &Session, req: &super::Req, id: &str) -> Response {
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else { return not_found(Some(&s.viewer)) };
    let decision = match req.field("decision") {
        Some(d @ ("APPROVE" | "REJECT")) => d,
        _ => return see_other(&format!("/runs/{id}")),
    };
    let note = req.field("note").unwrap_or_default().trim().to_string();
    let mutation = "mutation($id: ID!, $d: ReviewDecisionValue!, $n: String!) { reviewRun(id: $id, decision: $d, note: $n) { id } }";
    match c.backend.execute(Some(&s.token), mutation, json!({ "id": id.to_string(), "d": decision, "n": note })).await {
        Ok(_) => see_other(&format!("/runs/{id}#policies")),
        Err(e) => op_error(&s.viewer, &e),
    }
}

/// `GET /events/changes`: an event `change` (the run's id) whenever a run
/// changes state or is created; live pages refresh what they show.
pub(super) fn changes(c: &Console, s: &Session) -> Response {
    let mut rx = c.backend.run_changes();
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(16);
    let viewer = s.viewer.clone();
    let db = c.db.clone();
    tokio::spawn(async move {
        // The space of each run told of: a viewer hears only of runs of the
        // spaces they see (each run looked up once).
        let mut spaces: std::collections::HashMap<i64, Option<i64>> = std::collections::HashMap::new();
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                e = tokio::time::timeout(Duration::from_secs(15), rx.recv()) => match e {
                    Ok(Ok(run)) if !viewer.access.sees_everything() => {
                        if !spaces.contains_key(&run) {
                            if spaces.len() > 10_000 {
                                spaces.clear();
                            }
                            spaces.insert(run, space_of_run(&db, run).await);
                        }
                        match spaces.get(&run).copied().flatten() {
                            Some(space) if viewer.sees(space) => Event::default().event("change").data(run.to_string()),
                            _ => continue,
                        }
                    }
                    Ok(Ok(run)) => Event::default().event("change").data(run.to_string()),
                    // Missed some: one change that makes the page re-read is enough.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => Event::default().event("change").data("0"),
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                    // Keeps proxies from closing a quiet connection.
                    Err(_) => Event::default().comment(""),
                },
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    let mut r = warp::sse::reply(Receiving(out)).into_response();
    r.headers_mut().insert("x-accel-buffering", warp::http::HeaderValue::from_static("no"));
    r
}

/// The space of run `run`'s stack; `None` when it cannot be read (then the
/// change is not told).
async fn space_of_run(db: &hangar_db::DbPool, run: i64) -> Option<i64> {
    let mut conn = db.get().await.ok()?;
    let row = queries::run(&mut conn, run).await.ok()??;
    queries::stack_by_id(&mut conn, row.stack_id).await.ok()?.map(|s| s.space_id)
}

/// A response body fed by a task: the body must be `Sync`, which a stream
/// holding a broadcast receiver's future is not.
struct Receiving<T>(mpsc::Receiver<T>);

impl<T> futures::Stream for Receiving<T> {
    type Item = T;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_links() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            commit_url("gitea", "https://git.example/", "https://git.example/team/net.git", sha).unwrap(),
            format!("https://git.example/team/net/commit/{sha}")
        );
        assert!(commit_url("gitlab", "https://gl.example", "https://gl.example/a/b", sha).unwrap().contains("/-/commit/"));
        assert_eq!(commit_url("git", "https://x", "https://x/a", sha), None);
        assert_eq!(commit_url("gitea", "javascript:alert(1)", "https://x/a", sha), None);
        assert_eq!(commit_url("gitea", "https://x", "https://x/a", "\"><script>"), None);
    }
}
