//! Trigger policies on the whole appliance with a real worker and Terraform
//! 1.0.3: a policy attached to one stack names, when its tracked run
//! finishes, the stacks to start (here every other stack labelled
//! `production`). The named stacks' tracked runs start, once; a name that is
//! no stack and the stack's own name are skipped; a failed run starts
//! nothing under a policy that asks for a finished one; the evaluation is on
//! the run; a trigger policy without `trigger` is refused when saved. A run a
//! person cancels fires them too, and a policy reaches only its own space.

mod common;
mod fleet;

use fleet::{Fleet, FleetOptions, SOON};
use hangar_testkit::{GitServer, wait_for};
use serde_json::{Value, json};

const AFTER_NETWORK: &str = r#"
package hangar.trigger

trigger contains s.slug if {
    input.run.state == "FINISHED"
    some s in input.stacks
    "production" in s.labels
    s.slug != input.stack.slug
}

# Neither of these starts anything: no such stack, and the stack itself.
trigger contains "ghost" if input.run.state == "FINISHED"
trigger contains input.stack.slug if input.run.state == "FINISHED"
"#;

const OUTPUT_ONLY: &str = "output \"ok\" {\n  value = true\n}\n";

async fn runs_of(fleet: &Fleet, stack: &str) -> Vec<Value> {
    let d = fleet.ok("query($s: String!) { runs(stack: $s, first: 20) { items { id state triggeredBy } } }", json!({ "s": stack })).await;
    let mut runs = d["runs"]["items"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_policy_starts_the_stacks_it_names_when_a_run_finishes() {
    let fleet = Fleet::start_with(FleetOptions::default()).await;
    let git = GitServer::start().await;
    git.create_repo("infra");
    git.push_files("infra", "main", &[("infra/main.tf", OUTPUT_ONLY)], "outputs only");
    for (stack, label) in [("network", "production"), ("app", "production"), ("lab", "staging")] {
        fleet.create_stack(stack, &git.url("infra"), "builders", json!({ "autodeploy": true, "labels": [label] })).await;
    }
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // Refused when saved: a trigger policy must define `trigger`.
    let create = "mutation($i: PolicyInput!) { createPolicy(input: $i) { name kind } }";
    let (_, v) = fleet
        .app
        .gql(Some(&fleet.admin), create, json!({ "i": { "name": "empty", "kind": "TRIGGER", "body": "package t\n\nwarn contains \"x\" if true\n" } }))
        .await;
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("must define trigger"), "{v}");
    let d = fleet.ok(create, json!({ "i": { "name": "after-network", "kind": "TRIGGER", "body": AFTER_NETWORK } })).await;
    assert_eq!(d["createPolicy"]["kind"], "TRIGGER", "{d}");
    fleet.ok("mutation { attachPolicy(policy: \"after-network\", stack: \"network\") }", json!({})).await;

    // network finishes: app starts (once), lab does not, network not again.
    let first = fleet.trigger("network").await;
    fleet.wait_state(&first, "FINISHED", &[&worker]).await;
    let app = wait_for("app's run started by the policy", SOON, || async {
        runs_of(&fleet, "app").await.first().cloned()
    })
    .await;
    assert_eq!(app["triggeredBy"], format!("trigger policy after-network (run {first})"), "{app}");
    fleet.wait_state(app["id"].as_str().unwrap(), "FINISHED", &[&worker]).await;
    let d = fleet
        .ok("query($id: ID!) { run(id: $id) { policyEvaluations { policyName kind result messages { level text } } } }", json!({ "id": first }))
        .await;
    let ev = &d["run"]["policyEvaluations"][0];
    assert_eq!((ev["kind"].as_str(), ev["result"].as_str()), (Some("TRIGGER"), Some("trigger")), "{d}");
    let named: Vec<&str> = ev["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(named, ["app", "ghost", "network"], "{d}");
    let console = common::ConsoleSession::login(&fleet.app).await;
    let page = console.get(&format!("/runs/{first}")).await;
    assert!(page.contains("after-network") && page.contains("<strong>trigger</strong> app"), "the run page shows the decision: {page}");
    let audit = fleet.ok("query { auditEvents(first: 10, action: \"run.trigger\") { items { actor details } } }", json!({})).await;
    let by_policy: Vec<&Value> =
        audit["auditEvents"]["items"].as_array().unwrap().iter().filter(|e| e["actor"] == "policy:trigger").collect();
    assert_eq!(by_policy.len(), 1, "{audit}");
    assert_eq!(by_policy[0]["details"]["policy"], "after-network");

    // A failed run of network starts nothing: the policy asks for FINISHED.
    git.push_files("infra", "main", &[("infra/main.tf", "output \"broken\" {\n")], "broken");
    let failed = fleet.trigger("network").await;
    fleet.wait_state(&failed, "FAILED", &[&worker]).await;
    // Trigger policies are evaluated once the run's end is committed: wait
    // for the decision rather than read it with the state.
    let decided = wait_for("the failed run's trigger decision", SOON, || async {
        let d = fleet.ok("query($id: ID!) { run(id: $id) { policyEvaluations { kind result } } }", json!({ "id": failed })).await;
        let evs = d["run"]["policyEvaluations"].clone();
        (!evs.as_array().unwrap().is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(decided, json!([{ "kind": "TRIGGER", "result": "pass" }]));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(runs_of(&fleet, "app").await.len(), 1, "app must not start after a failed run");
    assert!(runs_of(&fleet, "lab").await.is_empty());
    assert_eq!(runs_of(&fleet, "network").await.len(), 2, "the policy never starts its own stack");
}

/// A run a person ends is an end like any other to trigger policies; and a
/// policy starts only stacks of its own space and below, whatever it names.
#[tokio::test(flavor = "multi_thread")]
async fn a_canceled_run_fires_trigger_policies_which_reach_only_their_space() {
    let fleet = Fleet::start_with(FleetOptions::default()).await;
    for space in ["team-a", "team-b"] {
        fleet.ok("mutation($s: String!) { createSpace(slug: $s, name: $s) { slug } }", json!({ "s": space })).await;
    }
    // The drain starts a triggered stack at the head of its branch: a real repository.
    let git = GitServer::start().await;
    git.create_repo("infra");
    git.push_files("infra", "main", &[("infra/main.tf", OUTPUT_ONLY)], "outputs only");
    for (stack, space) in [("source", "team-a"), ("follower", "team-a"), ("outsider", "team-b")] {
        fleet.create_stack(stack, &git.url("infra"), "builders", json!({ "space": space })).await;
    }
    let body = r#"
package hangar.trigger

trigger contains s.slug if {
    input.run.state == "CANCELED"
    some s in input.stacks
    s.slug != input.stack.slug
}

trigger contains "outsider" if input.run.state == "CANCELED"
"#;
    let create = "mutation($b: String!) { createPolicy(input: { name: \"on-cancel\", kind: TRIGGER, body: $b, space: \"team-a\" }) { name } }";
    fleet.ok(create, json!({ "b": body })).await;
    fleet.ok("mutation { attachPolicy(policy: \"on-cancel\", stack: \"source\") }", json!({})).await;

    // No worker: the run waits, and is canceled by a person.
    let run = fleet
        .ok("mutation { triggerRun(stack: \"source\", commitSha: \"0123456789012345678901234567890123456789\") { id } }", json!({}))
        .await["triggerRun"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let canceled = fleet.ok("mutation($id: ID!) { cancelRun(id: $id) { state } }", json!({ "id": run })).await;
    assert_eq!(canceled["cancelRun"]["state"], "CANCELED");
    let started = wait_for("follower's run started by the policy", SOON, || async {
        runs_of(&fleet, "follower").await.first().cloned()
    })
    .await;
    assert_eq!(started["triggeredBy"], format!("trigger policy on-cancel (run {run})"), "{started}");
    let d = fleet
        .ok("query($id: ID!) { run(id: $id) { policyEvaluations { result messages { text } } } }", json!({ "id": run }))
        .await;
    let named: Vec<&str> =
        d["run"]["policyEvaluations"][0]["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    // The input listed only team-a's stacks; the literal name of team-b's is refused.
    assert_eq!(named, ["follower", "outsider"], "{d}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(runs_of(&fleet, "outsider").await.is_empty(), "a policy of team-a started a stack of team-b");
}
