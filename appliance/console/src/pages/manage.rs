//! The pages around the stacks: worker pools, VCS integrations, contexts,
//! administration (users, API keys, audit trail, dead jobs, System) and the
//! caller's own account. Every change is an API operation.

use askama::Template;
use serde_json::{Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, Session, html, not_found, op_error, see_other, unavailable, urlencode};
use crate::Console;
use hangar_store::access::Op;
use hangar_store::console::{self as queries, AuditFilter};
use crate::view::{Badge, Frame, Viewer, When};

/// A value shown once, with its label.
pub(crate) struct OnceItem {
    pub(crate) label: String,
    pub(crate) value: String,
}

#[derive(Template)]
#[template(path = "once.html")]
struct OncePage {
    frame: Frame,
    heading: String,
    lead: String,
    items: Vec<OnceItem>,
    back: String,
    back_label: String,
}

fn once(s: &Session, section: &'static str, heading: &str, lead: &str, items: Vec<OnceItem>, back: String, back_label: &str) -> Response {
    let page = OncePage {
        frame: Frame::new(heading, section, Some(s.viewer.clone())),
        heading: heading.to_string(),
        lead: lead.to_string(),
        items,
        back,
        back_label: back_label.to_string(),
    };
    html(StatusCode::OK, &page)
}

/// Runs an API operation and redirects to `then`, or shows the refusal.
pub(super) async fn operate(c: &Console, s: &Session, query: &str, vars: Value, then: &str) -> Response {
    match c.backend.execute(Some(&s.token), query, vars).await {
        Ok(_) => see_other(then),
        Err(e) => op_error(&s.viewer, &e),
    }
}

// ---- worker pools ----

pub(crate) struct WorkerView {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) badge: Badge,
    pub(crate) seen: Option<When>,
    pub(crate) version: String,
    pub(crate) host: String,
    pub(crate) drained: bool,
    pub(crate) revoked: bool,
}

pub(crate) struct PoolView {
    pub(crate) name: String,
    pub(crate) description: String,
    /// The viewer may manage this pool (the admin role in its space).
    pub(crate) manage: bool,
    /// The name of the pool's space; empty when the appliance has one space.
    pub(crate) space: String,
    pub(crate) workers: Vec<WorkerView>,
}

#[derive(Template)]
#[template(path = "pools.html")]
struct PoolsPage {
    frame: Frame,
    viewer: Viewer,
    pools: Vec<PoolView>,
    /// The spaces the viewer may create a pool in: (slug, name).
    spaces: Vec<(String, String)>,
}

/// The spaces in which the viewer may do `op`, by slug and name: where the
/// create forms let them put what they create.
fn spaces_for(all: Vec<hangar_store::spaces::SpaceRow>, viewer: &Viewer, op: Op) -> Vec<(String, String)> {
    all.into_iter().filter(|sp| viewer.access.may(sp.id, op.role())).map(|sp| (sp.slug, sp.name)).collect()
}

fn worker_badge(w: &queries::WorkerLine, generation: i32) -> Badge {
    if w.revoked_at.is_some() {
        Badge::of("revoked", "bad")
    } else if generation > w.pool_generation {
        Badge::of("stale", "bad")
    } else {
        match w.status.as_str() {
            "busy" => Badge::of("busy", "run"),
            "idle" => Badge::of("idle", "ok"),
            "drained" => Badge::of("drained", "wait"),
            other => Badge::of(other, "idle"),
        }
    }
}

pub(super) async fn pools(c: &Console, s: &Session) -> Response {
    let scope = s.viewer.scope();
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let (pools, workers) = match queries::pools_and_workers(&mut conn, scope.as_deref()).await {
        Ok(x) => x,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let all_spaces = match hangar_store::spaces::list_spaces(&mut conn).await {
        Ok(all) => all,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let space_names: std::collections::HashMap<i64, String> =
        if all_spaces.len() > 1 { all_spaces.iter().map(|sp| (sp.id, sp.name.clone())).collect() } else { Default::default() };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let pools = pools
        .into_iter()
        .map(|(id, name, description, generation, space)| PoolView {
            name,
            description,
            manage: s.viewer.access.may(space, Op::ManagePools.role()),
            space: space_names.get(&space).cloned().unwrap_or_default(),
            workers: workers
                .iter()
                .filter(|w| w.pool_id == id)
                .map(|w| WorkerView {
                    id: w.id,
                    name: w.name.clone(),
                    badge: worker_badge(w, generation),
                    seen: w.last_seen_at.map(When::at),
                    version: text(&w.metadata, "version"),
                    host: [text(&w.metadata, "hostname"), text(&w.metadata, "os"), text(&w.metadata, "arch")]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" · "),
                    drained: w.drained,
                    revoked: w.revoked_at.is_some(),
                })
                .collect(),
        })
        .collect();
    let spaces = spaces_for(all_spaces, &s.viewer, Op::ManagePools);
    let page = PoolsPage { frame: Frame::new("Worker pools", "pools", Some(s.viewer.clone())), viewer: s.viewer.clone(), pools, spaces };
    html(StatusCode::OK, &page)
}

pub(super) async fn create_pool(c: &Console, s: &Session, req: &Req) -> Response {
    let name = req.field("name").unwrap_or_default().trim();
    let description = req.field("description").unwrap_or_default().trim();
    let space = req.field("space").map(str::trim).filter(|sp| !sp.is_empty());
    operate(
        c,
        s,
        "mutation($n: String!, $d: String!, $s: String) { createWorkerPool(name: $n, description: $d, space: $s) { id } }",
        json!({ "n": name, "d": description, "s": space }),
        &format!("/pools#pool-{}", urlencode(name)),
    )
    .await
}

pub(super) async fn join_token(c: &Console, s: &Session, pool: &str) -> Response {
    let answer = c
        .backend
        .execute(Some(&s.token), "mutation($p: String!) { createJoinToken(pool: $p) { token expiresAt } }", json!({ "p": pool }))
        .await;
    let d = match answer {
        Ok(d) => d,
        Err(e) => return op_error(&s.viewer, &e),
    };
    let token = d["createJoinToken"]["token"].as_str().unwrap_or_default();
    let expires = d["createJoinToken"]["expiresAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| crate::view::When::at(t.with_timezone(&chrono::Utc)))
        .map_or_else(|| "soon".to_string(), |w| format!("{} ({})", w.rel, w.abs));
    let command = format!("hangar-worker join --server {} --token {token} --ca ca.crt", c.public_url);
    once(
        s,
        "pools",
        &format!("Join a worker to {pool}"),
        &format!(
            "Run this on the worker host, beside a copy of the appliance CA certificate saved as ca.crt (the installer printed its path; /etc/hangar/pki/ca.crt on a standard install), then start the worker with hangar-worker run. The token works once and expires {expires}."
        ),
        vec![OnceItem { label: "Command".into(), value: command }, OnceItem { label: "Join token".into(), value: token.to_string() }],
        format!("/pools#pool-{}", urlencode(pool)),
        "Back to the worker pools",
    )
}

pub(super) async fn worker_action(c: &Console, s: &Session, id: &str, action: &str) -> Response {
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else { return not_found(Some(&s.viewer)) };
    let q = match action {
        "drain" => "mutation($id: ID!) { drainWorker(id: $id) { id } }",
        "undrain" => "mutation($id: ID!) { undrainWorker(id: $id) { id } }",
        _ => "mutation($id: ID!) { revokeWorker(id: $id) { id } }",
    };
    operate(c, s, q, json!({ "id": id.to_string() }), "/pools").await
}

// ---- VCS integrations ----

pub(crate) struct IntegrationView {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) base_url: String,
    pub(crate) stacks: i64,
    pub(crate) when: When,
}

#[derive(Template)]
#[template(path = "vcs.html")]
struct VcsPage {
    frame: Frame,
    viewer: Viewer,
    rows: Vec<IntegrationView>,
    /// The spaces the viewer may connect a git server in: (slug, name).
    spaces: Vec<(String, String)>,
}

pub(super) async fn vcs(c: &Console, s: &Session) -> Response {
    let scope = s.viewer.scope();
    if !s.viewer.can_list_vcs() {
        let message = format!("This page needs the {} role in some space.", Op::ListVcs.role());
        return super::error_page(Some(&s.viewer), StatusCode::FORBIDDEN, "Not allowed", &message);
    }
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let rows = match queries::integrations(&mut conn, scope.as_deref()).await {
        Ok(r) => r,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let rows = rows
        .into_iter()
        .map(|(_, name, kind, base_url, at, stacks)| IntegrationView { name, kind, base_url, stacks, when: When::at(at) })
        .collect();
    let spaces = match hangar_store::spaces::list_spaces(&mut conn).await {
        Ok(all) => spaces_for(all, &s.viewer, Op::ManageVcs),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let page = VcsPage { frame: Frame::new("VCS integrations", "vcs", Some(s.viewer.clone())), viewer: s.viewer.clone(), rows, spaces };
    html(StatusCode::OK, &page)
}

/// A webhook secret: 32 random bytes, hex.
fn new_secret() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    // SystemRandom fails only when the OS has no randomness at all.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

pub(super) async fn create_vcs(c: &Console, s: &Session, req: &Req) -> Response {
    let name = req.field("name").unwrap_or_default().trim().to_string();
    let kind = req.field("kind").unwrap_or_default().to_string();
    let kind = if ["GITHUB", "GITLAB", "GITEA", "BITBUCKET", "GIT"].contains(&kind.as_str()) { kind } else { "GITEA".to_string() };
    let plain_git = kind == "GIT";
    let secret = (!plain_git).then(new_secret);
    let mut input = json!({ "name": name, "kind": kind, "baseUrl": req.field("base_url").unwrap_or_default().trim() });
    for (field, key) in [("username", "username"), ("token", "token")] {
        if let Some(v) = req.field(field).map(str::trim).filter(|v| !v.is_empty()) {
            input[key] = json!(v);
        }
    }
    if let Some(sec) = &secret {
        input["webhookSecret"] = json!(sec);
    }
    if let Some(space) = req.field("space").map(str::trim).filter(|sp| !sp.is_empty()) {
        input["space"] = json!(space);
    }
    let answer = c
        .backend
        .execute(Some(&s.token), "mutation($i: VcsIntegrationInput!) { createVcsIntegration(input: $i) { name webhookPath } }", json!({ "i": input }))
        .await;
    let d = match answer {
        Ok(d) => d,
        Err(e) => return op_error(&s.viewer, &e),
    };
    let back = format!("/vcs/{}", urlencode(&name));
    match (d["createVcsIntegration"]["webhookPath"].as_str(), secret) {
        (Some(path), Some(secret)) => once(
            s,
            "vcs",
            &format!("Connected {name}"),
            "Add a webhook to the repositories (or the organisation) on the git server with this URL and secret, for push and pull request events.",
            vec![
                OnceItem { label: "Webhook URL".into(), value: format!("{}{path}", c.public_url) },
                OnceItem { label: "Webhook secret".into(), value: secret },
            ],
            back,
            "Go to the integration",
        ),
        _ => see_other(&back),
    }
}

pub(crate) struct DeliveryView {
    pub(crate) delivery_id: String,
    pub(crate) event: String,
    pub(crate) badge: Badge,
    pub(crate) reason: String,
    pub(crate) runs: Vec<i64>,
    pub(crate) when: When,
}

#[derive(Template)]
#[template(path = "vcs_one.html")]
struct VcsOnePage {
    frame: Frame,
    name: String,
    kind: String,
    base_url: String,
    webhook_url: Option<String>,
    stacks: Vec<(String, String)>,
    deliveries: Vec<DeliveryView>,
}

pub(super) async fn vcs_one(c: &Console, s: &Session, name: &str) -> Response {
    let scope = s.viewer.scope();
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let read = async {
        let Some((id, kind, base_url, _)) = queries::integration_named(&mut conn, name, scope.as_deref()).await? else { return Ok(None) };
        let stacks = queries::linked_stacks(&mut conn, id, scope.as_deref()).await?;
        let deliveries = queries::deliveries(&mut conn, id, 50).await?;
        Ok::<_, diesel::result::Error>(Some((kind, base_url, stacks, deliveries)))
    };
    let (kind, base_url, stacks, deliveries) = match read.await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(Some(&s.viewer)),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let deliveries = deliveries
        .into_iter()
        .map(|d| {
            let badge = match d.outcome.as_str() {
                "runs_created" => Badge::of("runs created", "ok"),
                "ignored" => Badge::of("ignored", "idle"),
                "failed" => Badge::of("failed", "bad"),
                other => Badge::of(other, "wait"),
            };
            DeliveryView {
                delivery_id: d.delivery_id,
                event: d.event,
                badge,
                reason: d.error.or(d.detail).unwrap_or_default(),
                runs: d.run_ids,
                when: When::at(d.received_at),
            }
        })
        .collect();
    // The integration's settings are for those who may list integrations;
    // its deliveries and stacks for every reader, as in the API.
    let settings = s.viewer.may(Op::ListVcs);
    let webhook_url = (settings && kind != "git").then(|| format!("{}/webhooks/{kind}/{name}", c.public_url));
    let page = VcsOnePage {
        frame: Frame::new(name.to_string(), "vcs", Some(s.viewer.clone())),
        name: name.to_string(),
        kind,
        base_url: if settings { base_url } else { String::new() },
        webhook_url,
        stacks,
        deliveries,
    };
    html(StatusCode::OK, &page)
}

// ---- contexts ----

#[derive(Template)]
#[template(path = "contexts.html")]
struct ContextsPage {
    frame: Frame,
    viewer: Viewer,
    rows: Vec<(i64, String, String, String)>,
}

pub(super) async fn contexts(c: &Console, s: &Session) -> Response {
    let scope = s.viewer.scope();
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    match queries::contexts_list(&mut conn, scope.as_deref()).await {
        Ok(rows) => html(
            StatusCode::OK,
            &ContextsPage { frame: Frame::new("Contexts", "contexts", Some(s.viewer.clone())), viewer: s.viewer.clone(), rows },
        ),
        Err(e) => unavailable(Some(&s.viewer), &e),
    }
}

pub(super) async fn create_context(c: &Console, s: &Session, req: &Req) -> Response {
    let slug = req.field("slug").unwrap_or_default().trim().to_string();
    operate(
        c,
        s,
        "mutation($s: String!, $n: String!, $d: String!) { createContext(slug: $s, name: $n, description: $d) { id } }",
        json!({ "s": slug, "n": req.field("name").unwrap_or_default().trim(), "d": req.field("description").unwrap_or_default().trim() }),
        &format!("/contexts/{}", urlencode(&slug)),
    )
    .await
}

#[derive(Template)]
#[template(path = "context.html")]
struct ContextPage {
    frame: Frame,
    viewer: Viewer,
    slug: String,
    name: String,
    description: String,
    variables: Vec<super::stacks::VariableView>,
    stacks: Vec<(String, String, i32)>,
    all_stacks: Vec<String>,
}

pub(super) async fn context(c: &Console, s: &Session, slug: &str) -> Response {
    let scope = s.viewer.scope();
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let read = async {
        let Some((id, slug, name, description)) = queries::context_named(&mut conn, slug, scope.as_deref()).await? else { return Ok(None) };
        let vars = queries::context_variables(&mut conn, id).await?;
        let stacks = queries::context_stacks(&mut conn, id, scope.as_deref()).await?;
        let all = queries::stack_slugs(&mut conn, scope.as_deref()).await?;
        Ok::<_, diesel::result::Error>(Some((slug, name, description, vars, stacks, all)))
    };
    let (slug, name, description, vars, stacks, all_stacks) = match read.await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(Some(&s.viewer)),
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let variables = vars
        .into_iter()
        .map(|(name, secret, value, at)| super::stacks::VariableView {
            name,
            secret,
            value: if secret { String::new() } else { value.unwrap_or_default() },
            when: When::at(at),
        })
        .collect();
    let page = ContextPage {
        frame: Frame::new(name.clone(), "contexts", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        slug,
        name,
        description,
        variables,
        stacks,
        all_stacks,
    };
    html(StatusCode::OK, &page)
}

pub(super) async fn context_action(c: &Console, s: &Session, req: &Req, slug: &str, action: &str) -> Response {
    let back = format!("/contexts/{}", urlencode(slug));
    let field = |k: &str| req.field(k).unwrap_or_default().trim().to_string();
    match action {
        "variables" => {
            operate(
                c,
                s,
                "mutation($c: String!, $n: String!, $v: String!, $x: Boolean) { setContextVariable(context: $c, name: $n, value: $v, secret: $x) { id } }",
                json!({ "c": slug, "n": field("name"), "v": req.field("value").unwrap_or_default().replace("\r\n", "\n"), "x": req.field("secret") == Some("on") }),
                &back,
            )
            .await
        }
        "variables/delete" => {
            operate(c, s, "mutation($c: String!, $n: String!) { deleteContextVariable(context: $c, name: $n) }", json!({ "c": slug, "n": field("name") }), &back).await
        }
        "attach" => {
            let priority = field("priority").parse::<i32>().unwrap_or(0);
            operate(
                c,
                s,
                "mutation($s: String!, $c: String!, $p: Int!) { attachContext(stack: $s, context: $c, priority: $p) { id } }",
                json!({ "s": field("stack"), "c": slug, "p": priority }),
                &back,
            )
            .await
        }
        _ => operate(c, s, "mutation($s: String!, $c: String!) { detachContext(stack: $s, context: $c) { id } }", json!({ "s": field("stack"), "c": slug }), &back).await,
    }
}

// ---- administration ----

pub(crate) struct UserView {
    pub(crate) id: i64,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) disabled: bool,
    pub(crate) when: When,
}

pub(crate) struct KeyView {
    pub(crate) id: i64,
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) role: String,
    pub(crate) used: Option<When>,
    pub(crate) active: bool,
    pub(crate) badge: Badge,
}

fn key_view(k: queries::KeyLine) -> KeyView {
    let (id, owner, name, prefix, role, _created, used, expires, revoked) = k;
    let now = chrono::Utc::now();
    let (active, badge) = if revoked.is_some() {
        (false, Badge::of("revoked", "bad"))
    } else if expires.is_some_and(|e| e <= now) {
        (false, Badge::of("expired", "idle"))
    } else {
        (true, Badge::of("active", "ok"))
    };
    KeyView { id, owner, name, prefix: format!("hak_{prefix}…"), role, used: used.map(When::at), active, badge }
}

pub(crate) struct JobView {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) attempts: i32,
    pub(crate) error: String,
    pub(crate) when: When,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    frame: Frame,
    viewer: Viewer,
    users: Vec<UserView>,
    roles: Vec<&'static str>,
    keys: Vec<KeyView>,
    jobs: Vec<JobView>,
}

/// Pages that read what the role table keeps from some roles: anyone else
/// is told so, as the API would.
fn refused(s: &Session, op: Op) -> Option<Response> {
    if s.viewer.may(op) {
        None
    } else {
        let message = format!("This page needs the {} role.", op.role());
        Some(super::error_page(Some(&s.viewer), StatusCode::FORBIDDEN, "Not allowed", &message))
    }
}

pub(super) async fn admin(c: &Console, s: &Session) -> Response {
    if let Some(r) = refused(s, Op::ListUsers).or_else(|| refused(s, Op::ManageJobs)) {
        return r;
    }
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let read = async {
        let users = queries::users_list(&mut conn).await?;
        let keys = queries::api_keys_list(&mut conn, None).await?;
        Ok::<_, diesel::result::Error>((users, keys))
    };
    let (users, keys) = match read.await {
        Ok(x) => x,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let jobs = match hangar_db::queue::dead_jobs(&mut conn, 50).await {
        Ok(j) => j,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let page = AdminPage {
        frame: Frame::new("Administration", "admin", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        users: users
            .into_iter()
            .map(|(id, email, name, role, disabled, at)| UserView { id, email, name, role: role.to_ascii_uppercase(), disabled, when: When::at(at) })
            .collect(),
        roles: vec!["READER", "WRITER", "ADMIN"],
        keys: keys.into_iter().map(key_view).collect(),
        jobs: jobs
            .into_iter()
            .map(|j| JobView { id: j.id, kind: j.kind, attempts: j.attempts, error: j.last_error.unwrap_or_default(), when: When::at(j.created_at) })
            .collect(),
    };
    html(StatusCode::OK, &page)
}

pub(super) async fn create_user(c: &Console, s: &Session, req: &Req) -> Response {
    let f = |k: &str| req.field(k).unwrap_or_default().trim().to_string();
    operate(
        c,
        s,
        "mutation($e: String!, $n: String!, $r: UserRole!, $p: String!) { createUser(email: $e, name: $n, role: $r, password: $p) { id } }",
        json!({ "e": f("email"), "n": f("name"), "r": f("role"), "p": req.field("password").unwrap_or_default() }),
        "/admin#users",
    )
    .await
}

pub(super) async fn update_user(c: &Console, s: &Session, req: &Req, id: &str, action: Option<&str>) -> Response {
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else { return not_found(Some(&s.viewer)) };
    let vars = match action {
        Some("disable") => json!({ "id": id.to_string(), "d": true }),
        Some("enable") => json!({ "id": id.to_string(), "d": false }),
        _ => json!({ "id": id.to_string(), "r": req.field("role").unwrap_or_default() }),
    };
    operate(c, s, "mutation($id: ID!, $r: UserRole, $d: Boolean) { updateUser(id: $id, role: $r, disabled: $d) { id } }", vars, "/admin#users").await
}

pub(super) async fn retry_job(c: &Console, s: &Session, id: &str) -> Response {
    operate(c, s, "mutation($id: ID!) { retryDeadJob(id: $id) }", json!({ "id": id }), "/admin#jobs").await
}

pub(super) async fn apply_bundle(c: &Console, s: &Session, id: &str) -> Response {
    operate(c, s, "mutation($id: ID!) { applyBundle(id: $id) { id } }", json!({ "id": id }), "/admin/system#bundles").await
}

pub(super) async fn upgrade_appliance(c: &Console, s: &Session, id: &str) -> Response {
    operate(c, s, "mutation($b: ID!) { upgradeAppliance(bundle: $b) { id } }", json!({ "b": id }), "/admin/system#bundles").await
}

pub(super) async fn revoke_key(c: &Console, s: &Session, id: &str) -> Response {
    let back = if s.viewer.is_admin() { "/admin#keys" } else { "/account" };
    operate(c, s, "mutation($id: ID!) { revokeApiKey(id: $id) { id } }", json!({ "id": id }), back).await
}

pub(crate) struct AuditView {
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) details: String,
    pub(crate) when: When,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    f: AuditFilter,
    rows: Vec<AuditView>,
    older_href: Option<String>,
}

pub(super) async fn audit(c: &Console, s: &Session, req: &Req) -> Response {
    if let Some(r) = refused(s, Op::ReadAudit) {
        return r;
    }
    const PAGE: i64 = 50;
    let q = |k: &str| req.query_param(k).unwrap_or_default().trim().chars().take(200).collect::<String>();
    let f = AuditFilter { actor: q("actor"), action: q("action"), target: q("target") };
    let before = req.query_param("before").and_then(|b| b.parse::<i64>().ok()).filter(|b| *b > 0);
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let mut rows = match queries::audit_page(&mut conn, &f, before, PAGE + 1).await {
        Ok(r) => r,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let older_href = if more {
        rows.last().map(|r| {
            let params = [("actor", f.actor.clone()), ("action", f.action.clone()), ("target", f.target.clone()), ("before", r.0.to_string())];
            format!("/admin/audit?{}", serde_urlencoded::to_string(params).unwrap_or_default())
        })
    } else {
        None
    };
    let rows = rows
        .into_iter()
        .map(|(_, actor, action, target, details, at)| AuditView {
            actor,
            action,
            target,
            details: if details.as_object().is_some_and(|o| o.is_empty()) { String::new() } else { details.to_string() },
            when: When::at(at),
        })
        .collect();
    let page = AuditPage { frame: Frame::new("Audit trail", "admin", Some(s.viewer.clone())), f, rows, older_href };
    html(StatusCode::OK, &page)
}

pub(crate) struct ServiceView {
    pub(crate) name: String,
    pub(crate) badge: Badge,
    pub(crate) pid: String,
    pub(crate) restarts: u32,
    pub(crate) since: Option<When>,
    pub(crate) detail: String,
}

pub(crate) struct CertView {
    pub(crate) name: String,
    pub(crate) subject: String,
    pub(crate) expires: Result<When, String>,
}

pub(crate) struct DiskView {
    pub(crate) path: String,
    pub(crate) used: String,
    pub(crate) free: String,
}

#[derive(Template)]
#[template(path = "system.html")]
struct SystemPage {
    frame: Frame,
    viewer: Viewer,
    version: String,
    services: Result<Vec<ServiceView>, String>,
    certificates: Vec<CertView>,
    disks: Vec<DiskView>,
    bundles: Option<Result<Vec<BundleView>, String>>,
    /// The appliance's address, for the upload command shown.
    server: String,
    upgrades: Vec<UpgradeRecordView>,
    /// Bytes per request of an upload from the page.
    chunk_bytes: u64,
}

pub(crate) struct UpgradeRecordView {
    pub(crate) kind: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) requested_by: String,
    pub(crate) started: When,
    pub(crate) badge: Badge,
    pub(crate) steps: String,
    pub(crate) backup: String,
    pub(crate) downtime: String,
    pub(crate) error: Option<String>,
}

/// An upgrade asked for with a staged appliance bundle.
pub(crate) struct UpgradeAskedView {
    pub(crate) badge: Badge,
    pub(crate) requested_by: String,
    pub(crate) message: Option<String>,
}

pub(crate) struct BundleView {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) version: String,
    pub(crate) platform: String,
    pub(crate) size: String,
    pub(crate) uploaded_by: String,
    pub(crate) uploaded: When,
    /// Tools and worker bundles are applied here; appliance bundles by the installer.
    pub(crate) appliable: bool,
    pub(crate) applied: Option<(When, String)>,
    /// An appliance bundle the appliance can be upgraded to now.
    pub(crate) upgradable: bool,
    pub(crate) upgrade: Option<UpgradeAskedView>,
}

fn upgrade_badge(state: &str) -> Badge {
    let class = match state {
        "completed" => "ok",
        "requested" | "running" => "run",
        "rolled-back" | "rolled back" | "refused" => "wait",
        "failed" => "bad",
        _ => "idle",
    };
    Badge::of(&state.replace('-', " "), class)
}

fn bytes(n: &Result<u64, String>) -> String {
    match n {
        Ok(b) => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut v = *b as f64;
            let mut u = 0;
            while v >= 1024.0 && u < units.len() - 1 {
                v /= 1024.0;
                u += 1;
            }
            if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", units[u]) }
        }
        Err(e) => format!("unknown ({e})"),
    }
}

pub(super) async fn system(c: &Console, s: &Session) -> Response {
    if let Some(r) = refused(s, Op::ReadSystem) {
        return r;
    }
    let facts = c.backend.system().await;
    let services = facts.services.map(|list| {
        list.into_iter()
            .map(|f| ServiceView {
                badge: Badge::of(
                    &f.state,
                    match f.state.as_str() {
                        "ready" => "ok",
                        "starting" | "waiting" | "stopping" => "run",
                        "unready" | "backoff" => "wait",
                        "failed" => "bad",
                        _ => "idle",
                    },
                ),
                name: f.name,
                pid: f.pid.map(|p| p.to_string()).unwrap_or_default(),
                restarts: f.restarts,
                since: f.started_at.map(When::at),
                detail: f.detail,
            })
            .collect()
    });
    let version = facts.version.clone();
    let page = SystemPage {
        frame: Frame::new("System", "admin", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        version: facts.version,
        services,
        certificates: facts
            .certificates
            .into_iter()
            .map(|c| CertView { name: c.name, subject: c.subject, expires: c.not_after.map(When::at) })
            .collect(),
        disks: facts.disks.into_iter().map(|d| DiskView { used: bytes(&d.used_bytes), free: bytes(&d.free_bytes), path: d.path }).collect(),
        upgrades: facts
            .upgrades
            .into_iter()
            .map(|r| UpgradeRecordView {
                badge: upgrade_badge(&r.outcome),
                steps: r.steps.join(" · "),
                backup: r.backup.unwrap_or_else(|| "none".into()),
                downtime: r.downtime_secs.map(|d| format!("{d:.1} s")).unwrap_or_else(|| "none".into()),
                started: When::at(r.started_at),
                kind: r.kind,
                from: r.from,
                to: r.to,
                requested_by: r.requested_by,
                error: r.error,
            })
            .collect(),
        bundles: facts.bundles.map(|r| {
            let busy = r.as_ref().is_ok_and(|list| {
                list.iter().any(|b| b.upgrade.as_ref().is_some_and(|u| matches!(u.state.as_str(), "requested" | "running")))
            });
            let running = version.clone();
            r.map(|list| {
                list.into_iter()
                    .map(|b| BundleView {
                        upgradable: b.kind == "appliance"
                            && b.version != running
                            && !busy
                            && b.upgrade.as_ref().is_none_or(|u| u.state != "completed"),
                        upgrade: b.upgrade.map(|u| UpgradeAskedView {
                            badge: upgrade_badge(&u.state),
                            requested_by: u.requested_by,
                            message: u.message,
                        }),
                        appliable: matches!(b.kind.as_str(), "tools" | "worker"),
                        applied: b.applied.map(|(at, by)| (When::at(at), by)),
                        size: bytes(&Ok(b.size)),
                        uploaded: When::at(b.uploaded_at),
                        id: b.id,
                        kind: b.kind,
                        version: b.version,
                        platform: b.platform,
                        uploaded_by: b.uploaded_by,
                    })
                    .collect()
            })
        }),
        server: c.public_url.clone(),
        chunk_bytes: 8 << 20,
    };
    html(StatusCode::OK, &page)
}

// ---- the caller's account ----

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    viewer: Viewer,
    error: Option<String>,
    keys: Vec<KeyView>,
}

pub(super) async fn account(c: &Console, s: &Session, error: Option<String>) -> Response {
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let keys = match queries::api_keys_list(&mut conn, Some(&s.viewer.email)).await {
        Ok(k) => k,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let page = AccountPage {
        frame: Frame::new("Your account", "", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        error,
        keys: keys.into_iter().map(key_view).collect(),
    };
    html(status, &page)
}

pub(super) async fn change_password(c: &Console, s: &Session, req: &Req) -> Response {
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
            json!({ "c": req.field("current").unwrap_or_default(), "n": req.field("new").unwrap_or_default() }),
        )
        .await;
    match answer {
        Ok(_) => {
            let mut page = account(c, s, None).await;
            if page.status() == StatusCode::OK {
                page = see_other("/account?changed=1");
            }
            page
        }
        Err(e) if e.code == "BAD_USER_INPUT" => account(c, s, Some(e.message)).await,
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn create_key(c: &Console, s: &Session, req: &Req) -> Response {
    let days = req.field("days").and_then(|d| d.trim().parse::<i32>().ok());
    let answer = c
        .backend
        .execute(
            Some(&s.token),
            "mutation($n: String!, $d: Int) { createApiKey(name: $n, expiresInDays: $d) { key } }",
            json!({ "n": req.field("name").unwrap_or_default().trim(), "d": days }),
        )
        .await;
    match answer {
        Ok(d) => once(
            s,
            "",
            "API key created",
            "Send it as `Authorization: Bearer <key>` to /graphql. Only its hash is kept.",
            vec![OnceItem { label: "API key".into(), value: d["createApiKey"]["key"].as_str().unwrap_or_default().to_string() }],
            "/account".into(),
            "Back to your account",
        ),
        Err(e) => op_error(&s.viewer, &e),
    }
}
