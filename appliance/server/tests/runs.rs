//! Runs through the API: triggering at the head of a real git branch, paging,
//! confirm, discard and cancel in every state that allows them (and the one
//! that must refuse), with the state history and the audit trail. The test
//! plays the drain and the worker by moving runs with `hangar_db::runs`.

mod common;

use common::*;
use hangar_db::runs;
use hangar_testkit::GitServer;
use hangar_types::RunState;
use serde_json::json;

const TRIGGER: &str = "mutation($s: String!, $c: String) { triggerRun(stack: $s, commitSha: $c) { id state commitSha branch triggeredBy } }";

async fn advance(app: &Appliance, run: i64, path: &[RunState]) {
    let mut c = app.pg.database().connect().await.unwrap();
    for to in path {
        runs::transition(&mut c, run, None, *to, "test worker", "worker:1").await.unwrap();
    }
}

fn id(v: &serde_json::Value) -> i64 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn trigger_resolves_the_branch_head_with_git_and_reports_failures_clearly() {
    let app = Appliance::start().await;
    let git = GitServer::start().await;
    git.create_repo("infra");
    let head = git.push_files("infra", "main", &[("main.tf", "terraform {}\n")], "first");
    let w = app.admin_token().await;
    app.ok(&w, CREATE_STACK, json!({ "i": stack_input("infra", &git.url("infra")) })).await;

    let run = app.ok(&w, TRIGGER, json!({ "s": "infra" })).await;
    assert_eq!(run["triggerRun"]["commitSha"], head);
    assert_eq!(run["triggerRun"]["state"], "QUEUED");
    assert_eq!(run["triggerRun"]["branch"], "main");
    assert_eq!(run["triggerRun"]["triggeredBy"], ADMIN_EMAIL);

    let newer = git.push_files("infra", "main", &[("main.tf", "terraform { }\n")], "second");
    assert_eq!(app.ok(&w, TRIGGER, json!({ "s": "infra" })).await["triggerRun"]["commitSha"], newer);

    // An explicit commit is taken as given (normalised), without asking git.
    let requests = git.request_count();
    let upper = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
    let explicit = app.ok(&w, TRIGGER, json!({ "s": "infra", "c": upper })).await;
    assert_eq!(explicit["triggerRun"]["commitSha"], upper.to_lowercase());
    assert_eq!(git.request_count(), requests);
    for bad in ["abc", "zz".repeat(20).as_str(), "HEAD", "main; rm -rf /"] {
        let (code, _) = app.err(Some(&w), TRIGGER, json!({ "s": "infra", "c": bad })).await;
        assert_eq!(code, "BAD_USER_INPUT", "{bad}");
    }

    // A branch that does not exist, a repository that does not exist, and a
    // server that is down: each refused with a message saying where.
    app.ok(&w, "mutation { updateStack(slug: \"infra\", input: { branch: \"nope\" }) { branch } }", json!({})).await;
    let (code, msg) = app.err(Some(&w), TRIGGER, json!({ "s": "infra" })).await;
    assert_eq!(code, "REFUSED");
    assert!(msg.contains("\"nope\" does not exist") && msg.contains(&git.url("infra")), "{msg}");

    app.ok(&w, CREATE_STACK, json!({ "i": stack_input("ghost", &git.url("ghost")) })).await;
    let (code, msg) = app.err(Some(&w), TRIGGER, json!({ "s": "ghost" })).await;
    assert_eq!(code, "REFUSED");
    assert!(msg.contains("git ls-remote") && msg.contains(&git.url("ghost")), "{msg}");

    let closed = format!("http://127.0.0.1:{}/infra.git", hangar_testkit::free_port());
    app.ok(&w, CREATE_STACK, json!({ "i": stack_input("down", &closed) })).await;
    let (code, msg) = app.err(Some(&w), TRIGGER, json!({ "s": "down" })).await;
    assert_eq!(code, "REFUSED");
    assert!(msg.contains(&closed), "{msg}");
    assert_eq!(app.err(Some(&w), TRIGGER, json!({ "s": "no-such-stack" })).await.0, "NOT_FOUND");
}

#[tokio::test]
async fn confirm_discard_and_cancel_follow_the_transition_table() {
    let app = Appliance::start().await;
    let w = app.admin_token().await;
    app.ok(&w, CREATE_STACK, json!({ "i": stack_input("net", "https://git.example/net.git") })).await;
    let sha = "b".repeat(40);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(id(&app.ok(&w, TRIGGER, json!({ "s": "net", "c": sha })).await["triggerRun"]["id"]));
    }

    // Paging, newest first.
    let page = "query($a: ID) { runs(stack: \"net\", first: 3, after: $a) { items { id } nextCursor } }";
    let mut seen = Vec::new();
    let mut after = serde_json::Value::Null;
    loop {
        let p = app.ok(&w, page, json!({ "a": after })).await;
        seen.extend(p["runs"]["items"].as_array().unwrap().iter().map(|r| id(&r["id"])));
        after = p["runs"]["nextCursor"].clone();
        if after.is_null() {
            break;
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    assert_eq!(app.err(Some(&w), "{ runs(stack: \"net\", first: 1000) { items { id } } }", json!({})).await.0, "BAD_USER_INPUT");

    let op = |name: &'static str| format!("mutation($id: ID!) {{ {name}(id: $id) {{ state }} }}");
    let state = |v: serde_json::Value, name: &str| v[name]["state"].as_str().unwrap().to_string();

    // QUEUED → CANCELED.
    let r = app.ok(&w, &op("cancelRun"), json!({ "id": ids[0].to_string() })).await;
    assert_eq!(state(r, "cancelRun"), "CANCELED");
    // READY → CANCELED.
    advance(&app, ids[1], &[RunState::Ready]).await;
    assert_eq!(state(app.ok(&w, &op("cancelRun"), json!({ "id": ids[1].to_string() })).await, "cancelRun"), "CANCELED");
    // PLANNING → STOPPED.
    advance(&app, ids[2], &[RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning]).await;
    assert_eq!(state(app.ok(&w, &op("cancelRun"), json!({ "id": ids[2].to_string() })).await, "cancelRun"), "STOPPED");
    // UNCONFIRMED → CONFIRMED → (worker applies) … an apply cannot be stopped.
    let to_unconfirmed = [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Unconfirmed];
    advance(&app, ids[3], &to_unconfirmed).await;
    let (code, msg) = app.err(Some(&w), &op("cancelRun"), json!({ "id": ids[3].to_string() })).await;
    assert!(code == "REFUSED" && msg.contains("discard"), "{msg}");
    assert_eq!(state(app.ok(&w, &op("confirmRun"), json!({ "id": ids[3].to_string() })).await, "confirmRun"), "CONFIRMED");
    let (code, msg) = app.err(Some(&w), &op("confirmRun"), json!({ "id": ids[3].to_string() })).await;
    assert!(code == "REFUSED" && msg.contains("is CONFIRMED") && msg.contains("only an UNCONFIRMED run"), "{msg}");
    advance(&app, ids[3], &[RunState::Applying]).await;
    let (code, msg) = app.err(Some(&w), &op("cancelRun"), json!({ "id": ids[3].to_string() })).await;
    assert_eq!(code, "REFUSED");
    assert!(msg.contains("APPLYING") && msg.contains("an apply cannot be stopped"), "{msg}");
    // CONFIRMED (waiting for its apply) → STOPPED.
    advance(&app, ids[4], &to_unconfirmed).await;
    app.ok(&w, &op("confirmRun"), json!({ "id": ids[4].to_string() })).await;
    assert_eq!(state(app.ok(&w, &op("cancelRun"), json!({ "id": ids[4].to_string() })).await, "cancelRun"), "STOPPED");
    // UNCONFIRMED → DISCARDED; a discarded run is over.
    advance(&app, ids[5], &to_unconfirmed).await;
    assert_eq!(state(app.ok(&w, &op("discardRun"), json!({ "id": ids[5].to_string() })).await, "discardRun"), "DISCARDED");
    let (code, msg) = app.err(Some(&w), &op("cancelRun"), json!({ "id": ids[5].to_string() })).await;
    assert!(code == "REFUSED" && msg.contains("already ended"), "{msg}");
    // Discarding or confirming a QUEUED run is refused and changes nothing.
    for name in ["discardRun", "confirmRun"] {
        let (code, msg) = app.err(Some(&w), &op(name), json!({ "id": ids[6].to_string() })).await;
        assert!(code == "REFUSED" && msg.contains("is QUEUED"), "{name}: {msg}");
    }
    assert_eq!(app.err(Some(&w), &op("cancelRun"), json!({ "id": "999999" })).await.0, "NOT_FOUND");
    assert_eq!(app.err(Some(&w), &op("cancelRun"), json!({ "id": "-1" })).await.0, "BAD_USER_INPUT");

    // The history of a run, with who did what.
    let hist = app
        .ok(&w, "query($id: ID!) { run(id: $id) { state stack { slug } events { fromState toState actor cause } } }", json!({ "id": ids[4].to_string() }))
        .await;
    let events = hist["run"]["events"].as_array().unwrap();
    let states: Vec<&str> = events.iter().map(|e| e["toState"].as_str().unwrap()).collect();
    assert_eq!(states, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "STOPPED"]);
    assert_eq!(events[6]["actor"], ADMIN_EMAIL);
    assert_eq!(events[7]["cause"], format!("cancel by {ADMIN_EMAIL}"));
    assert_eq!(hist["run"]["stack"]["slug"], "net");
    let sixth = app.ok(&w, "query($id: ID!) { run(id: $id) { state } }", json!({ "id": ids[6].to_string() })).await;
    assert_eq!(sixth["run"]["state"], "QUEUED");

    let audit = app.ok(&w, "{ auditEvents(first: 100) { items { action target } } }", json!({})).await;
    let actions: Vec<String> = audit["auditEvents"]["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_string()).collect();
    for a in ["run.trigger", "run.cancel", "run.confirm", "run.discard"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| *a == "run.trigger").count(), 7);
}
