//! Drift detection on real resources: a stack whose configuration manages a
//! file on the worker host through the test provider (installed by Terraform
//! 1.0.3 from the appliance's mirror), on the whole appliance with a real
//! worker. The apply creates the file; a drift run finds nothing; the file
//! is changed outside Terraform and the next drift run names the resource;
//! reconcile puts the file back and the next drift run is clean again; with
//! `driftReconcile` and autodeploy the drift is put back by itself. The
//! stack page and the stacks list show the drift, and the audit trail has
//! each step. Then tasks on the same stack: a command run in its workspace
//! from the console and the API, its output in the run's log, a failing one
//! failing the run, and the refusals.

mod common;
mod fleet;

use std::path::Path;

use fleet::{Fleet, FleetOptions};
use hangar_testkit::{ChildProcess, GitServer, TestDir, provider};
use serde_json::{Value, json};

fn config_with_file(path: &Path, content: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

const DRIFT: &str = "query { stack(slug: \"files\") { driftReconcile drift { drifted checkedAt detectedAt runId resources { address actions } } } }";

/// A drift run now, to its end; the stack's drift after it.
async fn drift_run(fleet: &Fleet, worker: &ChildProcess) -> (String, Value) {
    let d = fleet.ok("mutation { triggerRun(stack: \"files\", kind: DRIFT) { id kind } }", json!({})).await;
    assert_eq!(d["triggerRun"]["kind"], "DRIFT", "{d}");
    let id = d["triggerRun"]["id"].as_str().unwrap().to_string();
    fleet.wait_state(&id, "FINISHED", &[worker]).await;
    let drift = fleet.ok(DRIFT, json!({})).await["stack"]["drift"].clone();
    (id, drift)
}

async fn confirm_to_the_end(fleet: &Fleet, id: &str, worker: &ChildProcess) {
    fleet.wait_state(id, "UNCONFIRMED", &[worker]).await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    fleet.wait_state(id, "FINISHED", &[worker]).await;
}

async fn audit(fleet: &Fleet, action: &str) -> Vec<Value> {
    let d = fleet
        .ok("query($a: String!) { auditEvents(first: 20, action: $a) { items { actor target details } } }", json!({ "a": action }))
        .await;
    d["auditEvents"]["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_detected_and_reconciled_and_tasks_run_on_a_real_file() {
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\n", mirror_dir.path().display());
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    let motd = fleet.files.subdir("worker-host").join("motd");
    let git = GitServer::start().await;
    git.create_repo("files");
    git.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "hello"))], "a file");
    fleet.create_stack("files", &git.url("files"), "builders", json!({})).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // Never checked; the apply creates the file; a drift run finds nothing.
    let d = fleet.ok(DRIFT, json!({})).await;
    assert_eq!(d["stack"]["drift"], json!({ "drifted": false, "checkedAt": null, "detectedAt": null, "runId": null, "resources": [] }));
    let id = fleet.trigger("files").await;
    confirm_to_the_end(&fleet, &id, &worker).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello");
    let (clean_run, drift) = drift_run(&fleet, &worker).await;
    assert_eq!((drift["drifted"].as_bool(), drift["runId"].as_str()), (Some(false), Some(clean_run.as_str())), "{drift}");
    assert!(drift["checkedAt"].is_string() && drift["resources"] == json!([]), "{drift}");
    let line = fleet.app.gql(Some(&fleet.admin), "mutation { reconcileStack(slug: \"files\") { id } }", json!({})).await.1;
    assert!(line["errors"][0]["message"].as_str().unwrap().contains("is not drifted"), "{line}");

    // Changed outside Terraform: the drift run names the resource.
    std::fs::write(&motd, "tampered").unwrap();
    let (found_by, drift) = drift_run(&fleet, &worker).await;
    assert_eq!(drift["drifted"], true, "{drift}");
    assert_eq!(drift["runId"], found_by.as_str());
    assert_eq!(drift["resources"], json!([{ "address": "hangartest_file.motd", "actions": ["update"] }]), "{drift}");
    assert!(drift["detectedAt"].is_string(), "{drift}");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "tampered", "a drift run changes nothing");
    let detected = audit(&fleet, "stack.drift_detected").await;
    assert_eq!((detected.len(), detected[0]["target"].as_str()), (1, Some("stack:files")), "{detected:?}");
    assert_eq!(detected[0]["details"]["resources"][0]["address"], "hangartest_file.motd");

    // The console shows it where people look.
    let console = common::ConsoleSession::login(&fleet.app).await;
    let page = console.get("/stacks/files").await;
    assert!(page.contains(">Drifted</h2>") && page.contains("hangartest_file.motd (update)"), "{page}");
    assert!(page.contains(&format!("href=\"/runs/{found_by}\"")) && page.contains(">Reconcile</button>"), "{page}");
    let list = console.get("/stacks").await;
    assert!(list.contains(">Drifted</span>"), "{list}");

    // Reconcile: a tracked run at the drift run's commit puts the file back;
    // asked again while it runs, the same run is the answer.
    let d = fleet.ok("mutation { reconcileStack(slug: \"files\") { id kind } }", json!({})).await;
    assert_eq!(d["reconcileStack"]["kind"], "TRACKED", "{d}");
    let reconcile = d["reconcileStack"]["id"].as_str().unwrap().to_string();
    let again = fleet.ok("mutation { reconcileStack(slug: \"files\") { id } }", json!({})).await;
    assert_eq!(again["reconcileStack"]["id"], reconcile.as_str());
    confirm_to_the_end(&fleet, &reconcile, &worker).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello");
    let asked = audit(&fleet, "stack.reconcile").await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["details"]["drift_run"].as_i64().map(|r| r.to_string()), Some(found_by.clone()), "{asked:?}");
    let (_, drift) = drift_run(&fleet, &worker).await;
    assert_eq!((drift["drifted"].as_bool(), drift["detectedAt"].as_str()), (Some(false), None), "{drift}");
    assert_eq!(audit(&fleet, "stack.drift_cleared").await.len(), 1);
    let page = console.get("/stacks/files").await;
    assert!(!page.contains(">Drifted</h2>") && page.contains("none found, checked"), "{page}");

    // Reconciled by itself: with driftReconcile and autodeploy, a drift run
    // that finds drift queues a tracked run that applies.
    // Set on the stack page's settings form, as a person would.
    let csrf = console.csrf("/stacks/files").await;
    let form = [
        ("csrf", csrf.as_str()),
        ("name", "files"),
        ("description", ""),
        ("branch", "main"),
        ("project_root", "infra"),
        ("tool_version", "1.0.3"),
        ("pool", "builders"),
        ("labels", ""),
        ("autodeploy", "on"),
        ("drift_reconcile", "on"),
    ];
    assert_eq!(console.post("/stacks/files/settings", &form).await, 303);
    let d = fleet.ok("query { stack(slug: \"files\") { driftReconcile autodeploy projectRoot toolVersion } }", json!({})).await;
    assert_eq!(d["stack"], json!({ "driftReconcile": true, "autodeploy": true, "projectRoot": "infra", "toolVersion": "1.0.3" }), "{d}");
    assert!(console.get("/stacks/files").await.contains("reconciled automatically"));
    std::fs::write(&motd, "tampered again").unwrap();
    let (found_by, drift) = drift_run(&fleet, &worker).await;
    assert_eq!(drift["drifted"], true, "{drift}");
    let asked = audit(&fleet, "stack.reconcile").await;
    assert_eq!((asked.len(), asked[0]["actor"].as_str()), (2, Some("drift")), "{asked:?}");
    assert_eq!(asked[0]["details"]["drift_run"].as_i64().map(|r| r.to_string()), Some(found_by), "{asked:?}");
    let auto = asked[0]["details"]["run"].as_i64().unwrap().to_string();
    fleet.wait_state(&auto, "FINISHED", &[&worker]).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello");
    let (_, drift) = drift_run(&fleet, &worker).await;
    assert_eq!(drift["drifted"], false, "{drift}");

    // Tasks: from the console's stack page, a command in the stack's
    // workspace (after init, with the stack's state), its output logged.
    let csrf = console.csrf("/stacks/files").await;
    let r = console
        .client
        .post(format!("{}/stacks/files/task", console.origin))
        .header("cookie", &console.cookie)
        .header("origin", &console.origin)
        .form(&[("csrf", csrf.as_str()), ("command", "terraform state list")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let at = r.headers()["location"].to_str().unwrap().to_string();
    let task = at.strip_prefix("/runs/").unwrap_or_else(|| panic!("{at}")).to_string();
    fleet.wait_state(&task, "FINISHED", &[&worker]).await;
    let d = fleet.ok("query($id: ID!) { run(id: $id) { kind command triggeredBy } }", json!({ "id": task })).await;
    assert_eq!((d["run"]["kind"].as_str(), d["run"]["command"].as_str()), (Some("TASK"), Some("terraform state list")), "{d}");
    let log = fleet.run_log(&task).await;
    assert!(log.contains("hangartest_file.motd"), "{log}");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello", "a task changes only what its command does");

    // From the API: a command that fails fails the run, with its exit code.
    let d = fleet.ok("mutation { runTask(stack: \"files\", command: \"echo about to fail; exit 3\") { id kind } }", json!({})).await;
    let failing = d["runTask"]["id"].as_str().unwrap().to_string();
    let (_, run) = {
        fleet.wait_state(&failing, "FAILED", &[&worker]).await;
        fleet.run(&failing).await
    };
    assert!(run["failureReason"].as_str().unwrap().contains("exit"), "{run}");
    assert!(fleet.run_log(&failing).await.contains("about to fail"));

    // Refusals: no command, more than one line, a reader, a stack that is not.
    for (command, needle) in [("   ", "command"), ("terraform state list\nrm -rf /", "one line")] {
        let (_, v) = fleet.app.gql(Some(&fleet.admin), "mutation($x: String!) { runTask(stack: \"files\", command: $x) { id } }", json!({ "x": command })).await;
        assert!(v["errors"][0]["message"].as_str().unwrap().contains(needle), "{command:?}: {v}");
    }
    let reader = fleet.app.user_token(&fleet.admin, "reader@hangar.test", "READER").await;
    let (_, v) = fleet.app.gql(Some(&reader), "mutation { runTask(stack: \"files\", command: \"true\") { id } }", json!({})).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "FORBIDDEN", "{v}");
    let (_, v) = fleet.app.gql(Some(&fleet.admin), "mutation { runTask(stack: \"ghost\", command: \"true\") { id } }", json!({})).await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "NOT_FOUND", "{v}");
    let tasks = audit(&fleet, "run.trigger").await;
    assert!(tasks.iter().any(|t| t["details"]["command"] == "terraform state list"), "{tasks:?}");
}
