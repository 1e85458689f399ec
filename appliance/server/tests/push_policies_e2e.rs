//! Push policies on the whole appliance: `hangar server`, `hangar drain`, a
//! git server taking `git push`, GitHub's push deliveries signed as GitHub
//! signs them, and a worker running Terraform 1.0.3. A push policy attached
//! by label decides what each push starts in place of the branch and path
//! rules: documentation pushes are ignored, a change to the shared modules
//! (outside the project root) is tracked, a release branch is proposed, and
//! a push it does not decide on follows the rules. Every decision is
//! recorded with its input: on the run it made, or on the stack when it
//! made none, and the workbench replays both. A policy that fails makes no
//! run, and a policy cannot make a tracked run of another branch.

mod common;
mod fleet;
mod vcs_support;

use fleet::{CONFIG, Fleet, FleetOptions};
use hangar_testkit::GitServer;
use serde_json::{Value, json};
use vcs_support::*;

const SECRET: &str = "push-policy-webhook-secret";

const GATE: &str = r#"
package hangar.push

# Documentation only: no run, whatever the branch.
ignore if {
    count(input.push.paths) > 0
    input.push.paths_complete
    every p in input.push.paths { endswith(p, ".md") }
}

# The shared modules live outside the project root, yet the stack uses them.
track if {
    input.push.tracked_branch
    some p in input.push.paths
    startswith(p, "modules/")
}

# Release branches get a plan to look at.
propose if startswith(input.push.branch, "release/")

# Asks for what cannot be: a tracked run of a branch the stack does not track.
track if input.push.branch == "hotfix"
"#;

async fn push(fleet: &Fleet, git: &GitServer, delivery: &str, branch: &str, before: &str, after: &str, paths: &[&str]) -> Value {
    let body = serde_json::to_vec(&github_push(&git.url("net"), "org/net", branch, before, after, paths)).unwrap();
    let (status, answer) = post_github(&fleet.app, "ghe", "push", delivery, &body, Some(SECRET)).await;
    assert_eq!(status, 202, "{answer}");
    processed(&fleet.app, &fleet.admin, "ghe", delivery).await
}

fn only_run(delivery: &Value) -> String {
    assert_eq!(delivery["outcome"], "RUNS_CREATED", "{delivery}");
    let ids = delivery["runIds"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{delivery}");
    ids[0].as_str().unwrap().to_string()
}

fn detail(delivery: &Value) -> &str {
    delivery["detail"].as_str().unwrap_or_default()
}

async fn run_of(fleet: &Fleet, id: &str) -> Value {
    let q = "query($id: ID!) { run(id: $id) { kind state branch commitSha policyEvaluations { policyName policyVersion kind result error } } }";
    fleet.ok(q, json!({ "id": id })).await["run"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_policy_decides_what_each_push_starts_and_every_decision_is_recorded() {
    let fleet = Fleet::start_with(FleetOptions::default()).await;
    let git = GitServer::start().await;
    git.create_repo("net");
    let first = git.push_files("net", "main", &[("infra/main.tf", CONFIG), ("README.md", "net\n")], "a stack");
    let receiver = StatusReceiver::start(&fleet.app.dir.path().join("status-pki"), 0).await;
    fleet
        .ok(
            CREATE_INTEGRATION,
            json!({ "i": { "name": "ghe", "kind": "GITHUB", "baseUrl": receiver.base_url, "token": "ghs_status_token",
                            "webhookSecret": SECRET, "caPem": receiver.ca_pem } }),
        )
        .await;
    fleet.create_stack("net", &git.url("net"), "builders", json!({ "labels": ["gated"] })).await;
    fleet.ok(LINK, json!({ "s": "net", "i": "ghe" })).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // Refused when saved: a push policy must define track, propose or ignore.
    let create = "mutation($i: PolicyInput!) { createPolicy(input: $i) { name kind labels } }";
    let (_, v) = fleet
        .app
        .gql(Some(&fleet.admin), create, json!({ "i": { "name": "empty", "kind": "PUSH", "body": "package p\n\ndeny contains \"x\" if true\n" } }))
        .await;
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("must define track or propose or ignore"), "{v}");
    let d = fleet.ok(create, json!({ "i": { "name": "gate", "kind": "PUSH", "body": GATE, "labels": ["autoattach:gated"] } })).await;
    assert_eq!(d["createPolicy"]["kind"], "PUSH", "{d}");

    // Documentation only, on the tracked branch: ignored by the policy.
    let docs = git.push_files("net", "main", &[("README.md", "more about net\n")], "docs");
    let d = push(&fleet, &git, "docs", "main", &first, &docs, &["README.md"]).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains("push policy gate (version 1) ignores push"), "{d}");

    // A module outside the project root: the rules would ignore it, the
    // policy tracks it; the worker plans it for real.
    let module = git.push_files("net", "main", &[("modules/net/main.tf", "# shared\n")], "a module");
    let d = push(&fleet, &git, "module", "main", &docs, &module, &["modules/net/main.tf"]).await;
    let tracked = only_run(&d);
    assert!(detail(&d).contains("(push policy gate (version 1) tracks it)"), "{d}");
    fleet.wait_state(&tracked, "UNCONFIRMED", &[&worker]).await;
    let run = run_of(&fleet, &tracked).await;
    assert_eq!((run["kind"].as_str(), run["commitSha"].as_str()), (Some("TRACKED"), Some(module.as_str())), "{run}");
    let ev = &run["policyEvaluations"][0];
    assert_eq!((ev["kind"].as_str(), ev["result"].as_str(), ev["policyName"].as_str()), (Some("PUSH"), Some("track"), Some("gate")), "{run}");
    fleet.ok("mutation($id: ID!) { discardRun(id: $id) { state } }", json!({ "id": tracked })).await;

    // A release branch: proposed, planned, and finished without applying.
    let release = git.push_files("net", "release/1.0", &[("infra/main.tf", &CONFIG.replace("hello", "release"))], "release");
    let d = push(&fleet, &git, "release", "release/1.0", &"0".repeat(40), &release, &["infra/main.tf"]).await;
    let proposed = only_run(&d);
    fleet.wait_state(&proposed, "FINISHED", &[&worker]).await;
    let run = run_of(&fleet, &proposed).await;
    assert_eq!((run["kind"].as_str(), run["branch"].as_str()), (Some("PROPOSED"), Some("release/1.0")), "{run}");
    assert_eq!(run["policyEvaluations"][0]["result"], "propose", "{run}");

    // Undecided by the policy: the rules track a change under the project root.
    let change = git.push_files("net", "main", &[("infra/main.tf", &CONFIG.replace("hello", "hi"))], "greet");
    let d = push(&fleet, &git, "change", "main", &module, &change, &["infra/main.tf"]).await;
    let by_rule = only_run(&d);
    let run = run_of(&fleet, &by_rule).await;
    assert_eq!(run["policyEvaluations"][0]["result"], "undecided", "{run}");
    fleet.wait_state(&by_rule, "UNCONFIRMED", &[&worker]).await;
    fleet.ok("mutation($id: ID!) { discardRun(id: $id) { state } }", json!({ "id": by_rule })).await;

    // A tracked run of another branch is never made, whatever the policy says.
    let hotfix = git.push_files("net", "hotfix", &[("infra/main.tf", &CONFIG.replace("hello", "fix"))], "hotfix");
    let d = push(&fleet, &git, "hotfix", "hotfix", &"0".repeat(40), &hotfix, &["infra/main.tf"]).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains("but the stack tracks main"), "{d}");

    // A policy that fails makes no run, and says why.
    fleet
        .ok(
            "mutation($b: String!) { updatePolicy(name: \"gate\", body: $b) { name } }",
            json!({ "b": "package hangar.push\n\ntrack := \"yes\"\n" }),
        )
        .await;
    let again = git.push_files("net", "main", &[("infra/main.tf", &CONFIG.replace("hello", "again"))], "again");
    let d = push(&fleet, &git, "broken", "main", &change, &again, &["infra/main.tf"]).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains("push policy gate (version 2) failed"), "{d}");
    assert!(detail(&d).contains("rule `track` must be a boolean"), "{d}");

    // The workbench replays every recorded push decision, those that made no
    // run included (they belong to the stack).
    let q = "query($b: String!) { testPolicy(kind: PUSH, body: $b, runs: 20) { runId stackId recordedResult result error } }";
    let d = fleet.ok(q, json!({ "b": "package hangar.push\n\npropose := true\n" })).await;
    let replays = d["testPolicy"].as_array().unwrap();
    let recorded: Vec<&str> = replays.iter().map(|r| r["recordedResult"].as_str().unwrap()).collect();
    assert_eq!(recorded, ["error", "track", "undecided", "propose", "track", "ignore"], "{d}");
    assert!(replays.iter().all(|r| r["result"] == "propose" && r["error"].is_null()), "{d}");
    let without_run: Vec<&Value> = replays.iter().filter(|r| r["runId"].is_null()).collect();
    assert_eq!(without_run.len(), 3, "{d}");
    assert!(without_run.iter().all(|r| r["stackId"].is_string()), "{d}");

    // A team's stack in a space below the root: the root's policy applies to
    // it too. The team's admin replays the decisions about the team's stacks
    // only; a writer there replays nothing.
    fleet.ok("mutation { createSpace(slug: \"team\", name: \"Team\", parent: \"root\") { slug } }", json!({})).await;
    fleet.create_stack("app", &git.url("net"), "builders", json!({ "labels": ["gated"], "space": "team" })).await;
    fleet.ok(LINK, json!({ "s": "app", "i": "ghe" })).await;
    fleet.ok("mutation($b: String!) { updatePolicy(name: \"gate\", body: $b) { name } }", json!({ "b": "package hangar.push\n\nignore := true\n" })).await;
    let notes = git.push_files("net", "main", &[("NOTES.md", "notes\n")], "notes");
    let d = push(&fleet, &git, "notes", "main", &again, &notes, &["NOTES.md"]).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains("stack app: push policy gate (version 3) ignores push"), "{d}");
    assert!(detail(&d).contains("stack net: push policy gate (version 3) ignores push"), "{d}");
    let team_admin = fleet.app.user_token(&fleet.admin, "lead@team.test", "NO_ACCESS").await;
    let team_writer = fleet.app.user_token(&fleet.admin, "dev@team.test", "NO_ACCESS").await;
    for (email, role) in [("lead@team.test", "ADMIN"), ("dev@team.test", "WRITER")] {
        let grant = "mutation($u: String!, $r: UserRole!) { grantSpaceRole(space: \"team\", user: $u, role: $r) { slug } }";
        fleet.ok(grant, json!({ "u": email, "r": role })).await;
    }
    let app_id = fleet.ok("{ stack(slug: \"app\") { id } }", json!({})).await["stack"]["id"].clone();
    let b = json!({ "b": "package hangar.push\n\ntrack := true\n" });
    let mine = fleet.app.ok(&team_admin, q, b.clone()).await;
    let mine = mine["testPolicy"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "only the decision about the team's stack: {mine:?}");
    assert_eq!((&mine[0]["stackId"], mine[0]["recordedResult"].as_str()), (&app_id, Some("ignore")), "{mine:?}");
    assert_eq!(fleet.app.err(Some(&team_writer), q, b.clone()).await.0, "FORBIDDEN");
    let all = fleet.ok(q, b).await;
    assert_eq!(all["testPolicy"].as_array().unwrap().len(), 8, "{all}");
}
