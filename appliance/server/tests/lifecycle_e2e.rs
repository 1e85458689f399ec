//! The run lifecycle end to end with every piece real: `hangar server` with its
//! broker, `hangar drain`, a worker host running `hangar-worker run`, a git
//! server, Terraform 1.0.3 from the appliance's tools directory, PostgreSQL and
//! Garage. A stack's history of state versions across commits, proposed runs,
//! discarding, stopping a plan, the refusal to stop an apply, autodeploy, and
//! variables from contexts with secrets masked in the logs the API serves.
//!
//! Each test brings up one fleet and walks a stack through several runs in
//! turn: a fleet takes most of a minute to start.

mod common;
mod fleet;

use fleet::{Fleet, FleetOptions, process_group};
use hangar_testkit::{GitServer, wait_for};
use serde_json::{Value, json};

/// A secret that a context hands to Terraform; the configuration prints it
/// (an output not marked sensitive), so only the worker's masking keeps it
/// out of the logs.
const SECRET: &str = "ctx-secret-4b9e1f7a";

/// Outputs from variables, locals, a context's variable and another state
/// read with `terraform_remote_state`. The other state is a file committed
/// beside the configuration: a run's credential opens only its own stack's
/// state on the appliance, so reading another stack's state there is refused.
fn config(greeting: &str) -> String {
    format!(
        r#"
variable "greeting" {{
  type    = string
  default = "{greeting}"
}}

variable "secret" {{
  type = string
}}

variable "region" {{
  type = string
}}

locals {{
  message = "${{var.greeting}} world"
}}

data "terraform_remote_state" "network" {{
  backend = "local"
  config = {{
    path = "${{path.module}}/network.tfstate"
  }}
}}

output "message" {{
  value = local.message
}}

output "region" {{
  value = var.region
}}

output "vpc" {{
  value = data.terraform_remote_state.network.outputs.vpc_id
}}

output "secret_echo" {{
  value = var.secret
}}
"#
    )
}

/// The state another team's stack left, committed in the repository.
const NETWORK_STATE: &str = r#"{
  "version": 4,
  "terraform_version": "1.0.3",
  "serial": 3,
  "lineage": "5a1d2f0c-7e1b-4c7e-9a53-2f1e8b6c0d41",
  "outputs": {
    "vpc_id": { "value": "vpc-0a1b2c", "type": "string" }
  },
  "resources": []
}
"#;

const RUN: &str = "query($id: ID!) { run(id: $id) { state kind changes { add change destroy outputs } erroredStateUploaded } }";

/// A run as the API shows it: state, kind, change summary, errored state.
async fn run(fleet: &Fleet, id: &str) -> Value {
    fleet.ok(RUN, json!({ "id": id })).await["run"].clone()
}

async fn trigger(fleet: &Fleet, stack: &str, kind: &str) -> String {
    let d = fleet
        .ok(
            "mutation($s: String!, $k: RunKindValue!) { triggerRun(stack: $s, kind: $k) { id kind } }",
            json!({ "s": stack, "k": kind }),
        )
        .await;
    assert_eq!(d["triggerRun"]["kind"], kind);
    d["triggerRun"]["id"].as_str().unwrap().to_string()
}

async fn confirm(fleet: &Fleet, id: &str) {
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
}

/// A stack's state versions through the API, newest first: (id, serial, lineage, run id).
async fn versions(fleet: &Fleet, stack: &str) -> Vec<(String, i64, String, Option<String>)> {
    let d = fleet
        .ok("query($s: String!) { stateVersions(stack: $s) { id serial lineage runId } }", json!({ "s": stack }))
        .await;
    d["stateVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["serial"].as_i64().unwrap(),
                v["lineage"].as_str().unwrap().to_string(),
                v["runId"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// A stored state version, downloaded and decrypted by the appliance.
async fn download(fleet: &Fleet, stack: &str, version: &str) -> Value {
    let r = fleet
        .app
        .client
        .get(fleet.app.url(&format!("/api/v1/stacks/{stack}/state/versions/{version}")))
        .bearer_auth(&fleet.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "downloading version {version} of {stack}");
    r.json().await.unwrap()
}

fn output<'a>(state: &'a Value, name: &str) -> &'a Value {
    &state["outputs"][name]["value"]
}

async fn state_lock(fleet: &Fleet, stack: &str) -> Value {
    fleet.ok("query($s: String!) { stateLock(stack: $s) { lockId heldBy } }", json!({ "s": stack })).await["stateLock"].clone()
}

/// A run's whole stored log through `GET /api/v1/runs/{id}/logs`, once it
/// holds `expected` (the worker delivers its last chunks after reporting).
async fn logs(fleet: &Fleet, id: &str, expected: &str) -> String {
    log_of(fleet, id, "", expected).await
}

/// As `logs`, with a query string (`?phase=initializing`).
async fn log_of(fleet: &Fleet, id: &str, query: &str, expected: &str) -> String {
    wait_for(&format!("the log{query} of run {id} to hold {expected:?}"), fleet::SOON, || async {
        let r = fleet
            .app
            .client
            .get(fleet.app.url(&format!("/api/v1/runs/{id}/logs{query}")))
            .bearer_auth(&fleet.admin)
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        let text = r.text().await.ok()?;
        text.contains(expected).then_some(text)
    })
    .await
}

const CONFIRMED_PATH: [&str; 9] =
    ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"];

#[tokio::test]
async fn a_stack_keeps_a_state_version_per_applied_commit_while_proposed_and_discarded_runs_change_nothing() {
    let fleet = Fleet::start().await;
    let git = GitServer::start().await;
    git.create_repo("app");
    let files = |greeting: &str| vec![("infra/main.tf".to_string(), config(greeting)), ("infra/network.tfstate".to_string(), NETWORK_STATE.to_string())];
    let push = |greeting: &str, message: &str| {
        let f = files(greeting);
        let f: Vec<(&str, &str)> = f.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        git.push_files("app", "main", &f, message)
    };
    push("hello", "first");
    fleet.create_stack("app", &git.url("app"), "builders", json!({})).await;
    // The context supplies both Terraform variables; the secret is sealed.
    fleet.ok("mutation { createContext(slug: \"shared\", name: \"Shared\") { slug } }", json!({})).await;
    fleet
        .ok(
            "mutation($v: String!) { a: setContextVariable(context: \"shared\", name: \"TF_VAR_region\", value: \"north-1\") { name } \
             b: setContextVariable(context: \"shared\", name: \"TF_VAR_secret\", value: $v, secret: true) { name } }",
            json!({ "v": SECRET }),
        )
        .await;
    fleet.ok("mutation { attachContext(stack: \"app\", context: \"shared\") { slug } }", json!({})).await;

    let config_dir = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config_dir, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // Version 1.
    let first = fleet.trigger("app").await;
    fleet.wait_state(&first, "UNCONFIRMED", &[&worker]).await;
    let r = run(&fleet, &first).await;
    assert_eq!(r["changes"], json!({ "add": 0, "change": 0, "destroy": 0, "outputs": 4 }), "{r}");
    confirm(&fleet, &first).await;
    fleet.wait_state(&first, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.history(&first).await, CONFIRMED_PATH);
    assert_eq!(run(&fleet, &first).await["erroredStateUploaded"], false);
    let v1 = versions(&fleet, "app").await;
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert_eq!(v1[0].3.as_deref(), Some(first.as_str()), "the version names the run that wrote it");
    let state = download(&fleet, "app", &v1[0].0).await;
    assert_eq!(output(&state, "message"), "hello world");
    assert_eq!(output(&state, "region"), "north-1", "the context's variable reached Terraform");
    assert_eq!(output(&state, "vpc"), "vpc-0a1b2c", "terraform_remote_state read the committed state");
    assert_eq!(output(&state, "secret_echo"), SECRET, "the context's secret reached Terraform");

    // The secret went through Terraform's output and came back masked.
    let log = logs(&fleet, &first, "Apply complete").await;
    assert!(log.contains("secret_echo"), "{log}");
    assert!(!log.contains(SECRET), "the secret is in the run's log:\n{log}");
    assert!(log.contains("***"), "{log}");
    assert!(!worker.output().contains(SECRET) && !fleet.app.server_log().contains(SECRET), "a secret reached a process log");

    // A second commit changes an output. A proposed run at it only plans.
    push("hi", "second");
    let proposed = trigger(&fleet, "app", "PROPOSED").await;
    fleet.wait_state(&proposed, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.history(&proposed).await, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "FINISHED"]);
    let r = run(&fleet, &proposed).await;
    assert_eq!(r["kind"], "PROPOSED");
    assert_eq!(r["changes"], json!({ "add": 0, "change": 0, "destroy": 0, "outputs": 1 }), "{r}");
    assert_eq!(versions(&fleet, "app").await, v1, "a proposed run stored a state version");
    assert!(state_lock(&fleet, "app").await.is_null(), "a proposed run left the state locked");
    let plan_log = logs(&fleet, &proposed, "message").await;
    assert!(plan_log.contains("hi world") && !plan_log.contains(SECRET), "{plan_log}");

    // The tracked run at the second commit applies it: version 2, same lineage.
    let second = fleet.trigger("app").await;
    fleet.wait_state(&second, "UNCONFIRMED", &[&worker]).await;
    assert_eq!(run(&fleet, &second).await["changes"]["outputs"], 1);
    confirm(&fleet, &second).await;
    fleet.wait_state(&second, "FINISHED", &[&worker]).await;
    let v2 = versions(&fleet, "app").await;
    assert_eq!(v2.len(), 2, "{v2:?}");
    assert!(v2[0].1 > v1[0].1, "the serial grows: {v2:?}");
    assert_eq!(v2[0].2, v1[0].2, "the lineage stays");
    assert_eq!(v2[0].3.as_deref(), Some(second.as_str()));
    assert_eq!(output(&download(&fleet, "app", &v2[0].0).await, "message"), "hi world");
    assert_eq!(output(&download(&fleet, "app", &v1[0].0).await, "message"), "hello world", "version 1 is kept as it was");

    // A third commit, planned and discarded: nothing applied, the stack free.
    push("hey", "third");
    let discarded = fleet.trigger("app").await;
    fleet.wait_state(&discarded, "UNCONFIRMED", &[&worker]).await;
    let d = fleet.ok("mutation($id: ID!) { discardRun(id: $id) { state } }", json!({ "id": discarded })).await;
    assert_eq!(d["discardRun"]["state"], "DISCARDED");
    let (_, message) =
        fleet.app.err(Some(&fleet.admin), "mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": discarded })).await;
    assert!(message.contains("DISCARDED"), "{message}");
    assert_eq!(versions(&fleet, "app").await, v2, "a discarded plan was applied");
    fleet.wait_workers("builders", "idle", 1).await;
    assert!(!fleet.history(&discarded).await.contains(&"APPLYING".to_string()));

    let after = fleet.trigger("app").await;
    fleet.wait_state(&after, "UNCONFIRMED", &[&worker]).await;
    confirm(&fleet, &after).await;
    fleet.wait_state(&after, "FINISHED", &[&worker]).await;
    let v3 = versions(&fleet, "app").await;
    assert_eq!(v3.len(), 3, "{v3:?}");
    assert_eq!(output(&download(&fleet, "app", &v3[0].0).await, "message"), "hey world");
    assert!(state_lock(&fleet, "app").await.is_null(), "the last apply left the state locked");
}

#[tokio::test]
async fn a_plan_is_stopped_with_its_process_group_an_apply_is_not_and_autodeploy_skips_confirmation() {
    let fleet = Fleet::start().await;
    let git = GitServer::start().await;
    git.create_repo("held");
    git.push_files(
        "held",
        "main",
        &[("infra/main.tf", fleet::CONFIG)],
        "a stack whose Terraform waits for the test",
    );
    let tool = fleet.hold_tool("1.0.3-held", &["plan", "apply"]);
    fleet.create_stack("held", &git.url("held"), "builders", json!({ "toolVersion": tool.version })).await;
    fleet.create_stack("auto", &git.url("held"), "builders", json!({ "autodeploy": true })).await;

    let config_dir = fleet.join_worker("builders", "host-b").await;
    let worker = fleet.run_worker(&config_dir, "host-b");
    fleet.wait_workers("builders", "idle", 1).await;

    // Stopping a plan stops Terraform's whole process group on the worker.
    let stopped = fleet.trigger("held").await;
    fleet.wait_state(&stopped, "PLANNING", &[&worker]).await;
    let (pgid, child) = tool.reached("plan").await;
    assert!(process_group(pgid).contains(&child), "the held plan's child runs in its group");
    // The log of the phases done is readable while the run goes on.
    let init = log_of(&fleet, &stopped, "?phase=initializing", "successfully initialized").await;
    assert!(init.contains("Initializing the backend"), "{init}");
    assert_eq!(fleet.run(&stopped).await.0, "PLANNING");
    let d = fleet.ok("mutation($id: ID!) { cancelRun(id: $id) { state } }", json!({ "id": stopped })).await;
    assert_eq!(d["cancelRun"]["state"], "STOPPED");
    wait_for(&format!("process group {pgid} of the stopped plan to be gone"), fleet::SOON, || async {
        process_group(pgid).is_empty().then_some(())
    })
    .await;
    assert_eq!(fleet.history(&stopped).await, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "STOPPED"]);
    assert_eq!(fleet.state_versions("held").await, 0);
    assert!(run(&fleet, &stopped).await["changes"].is_null(), "a plan that never ended reported changes");
    fleet.wait_workers("builders", "idle", 1).await;

    // The worker takes the next run; stopping it while it applies is refused
    // and the apply finishes.
    tool.release("plan");
    let applied = fleet.trigger("held").await;
    fleet.wait_state(&applied, "UNCONFIRMED", &[&worker]).await;
    confirm(&fleet, &applied).await;
    fleet.wait_state(&applied, "APPLYING", &[&worker]).await;
    let (apply_group, _) = tool.reached("apply").await;
    let (_, message) =
        fleet.app.err(Some(&fleet.admin), "mutation($id: ID!) { cancelRun(id: $id) { state } }", json!({ "id": applied })).await;
    assert!(message.contains("APPLYING") && message.contains("cannot be stopped"), "{message}");
    let (state, _) = fleet.run(&applied).await;
    assert_eq!(state, "APPLYING");
    assert!(!process_group(apply_group).is_empty(), "the refused stop interrupted the apply");
    // A run waiting behind the apply (one tracked run per stack at a time) is
    // canceled before any worker saw it.
    let waiting = fleet.trigger("held").await;
    let d = fleet.ok("mutation($id: ID!) { cancelRun(id: $id) { state } }", json!({ "id": waiting })).await;
    assert_eq!(d["cancelRun"]["state"], "CANCELED");
    tool.release("apply");
    fleet.wait_state(&applied, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.history(&applied).await, CONFIRMED_PATH);
    assert_eq!(fleet.state_versions("held").await, 1);
    let waited = fleet.history(&waiting).await;
    assert!(matches!(waited.as_slice(), [.., last] if last == "CANCELED") && !waited.contains(&"PREPARING".to_string()), "{waited:?}");
    assert_eq!(run(&fleet, &applied).await["changes"], json!({ "add": 0, "change": 0, "destroy": 0, "outputs": 2 }));

    // Ended runs stay ended; a task is not triggered without its command
    // (drift runs are, see drift_e2e.rs).
    for (mutation, id) in [("cancelRun", &stopped), ("cancelRun", &applied), ("discardRun", &applied)] {
        let (_, message) = fleet
            .app
            .err(Some(&fleet.admin), &format!("mutation($id: ID!) {{ {mutation}(id: $id) {{ state }} }}"), json!({ "id": id }))
            .await;
        assert!(message.contains("STOPPED") || message.contains("FINISHED"), "{mutation} {id}: {message}");
    }
    for kind in ["TASK"] {
        let (code, message) = fleet
            .app
            .err(
                Some(&fleet.admin),
                "mutation($k: RunKindValue!) { triggerRun(stack: \"held\", kind: $k) { id } }",
                json!({ "k": kind }),
            )
            .await;
        assert!(message.contains("kind"), "{kind}: {code} {message}");
    }

    // Autodeploy: from trigger to FINISHED with nobody confirming.
    let auto = fleet.trigger("auto").await;
    fleet.wait_state(&auto, "FINISHED", &[&worker]).await;
    assert_eq!(
        fleet.history(&auto).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
    assert_eq!(fleet.state_versions("auto").await, 1);
    let r = run(&fleet, &auto).await;
    assert_eq!(r["changes"]["outputs"], 2, "{r}");
    assert_eq!(r["erroredStateUploaded"], false);
}

#[tokio::test]
async fn a_state_terraform_cannot_save_is_uploaded_as_errored_and_the_run_says_so() {
    // The appliance refuses any state over 2 KiB; the configuration's state is larger.
    let fleet = Fleet::start_with_server(FleetOptions::default(), "max_state_bytes = 2048\n").await;
    let git = GitServer::start().await;
    git.create_repo("big");
    let big = format!("{}\noutput \"filler\" {{\n  value = join(\"\", [for i in range(400) : \"0123456789\"])\n}}\n", fleet::CONFIG);
    git.push_files("big", "main", &[("infra/main.tf", big.as_str())], "a state too large for the appliance");
    fleet.create_stack("big", &git.url("big"), "builders", json!({ "autodeploy": true })).await;
    let config_dir = fleet.join_worker("builders", "host-c").await;
    let worker = fleet.run_worker(&config_dir, "host-c");
    fleet.wait_workers("builders", "idle", 1).await;

    let id = fleet.trigger("big").await;
    let failed = fleet.wait_state(&id, "FAILED", &[&worker]).await;
    let reason = failed["failureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("errored.tfstate was uploaded"), "{failed}");
    let r = run(&fleet, &id).await;
    assert_eq!(r["erroredStateUploaded"], true, "{r}");
    assert_eq!(r["changes"]["outputs"], 3, "{r}");
    assert_eq!(fleet.state_versions("big").await, 0, "an oversized state was stored");
    assert_eq!(fleet.history(&id).await, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FAILED"]);
}
