//! Policies in Rego on a whole appliance (`hangar server` with its broker and
//! provider mirror, `hangar drain`, a git server and a worker running
//! Terraform 1.0.3 with the test provider): a plan policy that forbids a
//! world-writable `hangartest_file` fails the run before it may wait for
//! confirmation, with the reason on the run; a `warn` is shown; an approval
//! policy gates Confirm until two people other than the author approved; a
//! policy that runs past its time limit fails its run while the server goes
//! on answering, and one that takes memory without bound fails its run at
//! the memory limit while the server's memory stays as it was; a policy that does not compile is refused with line and
//! column; hostile input is refused clearly; and a policy not yet attached is
//! replayed against the recorded inputs.

mod common;
mod fleet;

use std::path::Path;

use fleet::{Fleet, FleetOptions};
use hangar_testkit::{GitServer, TestDir, provider};
use serde_json::{Value, json};

/// A configuration with one file on the worker host.
fn config_with_file(path: &Path, content: &str, mode: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n  mode    = \"{mode}\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

const NO_WORLD_WRITABLE: &str = r#"package hangar.files

deny contains msg if {
    some rc in input.plan.resource_changes
    rc.type == "hangartest_file"
    rc.change.after.mode == "0777"
    msg := sprintf("%s would be world-writable", [rc.address])
}

warn contains msg if {
    some rc in input.plan.resource_changes
    rc.type == "hangartest_file"
    contains(rc.change.after.content, "TODO")
    msg := sprintf("%s still says TODO on stack %s", [rc.address, input.stack.slug])
}
"#;

const TWO_APPROVALS: &str = r#"package hangar.approvals

approvers := {r.reviewer | some r in input.reviews; r.decision == "approve"; r.is_author != true}

approve if count(approvers) >= 2

reject if {
    some r in input.reviews
    r.decision == "reject"
}
"#;

/// About 10^10 steps: it would run for hours without a limit.
const SLOW: &str = r#"package hangar.slow

deny contains msg if {
    n := count([x | some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); x := i * j])
    msg := sprintf("%d", [n])
}
"#;

const CREATE: &str = "mutation($i: PolicyInput!) { createPolicy(input: $i) { name kind labels versions { version } } }";

async fn evaluations(fleet: &Fleet, id: &str) -> Vec<Value> {
    let d = fleet
        .ok(
            "query($id: ID!) { run(id: $id) { policyEvaluations { policyName policyVersion kind result messages { level text } error durationMs inputBytes } } }",
            json!({ "id": id }),
        )
        .await;
    d["run"]["policyEvaluations"].as_array().unwrap().clone()
}

async fn confirm_refusal(fleet: &Fleet, token: &str, id: &str) -> String {
    let (code, message) =
        fleet.app.err(Some(token), "mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    assert_eq!(code, "REFUSED", "{message}");
    message
}

async fn review(fleet: &Fleet, token: &str, id: &str, decision: &str) {
    fleet
        .app
        .ok(
            token,
            "mutation($id: ID!, $d: ReviewDecisionValue!) { reviewRun(id: $id, decision: $d, note: \"looked at it\") { id } }",
            json!({ "id": id, "d": decision }),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_and_approval_policies_decide_real_runs_and_every_decision_is_kept_and_replayable() {
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\n", mirror_dir.path().display());
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    let admin = fleet.admin.clone();
    let host = fleet.files.subdir("worker-host");
    let motd = host.join("motd");

    // Hostile and malformed input, refused with what and where.
    let writer = fleet.app.user_token(&admin, "writer@example.com", "WRITER").await;
    let plan_input = |name: &str, body: &str| json!({ "i": { "name": name, "kind": "PLAN", "body": body, "labels": ["autoattach:production"] } });
    let (code, message) = fleet.app.err(Some(&writer), CREATE, plan_input("x", NO_WORLD_WRITABLE)).await;
    assert_eq!((code.as_str(), message.as_str()), ("FORBIDDEN", "this needs the admin role"));
    let broken = "package hangar.files\n\ndeny contains msg if {\n    msg := \"x\" +\n}\n";
    let (code, message) = fleet.app.err(Some(&admin), CREATE, plan_input("broken", broken)).await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert_eq!(message, "body is refused: line 4, column 9: expecting `}` while parsing set");
    let huge = format!("package hangar.files\n# {}\ndeny contains \"x\" if false\n", "x".repeat(200 * 1024));
    let (code, message) = fleet.app.err(Some(&admin), CREATE, plan_input("huge", &huge)).await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(message.starts_with("body is refused: the policy is 204") && message.ends_with("more than the 131072 bytes allowed"), "{message}");
    let (_, message) = fleet
        .app
        .err(Some(&admin), CREATE, json!({ "i": { "name": "t", "kind": "DRIFT", "body": NO_WORLD_WRITABLE } }))
        .await;
    assert!(message.contains("DRIFT"), "{message}");
    let (_, message) = fleet
        .app
        .err(Some(&admin), CREATE, json!({ "i": { "name": "t", "kind": "TRIGGER", "body": NO_WORLD_WRITABLE } }))
        .await;
    assert!(message.contains("must define trigger"), "{message}");
    let (code, message) = fleet.app.err(Some(&admin), CREATE, plan_input("Bad Name", NO_WORLD_WRITABLE)).await;
    assert_eq!((code.as_str(), message.as_str()), ("BAD_USER_INPUT", "name must be 1-100 of a-z, 0-9 and '-', not starting with '-'"));
    let approval_as_plan = json!({ "i": { "name": "wrong-rules", "kind": "PLAN", "body": TWO_APPROVALS } });
    let (_, message) = fleet.app.err(Some(&admin), CREATE, approval_as_plan).await;
    assert_eq!(message, "body is refused: a policy of kind plan must define deny or warn");
    let (code, message) =
        fleet.app.err(Some(&admin), "mutation { reviewRun(id: \"424242\", decision: APPROVE) { id } }", json!({})).await;
    assert_eq!((code.as_str(), message.as_str()), ("NOT_FOUND", "run \"424242\" does not exist"));
    let (code, message) = fleet
        .app
        .err(Some(&admin), "query($b: String!) { testPolicy(kind: PLAN, body: $b, runs: 0) { result } }", json!({ "b": NO_WORLD_WRITABLE }))
        .await;
    assert_eq!((code.as_str(), message.as_str()), ("BAD_USER_INPUT", "runs must be between 1 and 100"));
    let (code, _) = fleet.app.err(Some(&admin), "mutation { attachPolicy(policy: \"nope\", stack: \"nope\") }", json!({})).await;
    assert_eq!(code, "NOT_FOUND");

    // The plan policy attaches itself to stacks labelled `production`.
    let d = fleet.ok(CREATE, plan_input("no-world-writable", NO_WORLD_WRITABLE)).await;
    assert_eq!(d["createPolicy"]["versions"], json!([{ "version": 1 }]));

    let git = GitServer::start().await;
    git.create_repo("files");
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "hello\\n", "0777"))], "a world-writable file");
    fleet.create_stack("files", &git.url("files"), "builders", json!({ "labels": ["production"] })).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // Denied: FAILED straight from PLANNING, the reason on the run, nothing applied.
    let denied = fleet.trigger("files").await;
    let run = fleet.wait_state(&denied, "FAILED", &[&worker]).await;
    assert_eq!(
        run["failureReason"],
        "denied by plan policy no-world-writable (version 1): hangartest_file.motd would be world-writable"
    );
    assert_eq!(fleet.history(&denied).await, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "FAILED"]);
    assert!(!motd.exists());
    let ev = evaluations(&fleet, &denied).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["policyName"], "no-world-writable");
    assert_eq!(ev[0]["result"], "deny");
    assert_eq!(ev[0]["messages"], json!([{ "level": "deny", "text": "hangartest_file.motd would be world-writable" }]));
    assert!(ev[0]["inputBytes"].as_i64().unwrap() > 500, "{ev:?}");

    // A warning is shown, and the run waits for confirmation.
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "TODO hello\\n", "0644"))], "a private file");
    let gated = fleet.trigger("files").await;
    fleet.wait_state(&gated, "UNCONFIRMED", &[&worker]).await;
    let ev = evaluations(&fleet, &gated).await;
    assert_eq!(ev[0]["result"], "warn", "{ev:?}");
    assert_eq!(ev[0]["messages"], json!([{ "level": "warn", "text": "hangartest_file.motd still says TODO on stack files" }]));

    // Two approvals from people other than the author (the admin triggered it).
    let d = fleet
        .ok(CREATE, json!({ "i": { "name": "two-approvals", "kind": "APPROVAL", "body": TWO_APPROVALS } }))
        .await;
    assert_eq!(d["createPolicy"]["kind"], "APPROVAL");
    let attached = fleet.ok("mutation { attachPolicy(policy: \"two-approvals\", stack: \"files\") }", json!({})).await;
    assert_eq!(attached["attachPolicy"], true);
    let bob = fleet.app.user_token(&admin, "bob@example.com", "WRITER").await;
    fleet
        .ok("mutation { createUser(email: \"carol@example.com\", role: WRITER, password: \"Quiet-Harbor-Lantern-42\") { id } }", json!({}))
        .await;
    let carol_console = common::ConsoleSession::login_as(&fleet.app, "carol@example.com", "Quiet-Harbor-Lantern-42").await;
    let not_yet = "cannot be confirmed: approval policy two-approvals (version 1) has not approved the run yet";
    assert!(confirm_refusal(&fleet, &admin, &gated).await.ends_with(not_yet));
    review(&fleet, &admin, &gated, "APPROVE").await;
    review(&fleet, &bob, &gated, "APPROVE").await;
    let message = confirm_refusal(&fleet, &bob, &gated).await;
    assert_eq!(message, format!("run {gated} {not_yet}"), "the author's approval does not count");
    // Carol approves on the run's page, and confirms there.
    let page = carol_console.get(&format!("/runs/{gated}")).await;
    assert!(page.contains(">Approve</button>") && page.contains(">Reject</button>"), "{page}");
    let csrf = carol_console.csrf(&format!("/runs/{gated}")).await;
    let review_form = [("csrf", csrf.as_str()), ("decision", "APPROVE"), ("note", "looked at it")];
    let forged = [("csrf", "forged"), ("decision", "APPROVE"), ("note", "")];
    assert_eq!(carol_console.post(&format!("/runs/{gated}/review"), &forged).await, 403);
    assert_eq!(carol_console.post(&format!("/runs/{gated}/review"), &review_form).await, 303);
    assert_eq!(carol_console.post(&format!("/runs/{gated}/confirm"), &[("csrf", csrf.as_str())]).await, 303);
    fleet.wait_state(&gated, "FINISHED", &[&worker]).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "TODO hello\n");
    let d = fleet.ok("query($id: ID!) { run(id: $id) { reviews { reviewer role decision note } } }", json!({ "id": gated })).await;
    let reviewers: Vec<&str> = d["run"]["reviews"].as_array().unwrap().iter().map(|r| r["reviewer"].as_str().unwrap()).collect();
    assert_eq!(reviewers.len(), 3, "{d}");
    let approvals: Vec<String> =
        evaluations(&fleet, &gated).await.iter().filter(|e| e["kind"] == "APPROVAL").map(|e| e["result"].as_str().unwrap().to_string()).collect();
    assert_eq!(approvals, ["undecided", "undecided", "approve"], "every decision is kept");

    // A policy that runs past its time limit fails the run with that reason;
    // the server answers meanwhile and after.
    fleet.ok(CREATE, plan_input("slow", SLOW)).await;
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "third\\n", "0600"))], "a third commit");
    let slow = fleet.trigger("files").await;
    let run = fleet.wait_state(&slow, "FAILED", &[&worker]).await;
    let reason = run["failureReason"].as_str().unwrap();
    assert!(reason.starts_with("plan policy slow (version 1) failed after "), "{reason}");
    assert!(reason.ends_with(" ms: the policy ran past its time limit of 2000 ms"), "{reason}");
    assert_eq!(fleet.app.client.get(fleet.app.url("/health")).send().await.unwrap().status(), 200);
    let ev = evaluations(&fleet, &slow).await;
    let slow_ev = ev.iter().find(|e| e["policyName"] == "slow").unwrap();
    assert_eq!(slow_ev["result"], "error");
    assert_eq!(slow_ev["error"], "the policy ran past its time limit of 2000 ms");
    // Saved again, it is version 2, and the next run passes it.
    let d = fleet
        .ok("mutation($b: String!) { updatePolicy(name: \"slow\", body: $b) { versions { version } } }", json!({ "b": "package hangar.slow\n\ndeny contains \"never\" if false\n" }))
        .await;
    assert_eq!(d["updatePolicy"]["versions"], json!([{ "version": 2 }, { "version": 1 }]));

    // Replay: what a stricter policy would have decided for the recorded plans.
    let stricter = r#"package hangar.stricter

deny contains msg if {
    some rc in input.plan.resource_changes
    rc.type == "hangartest_file"
    rc.change.after.mode != "0600"
    msg := sprintf("%s must be 0600, not %s", [rc.address, rc.change.after.mode])
}
"#;
    let d = fleet
        .ok(
            "query($b: String!) { testPolicy(kind: PLAN, body: $b, runs: 10) { runId recordedPolicy recordedResult result messages { text } error } }",
            json!({ "b": stricter }),
        )
        .await;
    let replays = d["testPolicy"].as_array().unwrap();
    // Newest first: the slow run's two evaluations, the warned run's, the denied run's.
    let by_run = |id: &str| replays.iter().filter(|r| r["runId"] == id).collect::<Vec<_>>();
    assert_eq!(replays.len(), 4, "{d}");
    for r in by_run(&slow) {
        assert_eq!(r["result"], "pass", "0600 passes: {r}");
    }
    let warned = by_run(&gated);
    assert_eq!((warned[0]["recordedResult"].as_str(), warned[0]["result"].as_str()), (Some("warn"), Some("deny")));
    assert_eq!(warned[0]["messages"], json!([{ "text": "hangartest_file.motd must be 0600, not 0644" }]));
    let first = by_run(&denied);
    assert_eq!((first[0]["recordedResult"].as_str(), first[0]["result"].as_str()), (Some("deny"), Some("deny")));
    assert_eq!(first[0]["messages"], json!([{ "text": "hangartest_file.motd must be 0600, not 0777" }]));
    // Replaying is only that: nothing was recorded for it.
    assert_eq!(evaluations(&fleet, &denied).await.len(), 1);

    // The console's run page explains each decision.
    let page = console_page(&fleet, &format!("/runs/{denied}")).await;
    assert!(page.contains("<h2 id=\"policies\">Policies</h2>"), "{page}");
    assert!(page.contains("no-world-writable"), "{page}");
    assert!(page.contains("hangartest_file.motd would be world-writable"), "{page}");
    let page = console_page(&fleet, &format!("/runs/{gated}")).await;
    assert!(page.contains("two-approvals") && page.contains("carol@example.com") && page.contains("looked at it"), "{page}");

    // The console's workbench: the policies listed, and the stricter one
    // replayed against the same recorded inputs, as the API did.
    let console = common::ConsoleSession::login(&fleet.app).await;
    let list = console.get("/policies").await;
    assert!(list.contains("no-world-writable") && list.contains("two-approvals") && list.contains("href=\"/stacks/files\""), "{list}");
    assert!(list.contains("Test against past runs"), "admins get the workbench: {list}");
    let csrf = console.csrf("/policies").await;
    let answer = console
        .client
        .post(format!("{}/policies/test", console.origin))
        .header("cookie", &console.cookie)
        .header("origin", &console.origin)
        .form(&[("csrf", csrf.as_str()), ("kind", "PLAN"), ("body", stricter), ("runs", "10")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let page = answer.text().await.unwrap();
    assert!(page.contains("hangartest_file.motd must be 0600, not 0644") && page.contains(&format!("href=\"/runs/{denied}\"")), "{page}");
    assert!(page.contains("must be 0600"), "the body stays in its field to edit: {page}");
    let list = carol_console.get("/policies").await;
    assert!(list.contains("no-world-writable") && !list.contains("Test against past runs"), "a writer sees the policies, not the workbench: {list}");

    // A policy that takes memory without bound (one builtin call building a
    // hundred million numbers, which no timer interrupts) ends the process
    // its evaluation runs in at the memory limit: the run fails with that
    // reason, and the server's own memory does not move.
    let server_pid = fleet.app.server.as_ref().unwrap().pid();
    let before = resident_kib(server_pid);
    let hog = "package hangar.slow\n\ndeny contains msg if {\n    n := count(numbers.range(1, 100000000))\n    msg := sprintf(\"%d\", [n])\n}\n";
    fleet.ok("mutation($b: String!) { updatePolicy(name: \"slow\", body: $b) { name } }", json!({ "b": hog })).await;
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "fourth\\n", "0600"))], "a fourth commit");
    let hungry = fleet.trigger("files").await;
    let run = fleet.wait_state(&hungry, "FAILED", &[&worker]).await;
    let reason = run["failureReason"].as_str().unwrap();
    assert!(reason.starts_with("plan policy slow (version 3) failed after "), "{reason}");
    assert!(reason.ends_with(" ms: the policy ran past its memory limit of 512 MiB"), "{reason}");
    let grown = resident_kib(server_pid).saturating_sub(before);
    assert!(grown < 100 * 1024, "the server grew by {grown} KiB while a policy took memory without bound");
    assert_eq!(fleet.app.client.get(fleet.app.url("/health")).send().await.unwrap().status(), 200);
}

/// A process's resident memory, from /proc.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A console page as the administrator sees it, signed in through the form.
async fn console_page(fleet: &Fleet, path: &str) -> String {
    common::ConsoleSession::login(&fleet.app).await.get(path).await
}
