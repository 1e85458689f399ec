//! Spaces and per-space roles, against the `hangar server` process over TLS.
//!
//! The matrix: users confined to one space ("team", with a role granted there
//! and no role of their own) try every operation on things of their space, of
//! its parent, of its child and of a sibling. The table says what must happen:
//! below the role an operation needs, it is refused; in the own space and the
//! spaces below, it is done; in the parent and the sibling, the thing does not
//! exist for them (absent from lists, null, or not found), whatever their role.
//! The state backend and the console answer the same way.

mod common;

use common::*;
use serde_json::{Value, json};

/// The tree: root → org → {team → team-sub, other}.
const SPACES: [(&str, &str); 4] = [("org", "root"), ("team", "org"), ("team-sub", "team"), ("other", "org")];

/// Where a target space stands from "team", the space the users are granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Own,
    Parent,
    Child,
    Sibling,
}

const TARGETS: [(Relation, &str); 4] =
    [(Relation::Own, "team"), (Relation::Parent, "org"), (Relation::Child, "team-sub"), (Relation::Sibling, "other")];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Reader,
    Writer,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done (or refused for a reason other than authorization).
    Done,
    /// The thing is not there for the caller.
    Absent,
    /// Refused for the role.
    Forbidden,
}

/// What the table says. Operations that take the thing by name refuse a
/// role too low before looking it up (so a reader learns nothing by trying
/// to write); a field of a thing that is absent is absent.
fn expected(role: Role, op: &Op, rel: Relation) -> Outcome {
    let seen = matches!(rel, Relation::Own | Relation::Child);
    if role < op.needed && (op.gated || seen) {
        Outcome::Forbidden
    } else if seen {
        Outcome::Done
    } else {
        Outcome::Absent
    }
}

/// The things of one space the operations act on.
struct Target {
    space: String,
    stack: String,
    run: String,
    context: String,
    pool: String,
}

/// How an operation's answer is read.
enum Read {
    /// `data.<field>` is null when absent.
    Lookup(&'static str),
    /// `data.<field>` is a list whose items' `<key>` names the target when present.
    List(&'static str, &'static str),
    /// A mutation or a query with an argument: NOT_FOUND is absent, FORBIDDEN
    /// forbidden, no error or one of these codes done.
    Call(&'static [&'static str]),
}

struct Op {
    name: &'static str,
    needed: Role,
    query: &'static str,
    vars: fn(&Target, &str) -> Value,
    read: Read,
    /// What a listed item must be named for the target to count as present.
    listed: fn(&Target) -> String,
    /// Refused for the role before the thing is looked up.
    gated: bool,
}

fn none(_: &Target) -> String {
    String::new()
}

fn ops() -> Vec<Op> {
    vec![
        Op { name: "stack", needed: Role::Reader, query: "query($s: String!) { stack(slug: $s) { slug } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Lookup("stack"), listed: none, gated: true },
        Op { name: "stacks", needed: Role::Reader, query: "{ stacks { slug } }", vars: |_, _| json!({}), read: Read::List("stacks", "slug"), listed: |t| t.stack.clone(), gated: true },
        Op { name: "runs", needed: Role::Reader, query: "query($s: String!) { runs(stack: $s) { items { id } } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "run", needed: Role::Reader, query: "query($r: ID!) { run(id: $r) { id } }", vars: |t, _| json!({ "r": t.run }), read: Read::Lookup("run"), listed: none, gated: true },
        Op { name: "runLogs", needed: Role::Reader, query: "query($r: ID!) { runLogs(run: $r) { complete } }", vars: |t, _| json!({ "r": t.run }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "stateVersions", needed: Role::Reader, query: "query($s: String!) { stateVersions(stack: $s) { id } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "context", needed: Role::Reader, query: "query($c: String!) { context(slug: $c) { slug } }", vars: |t, _| json!({ "c": t.context }), read: Read::Lookup("context"), listed: none, gated: true },
        Op { name: "contexts", needed: Role::Reader, query: "{ contexts { slug } }", vars: |_, _| json!({}), read: Read::List("contexts", "slug"), listed: |t| t.context.clone(), gated: true },
        Op { name: "workerPools", needed: Role::Reader, query: "{ workerPools { name } }", vars: |_, _| json!({}), read: Read::List("workerPools", "name"), listed: |t| t.pool.clone(), gated: true },
        Op { name: "space", needed: Role::Reader, query: "query($s: String!) { space(slug: $s) { slug } }", vars: |t, _| json!({ "s": t.space }), read: Read::Lookup("space"), listed: none, gated: true },
        Op { name: "spaces", needed: Role::Reader, query: "{ spaces { slug } }", vars: |_, _| json!({}), read: Read::List("spaces", "slug"), listed: |t| t.space.clone(), gated: true },
        Op { name: "setStackVariable", needed: Role::Writer, query: "mutation($s: String!) { setStackVariable(stack: $s, name: \"M\", value: \"1\") { name } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "triggerRun", needed: Role::Writer, query: "mutation($s: String!) { triggerRun(stack: $s, commitSha: \"0123456789012345678901234567890123456789\", kind: PROPOSED) { id } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Call(&[]), listed: none, gated: true },
        // The run is QUEUED: an authorized discard is refused for its state.
        Op { name: "discardRun", needed: Role::Writer, query: "mutation($r: ID!) { discardRun(id: $r) { id } }", vars: |t, _| json!({ "r": t.run }), read: Read::Call(&["REFUSED"]), listed: none, gated: true },
        Op { name: "reviewRun", needed: Role::Writer, query: "mutation($r: ID!) { reviewRun(id: $r, decision: APPROVE, note: \"ok\") { id } }", vars: |t, _| json!({ "r": t.run }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createStack", needed: Role::Writer, query: "mutation($i: StackInput!) { createStack(input: $i) { slug } }", vars: |t, n| json!({ "i": { "slug": format!("new-{n}"), "name": "New", "repository": "https://git.example/x.git", "branch": "main", "tool": "TERRAFORM", "toolVersion": "1.0.3", "space": t.space } }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createContext", needed: Role::Writer, query: "mutation($c: String!, $s: String!) { createContext(slug: $c, name: \"C\", space: $s) { slug } }", vars: |t, n| json!({ "c": format!("ctx-new-{n}"), "s": t.space }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createWorkerPool", needed: Role::Admin, query: "mutation($p: String!, $s: String!) { createWorkerPool(name: $p, space: $s) { name } }", vars: |t, n| json!({ "p": format!("pool-new-{n}"), "s": t.space }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createJoinToken", needed: Role::Admin, query: "mutation($p: String!) { createJoinToken(pool: $p) { pool } }", vars: |t, _| json!({ "p": t.pool }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createPolicy", needed: Role::Admin, query: "mutation($i: PolicyInput!) { createPolicy(input: $i) { name } }", vars: |t, n| json!({ "i": { "name": format!("pol-new-{n}"), "kind": "PLAN", "body": "package hangar\ndeny contains \"no\" if { false }\n", "space": t.space } }), read: Read::Call(&[]), listed: none, gated: true },
        // Nothing is locked: an authorized force-unlock answers null.
        Op { name: "forceUnlockState", needed: Role::Admin, query: "mutation($s: String!) { forceUnlockState(stack: $s, lockId: \"x\") { lockId } }", vars: |t, _| json!({ "s": t.stack }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "grantSpaceRole", needed: Role::Admin, query: "mutation($s: String!) { grantSpaceRole(space: $s, user: \"bystander@hangar.test\", role: READER) { slug } }", vars: |t, _| json!({ "s": t.space }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "createSpace", needed: Role::Admin, query: "mutation($n: String!, $s: String!) { createSpace(slug: $n, name: \"N\", parent: $s) { slug } }", vars: |t, n| json!({ "n": format!("sp-new-{n}"), "s": t.space }), read: Read::Call(&[]), listed: none, gated: true },
        Op { name: "space.grants", needed: Role::Admin, query: "query($s: String!) { space(slug: $s) { grants { user } } }", vars: |t, _| json!({ "s": t.space }), read: Read::Call(&[]), listed: none, gated: false },
    ]
}

/// What happened, read the way the operation's answer is read. A space that
/// is absent from `space(slug)` also makes `space.grants` absent.
fn outcome(op: &Op, target: &Target, body: &Value) -> Outcome {
    let code = body["errors"][0]["extensions"]["code"].as_str();
    match (&op.read, code) {
        (_, Some("FORBIDDEN")) => Outcome::Forbidden,
        (_, Some("NOT_FOUND")) => Outcome::Absent,
        (Read::Lookup(field), None) => if body["data"][field].is_null() { Outcome::Absent } else { Outcome::Done },
        (Read::List(field, key), None) => {
            let name = (op.listed)(target);
            let items = body["data"][field].as_array().unwrap_or_else(|| panic!("{}: {body}", op.name));
            if items.iter().any(|i| i[key] == name.as_str()) { Outcome::Done } else { Outcome::Absent }
        }
        (Read::Call(_), None) if op.name == "space.grants" && body["data"]["space"].is_null() => Outcome::Absent,
        (Read::Call(_), None) => Outcome::Done,
        (Read::Call(ok), Some(c)) if ok.contains(&c) => Outcome::Done,
        (_, Some(other)) => panic!("{}: unexpected error {other}: {body}", op.name),
    }
}

async fn create_user(app: &Appliance, admin: &str, email: &str, role: &str, password: &str) {
    app.ok(
        admin,
        "mutation($e: String!, $r: UserRole!, $p: String!) { createUser(email: $e, role: $r, password: $p) { id } }",
        json!({ "e": email, "r": role, "p": password }),
    )
    .await;
}

async fn grant(app: &Appliance, admin: &str, space: &str, email: &str, role: &str) {
    app.ok(
        admin,
        "mutation($s: String!, $u: String!, $r: UserRole!) { grantSpaceRole(space: $s, user: $u, role: $r) { slug } }",
        json!({ "s": space, "u": email, "r": role }),
    )
    .await;
}

/// The tree with a stack (and a queued run), a context and a pool in each space.
async fn build_tree(app: &Appliance, admin: &str) -> Vec<(Relation, Target)> {
    for (slug, parent) in SPACES {
        let made = app
            .ok(admin, "mutation($s: String!, $p: String!) { createSpace(slug: $s, name: $s, parent: $p) { slug parent { slug } } }", json!({ "s": slug, "p": parent }))
            .await;
        assert_eq!(made["createSpace"]["parent"]["slug"], parent);
    }
    let mut out = Vec::new();
    for (rel, space) in TARGETS {
        let stack = format!("st-{space}");
        let mut input = stack_input(&stack, "https://git.example/infra.git");
        input["space"] = json!(space);
        app.ok(admin, CREATE_STACK, json!({ "i": input })).await;
        let run = app
            .ok(admin, "mutation($s: String!) { triggerRun(stack: $s, commitSha: \"0123456789012345678901234567890123456789\") { id } }", json!({ "s": stack }))
            .await["triggerRun"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let context = format!("ctx-{space}");
        app.ok(admin, "mutation($c: String!, $s: String!) { createContext(slug: $c, name: $c, space: $s) { slug } }", json!({ "c": context, "s": space })).await;
        let pool = format!("pool-{space}");
        app.ok(admin, "mutation($p: String!, $s: String!) { createWorkerPool(name: $p, space: $s) { name } }", json!({ "p": pool, "s": space })).await;
        out.push((rel, Target { space: space.to_string(), stack, run, context, pool }));
    }
    out
}

#[tokio::test]
async fn each_role_each_operation_in_the_own_parent_child_and_sibling_space() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let targets = build_tree(&app, &admin).await;
    create_user(&app, &admin, "bystander@hangar.test", "NO_ACCESS", "Quiet-Harbor-7-Lamp!").await;

    let mut users = Vec::new();
    for (role, name) in [(Role::Reader, "READER"), (Role::Writer, "WRITER"), (Role::Admin, "ADMIN")] {
        let email = format!("{}@team.test", name.to_lowercase());
        let password = format!("Blue-Cactus-{}-Ring!", name.len());
        create_user(&app, &admin, &email, "NO_ACCESS", &password).await;
        grant(&app, &admin, "team", &email, name).await;
        users.push((role, app.login(&email, &password).await));
    }

    let ops = ops();
    let mut failures = Vec::new();
    let mut n = 0;
    for (role, token) in &users {
        for op in &ops {
            for (rel, target) in &targets {
                n += 1;
                let (status, body) = app.gql(Some(token), op.query, (op.vars)(target, &n.to_string())).await;
                assert_eq!(status, 200, "{}: {body}", op.name);
                let got = outcome(op, target, &body);
                let want = expected(*role, op, *rel);
                if got != want {
                    failures.push(format!("{role:?} {} on the {rel:?} space ({}): {got:?}, the table says {want:?}: {body}", op.name, target.space));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {n} cases differ from the table:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(n, 3 * ops.len() * 4);

    // Without a role of their own, nothing global is theirs, whatever their grants.
    for (_, token) in &users {
        for q in ["{ users { email } }", "{ auditEvents { items { action } } }", "{ deadJobs { id } }"] {
            assert_eq!(app.err(Some(token), q, json!({})).await.0, "FORBIDDEN", "{q}");
        }
    }
}

#[tokio::test]
async fn a_user_without_grants_sees_nothing_and_the_state_backend_and_console_follow_the_space() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let targets = build_tree(&app, &admin).await;

    // No own role and no grant: every list empty, every lookup absent.
    create_user(&app, &admin, "nobody@hangar.test", "NO_ACCESS", "Empty-Field-9-Stone!").await;
    let nobody = app.login("nobody@hangar.test", "Empty-Field-9-Stone!").await;
    let lists = app.ok(&nobody, "{ stacks { slug } contexts { slug } workerPools { name } spaces { slug } policies { name } }", json!({})).await;
    for field in ["stacks", "contexts", "workerPools", "spaces", "policies"] {
        assert_eq!(lists[field], json!([]), "{field}: {lists}");
    }
    for (_, t) in &targets {
        let one = app.ok(&nobody, "query($s: String!, $r: ID!) { stack(slug: $s) { slug } run(id: $r) { id } space(slug: $s) { slug } }", json!({ "s": t.stack, "r": t.run })).await;
        assert_eq!(one, json!({ "stack": null, "run": null, "space": null }));
    }

    // A team writer's API key against the state backend: its own space's
    // stack needs the admin role there; another space's stack does not exist.
    create_user(&app, &admin, "dev@team.test", "NO_ACCESS", "Green-River-4-Oak!").await;
    grant(&app, &admin, "team", "dev@team.test", "WRITER").await;
    create_user(&app, &admin, "lead@team.test", "NO_ACCESS", "Tall-Bridge-6-Moss!").await;
    grant(&app, &admin, "team", "lead@team.test", "ADMIN").await;
    let key_of = |token: String| {
        let app = &app;
        async move {
            let made = app.ok(&token, "mutation { createApiKey(name: \"ci\") { key } }", json!({})).await;
            made["createApiKey"]["key"].as_str().unwrap().to_string()
        }
    };
    let dev_key = key_of(app.login("dev@team.test", "Green-River-4-Oak!").await).await;
    let lead_key = key_of(app.login("lead@team.test", "Tall-Bridge-6-Moss!").await).await;
    let state = |slug: &str, key: &str| {
        let req = app.client.get(app.url(&format!("/state/v1/{slug}"))).bearer_auth(key.to_string());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(state("st-team", &dev_key).await, 403, "a writer may not use the state backend");
    let lead_own = state("st-team", &lead_key).await;
    assert!(lead_own == 200 || lead_own == 204, "the team's admin opens its state: {lead_own}");
    assert!(matches!(state("st-team-sub", &lead_key).await, 200 | 204), "and the state of the space below");
    for other in ["st-other", "st-org"] {
        assert_eq!(state(other, &lead_key).await, 404, "{other}: another space's stack does not exist for the key");
    }
    // The same key through GraphQL.
    assert_eq!(app.err(Some(&lead_key), "{ stateVersions(stack: \"st-other\") { id } }", json!({})).await.0, "NOT_FOUND");
    // The run log endpoint of another space's run.
    let other_run = &targets.iter().find(|(r, _)| *r == Relation::Sibling).unwrap().1.run;
    let own_run = &targets.iter().find(|(r, _)| *r == Relation::Own).unwrap().1.run;
    let logs = |run: &str| {
        let req = app.client.get(app.url(&format!("/api/v1/runs/{run}/logs"))).bearer_auth(lead_key.clone());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(logs(other_run).await, 404);
    assert_eq!(logs(own_run).await, 200);

    // The console, signed in as the team's writer.
    let web = ConsoleSession::login_as(&app, "dev@team.test", "Green-River-4-Oak!").await;
    let list = web.get("/stacks").await;
    assert!(list.contains("st-team") && list.contains("st-team-sub"), "{list}");
    assert!(!list.contains("st-other") && !list.contains("st-org"), "{list}");
    for page in ["/contexts", "/pools"] {
        let body = web.get(page).await;
        assert!(!body.contains("ctx-other") && !body.contains("pool-other") && !body.contains("ctx-org") && !body.contains("pool-org"), "{page}: {body}");
    }
    let status = |path: String| {
        let req = web.client.get(format!("{}{path}", web.origin)).header("cookie", &web.cookie);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/stacks/st-other".into()).await, 404);
    assert_eq!(status(format!("/runs/{other_run}")).await, 404);
    assert_eq!(status("/contexts/ctx-other".into()).await, 404);
    // Pools: a writer sees the team's pools without their controls; the
    // team's admin manages them (and only them).
    let pools = web.get("/pools").await;
    assert!(pools.contains("pool-team") && !pools.contains("Create a join token"), "{pools}");
    let lead_web = ConsoleSession::login_as(&app, "lead@team.test", "Tall-Bridge-6-Moss!").await;
    let pools = lead_web.get("/pools").await;
    assert!(pools.contains("action=\"/pools/pool-team/token\"") && pools.contains("action=\"/pools/pool-team-sub/token\""), "{pools}");
    // The team's admin creates pools and connects git servers from the
    // console, in the team's spaces only; its writer gets no pool form, and
    // the git servers page is for admins.
    let offered = |page: &str| page.contains("<option value=\"team\">") && page.contains("<option value=\"team-sub\">") && !page.contains("value=\"other\"") && !page.contains("value=\"root\"");
    assert!(pools.contains("Create a worker pool") && offered(&pools), "{pools}");
    assert!(!web.get("/pools").await.contains("Create a worker pool"));
    let csrf = lead_web.csrf("/pools").await;
    assert_eq!(lead_web.post("/pools", &[("csrf", &csrf), ("name", "pool-made-here"), ("description", "by the lead"), ("space", "team-sub")]).await, 303);
    // Each pool says which space it is in.
    let pools = lead_web.get("/pools").await;
    let made = &pools[pools.find("id=\"pool-pool-made-here\"").expect("the new pool is listed")..];
    assert!(made[..made.find("</section>").unwrap()].contains("In the space team-sub"), "{pools}");
    let vcs = lead_web.get("/vcs").await;
    assert!(vcs.contains("Connect a git server") && offered(&vcs), "{vcs}");
    assert_eq!(status("/vcs".into()).await, 403, "git servers are for admins");
    let csrf = lead_web.csrf("/vcs").await;
    let form = [("csrf", csrf.as_str()), ("name", "team-git"), ("kind", "GIT"), ("base_url", "https://git.team.test"), ("space", "team")];
    assert_eq!(lead_web.post("/vcs", &form).await, 303);
    // Where they landed; and a space the lead does not administer is refused.
    let d = app.ok(&admin, "{ workerPools { name space { slug } } vcsIntegrations { name space { slug } } }", json!({})).await;
    assert!(d["workerPools"].as_array().unwrap().iter().any(|p| p["name"] == "pool-made-here" && p["space"]["slug"] == "team-sub"), "{d}");
    assert!(d["vcsIntegrations"].as_array().unwrap().iter().any(|i| i["name"] == "team-git" && i["space"]["slug"] == "team"), "{d}");
    let csrf = lead_web.csrf("/pools").await;
    assert_ne!(lead_web.post("/pools", &[("csrf", &csrf), ("name", "pool-elsewhere"), ("description", ""), ("space", "other")]).await, 303);
    let d = app.ok(&admin, "{ workerPools { name } }", json!({})).await;
    assert!(!d.to_string().contains("pool-elsewhere"), "{d}");
    let own = web.get("/stacks/st-team").await;
    assert!(own.contains(">Trigger a run</button>"), "the writer's controls on a stack of the team");
    let form = web.get("/stacks/new").await;
    assert!(form.contains("value=\"team\"") && form.contains("value=\"team-sub\"") && !form.contains("value=\"other\""), "{form}");

    // A dependency on another space's stack holds this one without naming it.
    app.ok(&admin, "mutation { addStackDependency(stack: \"st-team\", dependsOn: \"st-other\") { slug } }", json!({})).await;
    let dev = app.login("dev@team.test", "Green-River-4-Oak!").await;
    let held = app.ok(&dev, "{ stack(slug: \"st-team\") { held { kind stack runId message } dependsOn { stack { slug } } } }", json!({})).await;
    assert_eq!(held["stack"]["held"]["stack"], "a stack of a space you cannot see", "{held}");
    assert!(!held.to_string().contains("st-other"), "{held}");
    assert_eq!(held["stack"]["dependsOn"], json!([]));
    let seen_by_admin = app.ok(&admin, "{ stack(slug: \"st-team\") { held { stack } } }", json!({})).await;
    assert_eq!(seen_by_admin["stack"]["held"]["stack"], "st-other");
    let page = web.get("/stacks/st-team").await;
    assert!(page.contains("a stack of a space you cannot see") && !page.contains("st-other"), "{page}");
    app.ok(&admin, "mutation { removeStackDependency(stack: \"st-team\", dependsOn: \"st-other\") { slug } }", json!({})).await;

    // The console's live changes: runs of the team's spaces, never another's.
    let mut stream = web
        .client
        .get(format!("{}/events/changes", web.origin))
        .header("cookie", &web.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let trigger = "mutation($s: String!) { triggerRun(stack: $s, commitSha: \"0123456789012345678901234567890123456789\", kind: PROPOSED) { id } }";
    let other = app.ok(&admin, trigger, json!({ "s": "st-other" })).await["triggerRun"]["id"].as_str().unwrap().to_string();
    let own = app.ok(&admin, trigger, json!({ "s": "st-team" })).await["triggerRun"]["id"].as_str().unwrap().to_string();
    let mut told = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !told.contains(&format!("data:{own}\n")) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(bytes))) => told.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    assert!(told.contains(&format!("data:{own}\n")), "the team's run is told: {told:?}");
    assert!(!told.contains(&format!("data:{other}\n")), "another space's run is told: {told:?}");

    // Deleting: a space with things in it is refused with what it holds; the root never.
    let (code, msg) = app.err(Some(&admin), "mutation { deleteSpace(slug: \"other\") }", json!({})).await;
    assert_eq!(code, "REFUSED");
    assert!(msg.contains("1 stacks") && msg.contains("1 contexts") && msg.contains("1 worker pools"), "{msg}");
    assert_eq!(app.err(Some(&admin), "mutation { deleteSpace(slug: \"root\") }", json!({})).await.0, "REFUSED");
    // A team admin may not delete the team itself (that is its parent's admins').
    let lead = app.login("lead@team.test", "Tall-Bridge-6-Moss!").await;
    app.ok(&lead, "mutation { createSpace(slug: \"scratch\", name: \"Scratch\", parent: \"team\") { slug } }", json!({})).await;
    app.ok(&lead, "mutation { deleteSpace(slug: \"scratch\") }", json!({})).await;
    assert_eq!(app.err(Some(&lead), "mutation { deleteSpace(slug: \"team-sub\") }", json!({})).await.0, "REFUSED");
    assert_eq!(app.err(Some(&lead), "mutation { deleteSpace(slug: \"team\") }", json!({})).await.0, "FORBIDDEN");

    // Things of one branch serve only stacks of the same space or below.
    let (code, msg) = app
        .err(Some(&admin), "mutation { attachContext(stack: \"st-team\", context: \"ctx-other\") { slug } }", json!({}))
        .await;
    assert_eq!(code, "REFUSED", "{msg}");
    app.ok(&admin, "mutation { attachContext(stack: \"st-team-sub\", context: \"ctx-org\") { slug } }", json!({})).await;
    let mut input = stack_input("st-cross", "https://git.example/infra.git");
    input["space"] = json!("team");
    input["workerPool"] = json!("pool-other");
    assert_eq!(app.err(Some(&admin), CREATE_STACK, json!({ "i": input })).await.0, "REFUSED");

    // Hostile grants.
    for (q, code) in [
        ("mutation { grantSpaceRole(space: \"team\", user: \"ghost@hangar.test\", role: READER) { slug } }", "NOT_FOUND"),
        ("mutation { grantSpaceRole(space: \"team\", role: READER) { slug } }", "BAD_USER_INPUT"),
        ("mutation { grantSpaceRole(space: \"team\", user: \"dev@team.test\", role: NO_ACCESS) { slug } }", "BAD_USER_INPUT"),
        ("mutation { grantSpaceRole(space: \"nowhere\", user: \"dev@team.test\", role: READER) { slug } }", "NOT_FOUND"),
        ("mutation { createSpace(slug: \"Bad Slug\", name: \"x\") { slug } }", "BAD_USER_INPUT"),
        ("mutation { createSpace(slug: \"team\", name: \"again\") { slug } }", "CONFLICT"),
        ("mutation { revokeSpaceRole(space: \"other\", user: \"dev@team.test\") }", "NOT_FOUND"),
    ] {
        assert_eq!(app.err(Some(&admin), q, json!({})).await.0, code, "{q}");
    }
    // Revoking takes the space away at once.
    app.ok(&admin, "mutation { revokeSpaceRole(space: \"team\", user: \"dev@team.test\") }", json!({})).await;
    let dev = app.login("dev@team.test", "Green-River-4-Oak!").await;
    assert_eq!(app.ok(&dev, "{ stacks { slug } }", json!({})).await["stacks"], json!([]));
}
