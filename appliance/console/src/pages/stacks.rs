//! The stacks list, a stack's page, and what a writer does there (create,
//! trigger, variables, unlock, delete), each an API operation.

use askama::Template;
use hangar_types::RunState;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, Session, html, not_found, op_error, see_other, unavailable, urlencode};
use crate::Console;
use hangar_store::console::{self as queries, StackFilter};
use crate::view::{Badge, Frame, Viewer, When};

/// Stacks per page of the list.
const PAGE: i64 = 50;
/// Runs shown on a stack's page at once.
const RUNS: i64 = 20;

pub(crate) struct StackLineView {
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) branch: String,
    pub(crate) labels: Vec<String>,
    pub(crate) pool: Option<String>,
    pub(crate) needs_reconciliation: bool,
    pub(crate) drifted: bool,
    pub(crate) badge: Badge,
    pub(crate) run_id: Option<i64>,
    pub(crate) run_when: Option<When>,
}

#[derive(Template)]
#[template(path = "stacks.html")]
struct StacksPage {
    frame: Frame,
    can_write: bool,
    rows: Vec<StackLineView>,
    total: i64,
    filtered: bool,
    q: String,
    label: String,
    state: String,
    states: Vec<&'static str>,
    page: i64,
    pages: i64,
    prev_href: Option<String>,
    next_href: Option<String>,
}

fn parse_state(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_uppercase();
    if s.is_empty() || s == "NONE" || RunState::ALL.iter().any(|r| r.as_str() == s) { Some(s) } else { None }
}

pub(super) async fn list(c: &Console, s: &Session, req: &Req) -> Response {
    let scope = s.viewer.scope();
    let text: String = req.query_param("q").unwrap_or_default().trim().chars().take(100).collect();
    let label: String = req.query_param("label").unwrap_or_default().trim().chars().take(64).collect();
    let state = parse_state(&req.query_param("state").unwrap_or_default()).unwrap_or_default();
    let page = req.query_param("page").and_then(|p| p.parse::<i64>().ok()).filter(|p| (1..=100_000).contains(p)).unwrap_or(1);
    let filter = StackFilter { text: text.clone(), label: label.clone(), state: state.clone() };
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let lines = match queries::stack_lines(&mut conn, &filter, scope.as_deref(), (page - 1) * PAGE, PAGE).await {
        Ok(l) => l,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let total = match lines.first() {
        Some(l) => l.total,
        None if page > 1 => match queries::stack_lines(&mut conn, &filter, scope.as_deref(), 0, 1).await {
            Ok(l) => l.first().map_or(0, |l| l.total),
            Err(e) => return unavailable(Some(&s.viewer), &e),
        },
        None => 0,
    };
    drop(conn);
    let pages = ((total + PAGE - 1) / PAGE).max(1);
    let (t, l, st) = (text.clone(), label.clone(), state.clone());
    let href = move |p: i64| {
        let (text, label, state) = (&t, &l, &st);
        let mut q = vec![("page", p.to_string())];
        if !text.is_empty() {
            q.push(("q", text.clone()));
        }
        if !label.is_empty() {
            q.push(("label", label.clone()));
        }
        if !state.is_empty() {
            q.push(("state", state.clone()));
        }
        format!("/stacks?{}", serde_urlencoded::to_string(q).unwrap_or_default())
    };
    let rows = lines
        .into_iter()
        .map(|l| {
            let badge = match l.run_state.as_deref().and_then(|s| s.parse::<RunState>().ok()) {
                Some(st) => Badge::run(st),
                None => Badge::of("no runs", "idle"),
            };
            StackLineView {
                slug: l.slug,
                name: l.name,
                branch: l.branch,
                labels: l.labels,
                pool: l.pool,
                needs_reconciliation: l.needs_reconciliation,
                drifted: l.drifted,
                badge,
                run_id: l.run_id,
                run_when: l.run_at.map(When::at),
            }
        })
        .collect();
    let mut states: Vec<&'static str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
    states.push("NONE");
    let filtered = !text.is_empty() || !label.is_empty() || !state.is_empty();
    let page_view = StacksPage {
        frame: Frame::new("Stacks", "stacks", Some(s.viewer.clone())),
        can_write: s.viewer.writes_somewhere(),
        rows,
        total,
        filtered,
        q: text,
        label,
        state,
        states,
        page,
        pages,
        prev_href: (page > 1).then(|| href(page - 1)),
        next_href: (page < pages).then(|| href(page + 1)),
    };
    html(StatusCode::OK, &page_view)
}

pub(crate) struct RunLineView {
    pub(crate) id: i64,
    pub(crate) badge: Badge,
    pub(crate) kind: String,
    pub(crate) commit_short: String,
    pub(crate) commit_message: Option<String>,
    pub(crate) triggered_by: String,
    pub(crate) when: When,
}

pub(crate) struct VariableView {
    pub(crate) name: String,
    pub(crate) secret: bool,
    /// Empty for a secret: its value is never read.
    pub(crate) value: String,
    pub(crate) when: When,
}

pub(crate) struct ContextView {
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) priority: i32,
}

pub(crate) struct LockView {
    pub(crate) lock_id: String,
    pub(crate) held_by: String,
    pub(crate) when: When,
}

pub(crate) struct VersionView {
    pub(crate) id: i64,
    /// 1 for a stack's first version.
    pub(crate) number: i64,
    pub(crate) serial: i64,
    pub(crate) lineage: String,
    pub(crate) created_by: String,
    pub(crate) when: When,
}

#[derive(Template)]
#[template(path = "stack.html")]
struct StackPage {
    frame: Frame,
    viewer: Viewer,
    s: queries::StackRow,
    pool: Option<String>,
    vcs: Option<String>,
    lock: Option<LockView>,
    versions: Vec<VersionView>,
    runs: Vec<RunLineView>,
    older_href: Option<String>,
    variables: Vec<VariableView>,
    contexts: Vec<ContextView>,
    /// Every pool's name, for the settings form.
    pools: Vec<String>,
    drift: DriftView,
    deps: DepsView,
}

/// Where the stack stands among the stacks it depends on and that depend on it.
pub(crate) struct DepsView {
    pub(crate) on: Vec<DependencyView>,
    /// Slugs of the stacks that depend on this one.
    pub(crate) dependents: Vec<String>,
    /// What holds the chain upstream: whether it stopped, the line, the upstream run.
    pub(crate) held: Option<(bool, String, Option<i64>)>,
}

pub(crate) struct DependencyView {
    pub(crate) slug: String,
    /// `output → TF_VAR_input`.
    pub(crate) outputs: Vec<String>,
    pub(crate) badge: Badge,
    pub(crate) run_id: Option<i64>,
}

/// What the stack's last drift run found.
pub(crate) struct DriftView {
    pub(crate) checked: Option<When>,
    pub(crate) run_id: Option<i64>,
    pub(crate) since: Option<When>,
    /// `address (actions)`.
    pub(crate) resources: Vec<String>,
}

pub(crate) fn short(sha: &str) -> String {
    sha.chars().take(10).collect()
}

pub(super) async fn show(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let scope = s.viewer.scope();
    let before = req.query_param("before").and_then(|b| b.parse::<i64>().ok()).filter(|b| *b > 0);
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let read = async {
        // A stack of a space the viewer cannot see does not exist for them.
        let Some(stack) = queries::stack(&mut conn, slug).await?.filter(|st| s.viewer.sees(st.space_id)) else { return Ok(None) };
        let pool = match stack.worker_pool_id {
            Some(p) => queries::pool_name(&mut conn, p).await?,
            None => None,
        };
        let vcs = match stack.vcs_integration_id {
            Some(v) => queries::integration(&mut conn, v).await?.map(|(name, _, _)| name),
            None => None,
        };
        let lock = queries::lock_of(&mut conn, stack.id).await?;
        let versions = queries::state_versions_of(&mut conn, stack.id, 10).await?;
        let version_count = queries::count_state_versions(&mut conn, stack.id).await?;
        let runs = queries::runs_of(&mut conn, stack.id, before, RUNS + 1).await?;
        let variables = queries::stack_variables(&mut conn, stack.id).await?;
        let contexts = queries::stack_contexts(&mut conn, stack.id, scope.as_deref()).await?;
        let (pools, _) = queries::names(&mut conn, scope.as_deref()).await?;
        Ok::<_, diesel::result::Error>(Some((stack, pool, vcs, lock, (versions, version_count), runs, variables, (contexts, pools))))
    };
    let (stack, pool, vcs, lock, (versions, version_count), mut runs, variables, (contexts, pools)) = match read.await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(Some(&s.viewer)),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    // The stack's controls follow the viewer's role in its space.
    let viewer = s.viewer.in_space(stack.space_id);
    let deps = match dependencies_view(&mut conn, &viewer, stack.id).await {
        Ok(d) => d,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let more = runs.len() as i64 > RUNS;
    runs.truncate(RUNS as usize);
    let older_href = if more { runs.last().map(|r| format!("/stacks/{}?before={}#runs", urlencode(slug), r.id)) } else { None };
    let page = StackPage {
        frame: Frame::new(stack.name.clone(), "stacks", Some(viewer.clone())),
        viewer,
        pool,
        vcs,
        lock: lock.map(|(lock_id, held_by, at)| LockView { lock_id, held_by, when: When::at(at) }),
        versions: versions
            .into_iter()
            .enumerate()
            .map(|(i, (id, serial, lineage, created_by, at))| VersionView {
                id,
                number: version_count - i as i64,
                serial,
                lineage,
                created_by,
                when: When::at(at),
            })
            .collect(),
        runs: runs
            .into_iter()
            .map(|r| RunLineView {
                id: r.id,
                badge: Badge::run(r.state()),
                kind: r.kind().as_str().to_string(),
                commit_short: short(&r.commit_sha),
                commit_message: r.commit_message.clone(),
                triggered_by: r.triggered_by.clone(),
                when: When::at(r.updated_at),
            })
            .collect(),
        older_href,
        variables: variables
            .into_iter()
            .map(|(name, secret, value, at)| VariableView {
                name,
                secret,
                value: if secret { String::new() } else { value.unwrap_or_default() },
                when: When::at(at),
            })
            .collect(),
        contexts: contexts.into_iter().map(|(slug, name, priority)| ContextView { slug, name, priority }).collect(),
        pools,
        drift: DriftView {
            checked: stack.drift_checked_at.map(When::at),
            run_id: stack.drift_run_id,
            since: stack.drift_detected_at.map(When::at),
            resources: stack.drifted().into_iter().map(|r| format!("{} ({})", r.address, r.actions.join(", "))).collect(),
        },
        deps,
        s: stack,
    };
    html(StatusCode::OK, &page)
}

async fn dependencies_view(conn: &mut hangar_db::AsyncPgConnection, viewer: &Viewer, stack: i64) -> Result<DepsView, hangar_store::StoreError> {
    use hangar_store::dependencies::{self, Held, Standing};
    let mut standings = dependencies::standings(conn, stack).await?;
    let on = dependencies::dependencies_of(conn, stack)
        .await?
        .into_iter()
        .filter(|d| viewer.sees(d.on.space_id))
        .map(|d| {
            let (badge, run_id) = match standings.remove(&d.on.id).unwrap_or(Standing::NeverApplied) {
                Standing::Applied { run, .. } => (Badge::of("applied", "ok"), Some(run)),
                Standing::Running { run, state } => (Badge::run(state), Some(run)),
                Standing::Stopped { run, state, .. } => (Badge::run(state), Some(run)),
                Standing::NeverApplied => (Badge::of("never applied", "idle"), None),
            };
            let outputs = d.outputs.iter().map(|o| format!("{} → TF_VAR_{}", o.output, o.input)).collect();
            DependencyView { slug: d.on.slug, outputs, badge, run_id }
        })
        .collect();
    let dependents =
        dependencies::dependents_of(conn, stack).await?.into_iter().filter(|d| viewer.sees(d.space_id)).map(|d| d.slug).collect();
    let held = dependencies::held_as_seen(conn, stack, |s| viewer.sees(s))
        .await?
        .map(|h| (matches!(h, Held::Stopped { .. }), sentence(&h.message()), h.upstream().1.filter(|_| !h.is_veiled())));
    Ok(DepsView { on, dependents, held })
}

/// `line` with its first letter capital.
fn sentence(line: &str) -> String {
    let mut c = line.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

pub(super) async fn add_dependency(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let on = req.field("depends_on").unwrap_or_default().trim();
    // One `output = input` per line; `output` alone passes it under its own name.
    let mut outputs = Vec::new();
    for line in req.field("outputs").unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (output, input) = line.split_once('=').map(|(o, i)| (o.trim(), i.trim())).unwrap_or((line, line));
        outputs.push(json!({ "output": output, "input": input.strip_prefix("TF_VAR_").unwrap_or(input) }));
    }
    let mutation = "mutation($s: String!, $d: String!, $o: [DependencyOutputInput!]!) { addStackDependency(stack: $s, dependsOn: $d, outputs: $o) { id } }";
    match c.backend.execute(Some(&s.token), mutation, json!({ "s": slug, "d": on, "o": outputs })).await {
        Ok(_) => see_other(&format!("/stacks/{}#dependencies", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn remove_dependency(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let on = req.field("depends_on").unwrap_or_default();
    let mutation = "mutation($s: String!, $d: String!) { removeStackDependency(stack: $s, dependsOn: $d) { id } }";
    match c.backend.execute(Some(&s.token), mutation, json!({ "s": slug, "d": on })).await {
        Ok(_) => see_other(&format!("/stacks/{}#dependencies", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn task(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let command = req.field("command").unwrap_or_default().trim().to_string();
    let mutation = "mutation($s: String!, $x: String!) { runTask(stack: $s, command: $x) { id } }";
    to_new_run(c, s, slug, "runTask", mutation, json!({ "s": slug, "x": command })).await
}

pub(super) async fn reconcile(c: &Console, s: &Session, slug: &str) -> Response {
    let mutation = "mutation($s: String!) { reconcileStack(slug: $s) { id } }";
    to_new_run(c, s, slug, "reconcileStack", mutation, json!({ "s": slug })).await
}

pub(super) async fn trigger(c: &Console, s: &Session, slug: &str) -> Response {
    let mutation = "mutation($s: String!) { triggerRun(stack: $s) { id } }";
    to_new_run(c, s, slug, "triggerRun", mutation, json!({ "s": slug })).await
}

/// Runs `mutation` (whose field `field` answers a run) for stack `slug`, and
/// goes to that run's page.
async fn to_new_run(c: &Console, s: &Session, slug: &str, field: &str, mutation: &str, vars: serde_json::Value) -> Response {
    match c.backend.execute(Some(&s.token), mutation, vars).await {
        Ok(d) => match d[field]["id"].as_str() {
            Some(id) => see_other(&format!("/runs/{}", urlencode(id))),
            None => see_other(&format!("/stacks/{}", urlencode(slug))),
        },
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn set_variable(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let name = req.field("name").unwrap_or_default().trim();
    let value = req.field("value").unwrap_or_default().replace("\r\n", "\n");
    let secret = req.field("secret") == Some("on");
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($s: String!, $n: String!, $v: String!, $x: Boolean) { setStackVariable(stack: $s, name: $n, value: $v, secret: $x) { id } }",
            json!({ "s": slug, "n": name, "v": value, "x": secret }),
        )
        .await;
    match answer {
        Ok(_) => see_other(&format!("/stacks/{}#environment", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn delete_variable(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let name = req.field("name").unwrap_or_default();
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($s: String!, $n: String!) { deleteStackVariable(stack: $s, name: $n) }",
            json!({ "s": slug, "n": name }),
        )
        .await;
    match answer {
        Ok(_) => see_other(&format!("/stacks/{}#environment", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

/// The refusal of a destructive form whose typed confirmation is not the
/// stack's slug, exactly.
fn unconfirmed(req: &Req, slug: &str, viewer: &Viewer) -> Option<Response> {
    if req.field("confirm").map(str::trim) == Some(slug) {
        None
    } else {
        Some(super::error_page(
            Some(viewer),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not confirmed",
            "The slug typed does not match the stack's, so nothing was changed.",
        ))
    }
}

pub(super) async fn unlock(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    if let Some(r) = unconfirmed(req, slug, &s.viewer) {
        return r;
    }
    // The lock the page showed: if another has taken its place since, the
    // API refuses and names the new holder rather than removing it unseen.
    let lock_id = req.field("lock_id").unwrap_or_default();
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($s: String!, $l: String!) { forceUnlockState(stack: $s, lockId: $l) { lockId } }",
            json!({ "s": slug, "l": lock_id }),
        )
        .await;
    match answer {
        Ok(_) => see_other(&format!("/stacks/{}", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

/// The settings form: every field is sent, so what the form shows is what
/// the stack has afterwards (an empty pool leaves the stack without one).
pub(super) async fn settings(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    let field = |name: &str| req.field(name).unwrap_or_default().trim().to_string();
    let labels: Vec<String> = field("labels").split([',', ' ']).map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    let input = json!({
        "name": field("name"), "description": field("description"), "branch": field("branch"),
        "projectRoot": field("project_root"), "toolVersion": field("tool_version"), "workerPool": field("pool"),
        "autodeploy": req.field("autodeploy") == Some("on"), "labels": labels,
        "driftReconcile": req.field("drift_reconcile") == Some("on"),
    });
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($s: String!, $i: StackUpdate!) { updateStack(slug: $s, input: $i) { slug } }",
            json!({ "s": slug, "i": input }),
        )
        .await;
    match answer {
        Ok(_) => see_other(&format!("/stacks/{}", urlencode(slug))),
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn delete(c: &Console, s: &Session, req: &Req, slug: &str) -> Response {
    if let Some(r) = unconfirmed(req, slug, &s.viewer) {
        return r;
    }
    let answer = c.backend.execute(Some(&s.token), "mutation($s: String!) { deleteStack(slug: $s) }", json!({ "s": slug })).await;
    match answer {
        Ok(_) => see_other("/stacks"),
        Err(e) => op_error(&s.viewer, &e),
    }
}

#[derive(Template)]
#[template(path = "stack_new.html")]
struct NewStackPage {
    frame: Frame,
    viewer: Viewer,
    error: Option<String>,
    pools: Vec<String>,
    integrations: Vec<String>,
    /// The spaces the viewer may create a stack in: (slug, name).
    spaces: Vec<(String, String)>,
    f: NewStackForm,
}

#[derive(Default)]
pub(crate) struct NewStackForm {
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) repository: String,
    pub(crate) branch: String,
    pub(crate) project_root: String,
    pub(crate) tool: String,
    pub(crate) tool_version: String,
    pub(crate) pool: String,
    pub(crate) vcs: String,
    pub(crate) labels: String,
    pub(crate) autodeploy: bool,
    pub(crate) space: String,
}

impl NewStackForm {
    fn from(req: &Req) -> NewStackForm {
        let f = |k: &str| req.field(k).unwrap_or_default().trim().to_string();
        NewStackForm {
            slug: f("slug"),
            name: f("name"),
            repository: f("repository"),
            branch: f("branch"),
            project_root: f("project_root"),
            tool: f("tool"),
            tool_version: f("tool_version"),
            pool: f("pool"),
            vcs: f("vcs"),
            labels: f("labels"),
            autodeploy: req.field("autodeploy") == Some("on"),
            space: f("space"),
        }
    }
}

pub(super) async fn new_page(c: &Console, s: &Session) -> Response {
    let f = NewStackForm { branch: "main".into(), tool: "TERRAFORM".into(), tool_version: "1.0.3".into(), ..Default::default() };
    form_page(c, s, f, None).await
}

async fn form_again(c: &Console, s: &Session, f: NewStackForm, error: String) -> Response {
    form_page(c, s, f, Some(error)).await
}

async fn form_page(c: &Console, s: &Session, f: NewStackForm, error: Option<String>) -> Response {
    let scope = s.viewer.scope();
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let (pools, integrations) = match queries::names(&mut conn, scope.as_deref()).await {
        Ok(n) => n,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let spaces = match hangar_store::spaces::list_spaces(&mut conn).await {
        Ok(all) => all
            .into_iter()
            .filter(|sp| s.viewer.access.may(sp.id, hangar_store::access::Op::Write.role()))
            .map(|sp| (sp.slug, sp.name))
            .collect(),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let page = NewStackPage {
        frame: Frame::new("Create a stack", "stacks", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        error,
        pools,
        integrations,
        spaces,
        f,
    };
    html(status, &page)
}

pub(super) async fn create(c: &Console, s: &Session, req: &Req) -> Response {
    let f = NewStackForm::from(req);
    let labels: Vec<String> = f.labels.split([',', ' ']).map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    let mut input = json!({
        "slug": f.slug, "name": f.name, "repository": f.repository, "branch": f.branch,
        "projectRoot": f.project_root, "tool": if f.tool == "OPENTOFU" { "OPENTOFU" } else { "TERRAFORM" },
        "toolVersion": f.tool_version, "autodeploy": f.autodeploy, "labels": labels,
    });
    if !f.pool.is_empty() {
        input["workerPool"] = json!(f.pool);
    }
    if !f.space.is_empty() {
        input["space"] = json!(f.space);
    }
    let created = c
        .backend
        .execute(Some(&s.token), "mutation($i: StackInput!) { createStack(input: $i) { slug } }", json!({ "i": input }))
        .await;
    let created = created.and_then(|d| d["createStack"]["slug"].as_str().map(str::to_string).ok_or_else(|| crate::OpError {
        code: "INTERNAL".into(),
        message: "createStack answered without a slug".into(),
    }));
    let slug = match created {
        Ok(slug) => slug,
        Err(e) if e.code == "BAD_USER_INPUT" || e.code == "CONFLICT" || e.code == "NOT_FOUND" => {
            return form_again(c, s, f, e.message).await;
        }
        Err(e) => return op_error(&s.viewer, &e),
    };
    if !f.vcs.is_empty() {
        let linked = c
            .backend
            .execute(
                Some(&s.token),
                "mutation($s: String!, $v: String) { linkStackToVcs(stack: $s, integration: $v) { slug } }",
                json!({ "s": slug, "v": f.vcs }),
            )
            .await;
        if let Err(e) = linked {
            return op_error(&s.viewer, &e);
        }
    }
    see_other(&format!("/stacks/{}", urlencode(&slug)))
}
