//! A run from trigger to FINISHED with every piece real and separate:
//! `hangar server` hosting the MQTT broker, `hangar drain` scheduling, a
//! worker host joined with `hangar-worker join` and running `hangar-worker
//! run`, a git server, Terraform 1.0.3 served from the appliance's tools
//! directory, PostgreSQL and Garage.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Appliance, CREATE_STACK, Options, stack_input};
use diesel_async::RunQueryDsl;
use hangar_testkit::{ChildProcess, GitServer, TestDir, cargo_bin, free_port, wait_for};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(180);

const CONFIG: &str = r#"
variable "greeting" {
  type    = string
  default = "hello"
}

variable "secret" {
  type    = string
  default = ""
}

locals {
  message = "${var.greeting} world"
}

output "message" {
  value = local.message
}

output "secret_length" {
  value = length(var.secret)
}
"#;

async fn run_state(app: &Appliance, token: &str, id: &str) -> (String, Value) {
    let d = app
        .ok(token, "query($id: ID!) { run(id: $id) { state failureReason } }", json!({ "id": id }))
        .await;
    (d["run"]["state"].as_str().unwrap_or_default().to_string(), d["run"].clone())
}

async fn wait_state(app: &Appliance, token: &str, id: &str, want: &str, logs: &[&ChildProcess]) {
    let what = format!(
        "run {id} to be {want} (logs: {})",
        logs.iter().map(|l| l.log_path().display().to_string()).collect::<Vec<_>>().join(", ")
    );
    wait_for(&what, SOON, || async {
        let (state, run) = run_state(app, token, id).await;
        if state == want {
            return Some(());
        }
        let terminal = ["FINISHED", "FAILED", "DISCARDED", "CANCELED", "STOPPED"];
        assert!(!terminal.contains(&state.as_str()), "run {id} ended {state} while waiting for {want}: {run}");
        None
    })
    .await;
}

#[tokio::test]
async fn a_tracked_run_goes_from_trigger_through_confirmation_to_finished_on_a_real_worker() {
    let files = TestDir::new("e2e-files");
    let tools = files.subdir("tools");
    let bin_dir = tools.join("terraform/1.0.3");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(hangar_testkit::terraform::terraform(), bin_dir.join("terraform")).unwrap();
    let broker_port = free_port();
    // The broker shares the server's certificate; its section follows [server].
    let extra = format!(
        "tools_dir = \"{tools}\"\nbroker_url = \"mqtts://localhost:{broker_port}\"\nworker_lease_secs = 30\n",
        tools = tools.display(),
    );
    let mut app = Appliance::start_with(Options { server_extra: extra, ..Options::default() }).await;
    // Restart with the broker hosted, now that the test CA's paths are known.
    let broker = format!(
        "\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\ncert_file = \"{dir}/server.crt\"\nkey_file = \"{dir}/server.key\"\nca_file = \"{dir}/ca.crt\"\n",
        dir = app.pki.display()
    );
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(&app.config, text.replacen("\n[secrets]", &format!("{broker}\n[secrets]"), 1)).unwrap();
    app.server().terminate(Duration::from_secs(10));
    app.start_server().await;
    let admin = app.admin_token().await;
    wait_for("the hosted broker to be ready", SOON, || async {
        let (status, body) = app.ready().await;
        (status == 200 && body.to_string().contains("broker")).then_some(())
    })
    .await;

    let git = GitServer::start().await;
    git.create_repo("net");
    git.push_files("net", "main", &[("infra/main.tf", CONFIG)], "a stack");
    app.ok(&admin, "mutation { createWorkerPool(name: \"builders\") { id } }", json!({})).await;
    let mut input = stack_input("net", &git.url("net"));
    input["tool"] = json!("TERRAFORM");
    input["toolVersion"] = json!("1.0.3");
    input["workerPool"] = json!("builders");
    input["projectRoot"] = json!("infra");
    app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
    app.ok(
        &admin,
        "mutation { setStackVariable(stack: \"net\", name: \"TF_VAR_secret\", value: \"e2e-secret-value\", secret: true) { name } }",
        json!({}),
    )
    .await;

    // The worker host joins with the one-time token, as an operator would.
    let token = app.ok(&admin, "mutation { createJoinToken(pool: \"builders\") { token } }", json!({})).await["createJoinToken"]
        ["token"]
        .as_str()
        .unwrap()
        .to_string();
    let worker_dir = files.subdir("worker");
    let out = Command::new(cargo_bin("hangar-worker"))
        .args(["join", "--server", &app.url(""), "--token", &token, "--name", "host-a", "--config-dir"])
        .arg(&worker_dir)
        .arg("--ca")
        .arg(app.ca_path())
        .env("HANGAR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "hangar-worker join: {}", String::from_utf8_lossy(&out.stderr));
    let toml_path = worker_dir.join("worker.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let toml = toml
        .replace("/var/lib/hangar-worker/work", &files.subdir("work").display().to_string())
        .replace("/var/cache/hangar-worker", &files.subdir("cache").display().to_string());
    let toml = toml
        .replace("heartbeat_secs = 10\n", "heartbeat_secs = 1\n")
        .replace("poll_secs = 30\n", "poll_secs = 2\n")
        .replace("stop_grace_secs = 10\n", "stop_grace_secs = 2\n");
    assert!(toml.contains("heartbeat_secs = 1\n") && toml.contains("poll_secs = 2\n"), "{toml}");
    std::fs::write(&toml_path, toml).unwrap();

    let mut drain = Command::new(cargo_bin("hangar"));
    drain.arg("--config").arg(&app.config).arg("drain").env("HANGAR_LOG", "info").stdin(Stdio::null());
    let drain = ChildProcess::spawn(drain, "drain", app.dir.path());
    let mut worker = Command::new(cargo_bin("hangar-worker"));
    worker.args(["run", "--config-dir"]).arg(&worker_dir).env("HANGAR_LOG", "info,hangar_worker=debug").stdin(Stdio::null());
    let worker = ChildProcess::spawn(worker, "hangar-worker", files.path());
    wait_for("the worker to show as idle", SOON, || async {
        let d = app.ok(&admin, "{ workers(pool: \"builders\") { status } }", json!({})).await;
        (d["workers"][0]["status"] == "idle").then_some(())
    })
    .await;

    let run = app.ok(&admin, "mutation { triggerRun(stack: \"net\") { id state } }", json!({})).await;
    let id = run["triggerRun"]["id"].as_str().unwrap().to_string();
    let server_log = app.server.as_ref().unwrap();
    wait_state(&app, &admin, &id, "UNCONFIRMED", &[&worker, &drain, server_log]).await;
    app.ok(&admin, "mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    let server_log = app.server.as_ref().unwrap();
    wait_state(&app, &admin, &id, "FINISHED", &[&worker, &drain, server_log]).await;

    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        to_state: String,
    }
    let db = app.pg.database().pool(Some(2)).unwrap();
    let mut c = db.get().await.unwrap();
    let history: Vec<String> = diesel::sql_query(format!("SELECT to_state FROM run_events WHERE run_id = {id} ORDER BY id"))
        .load::<Row>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.to_state)
        .collect();
    assert_eq!(
        history,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"]
    );
    // The apply's state went to the appliance's state backend.
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let versions = diesel::sql_query("SELECT count(*) AS n FROM state_versions").get_result::<N>(&mut c).await.unwrap().n;
    assert_eq!(versions, 1, "one state version stored");
    // The secret reached Terraform (its length is an output) and never a log.
    let all = format!("{}{}", worker.output(), app.server_log());
    assert!(!all.contains("e2e-secret-value"), "a secret value reached a log");
    assert!(worker.output().contains(&format!("run_id={id}")) || worker.output().contains(&id));
}
