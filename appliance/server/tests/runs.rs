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

/// Approval policies decide on the reviews a confirmation sees, and a review
/// cannot slip in between that decision and the confirmation: a reject
/// recorded before a run was confirmed always blocks it. Confirmations and
/// rejections race on many runs; the audit trail (one sequence, written in
/// each transaction) gives their order.
#[tokio::test(flavor = "multi_thread")]
async fn a_reject_racing_a_confirmation_is_never_overtaken() {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use hangar_db::schema::audit_events;

    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("race", "https://git.example/race.git") })).await;
    let policy = "package hangar.race\n\napprove if { some r in input.reviews; r.decision == \"approve\" }\n\nreject if { some r in input.reviews; r.decision == \"reject\" }\n";
    app.ok(
        &admin,
        "mutation($b: String!) { createPolicy(input: { name: \"race\", kind: APPROVAL, body: $b }) { name } }",
        json!({ "b": policy }),
    )
    .await;
    app.ok(&admin, "mutation { attachPolicy(policy: \"race\", stack: \"race\") }", json!({})).await;
    let bob = app.user_token(&admin, "bob@example.com", "WRITER").await;
    let carol = app.user_token(&admin, "carol@example.com", "WRITER").await;
    const REVIEW: &str = "mutation($id: ID!, $d: ReviewDecisionValue!) { reviewRun(id: $id, decision: $d) { id } }";
    const CONFIRM: &str = "mutation($id: ID!) { confirmRun(id: $id) { state } }";

    let mut orders = std::collections::BTreeMap::new();
    for i in 0..24 {
        let sha = format!("{:040x}", 0xabc000 + i);
        let run = app.ok(&admin, TRIGGER, json!({ "s": "race", "c": sha })).await;
        let rid = run["triggerRun"]["id"].as_str().unwrap().to_string();
        // A run is confirmed (or discarded) before the next is planned.
        advance(&app, id(&run["triggerRun"]["id"]), &[RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Unconfirmed]).await;
        app.ok(&bob, REVIEW, json!({ "id": rid, "d": "APPROVE" })).await;

        // The reject leaves up to 3 ms before or after the confirmation.
        let stagger = std::time::Duration::from_micros((i as u64 % 7) * 500);
        let (confirm_first, reject_first) = (i % 2 == 0, i % 2 == 1);
        let confirm = async {
            if reject_first {
                tokio::time::sleep(stagger).await;
            }
            app.gql(Some(&admin), CONFIRM, json!({ "id": rid })).await.1
        };
        let reject = async {
            if confirm_first {
                tokio::time::sleep(stagger).await;
            }
            app.ok(&carol, REVIEW, json!({ "id": rid, "d": "REJECT" })).await
        };
        let (confirmed, _) = tokio::join!(confirm, reject);

        let mut c = app.pg.database().connect().await.unwrap();
        let target = format!("run:{rid}");
        let trail: Vec<(i64, String, String)> = audit_events::table
            .filter(audit_events::target.eq(&target))
            .filter(audit_events::action.eq_any(["run.confirm", "run.review"]))
            .order(audit_events::id.asc())
            .select((audit_events::id, audit_events::actor, audit_events::action))
            .load(&mut c)
            .await
            .unwrap();
        let at = |actor: &str, action: &str| trail.iter().position(|(_, a, x)| a.starts_with(actor) && x == action);
        let rejected = at("carol@example.com", "run.review").expect("the reject is recorded");
        match at(ADMIN_EMAIL, "run.confirm") {
            Some(confirmed_at) => {
                assert_eq!(confirmed["data"]["confirmRun"]["state"], "CONFIRMED", "{confirmed}");
                assert!(confirmed_at < rejected, "run {rid} was confirmed after a reject was recorded: {trail:?}");
                *orders.entry("confirmed, then rejected").or_insert(0) += 1;
            }
            None => {
                let message = confirmed["errors"][0]["message"].as_str().unwrap_or_default();
                assert!(message.ends_with("approval policy race (version 1) rejects the run"), "{confirmed}");
                *orders.entry("rejected, confirm refused").or_insert(0) += 1;
            }
        }
    }
    eprintln!("orders seen: {orders:?}");
}
