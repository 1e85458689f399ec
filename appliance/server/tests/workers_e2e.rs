//! A run from trigger to FINISHED with every piece real and separate:
//! `hangar server` hosting the MQTT broker, `hangar drain` scheduling, a
//! worker host joined with `hangar-worker join` and running `hangar-worker
//! run`, a git server, Terraform 1.0.3 served from the appliance's tools
//! directory, PostgreSQL and Garage.

mod common;
mod fleet;

use fleet::{CONFIG, Fleet};
use hangar_testkit::GitServer;
use serde_json::json;

#[tokio::test]
async fn a_tracked_run_goes_from_trigger_through_confirmation_to_finished_on_a_real_worker() {
    let fleet = Fleet::start().await;
    let git = GitServer::start().await;
    git.create_repo("net");
    git.push_files("net", "main", &[("infra/main.tf", CONFIG)], "a stack");
    fleet.create_stack("net", &git.url("net"), "builders", json!({})).await;
    fleet
        .ok(
            "mutation { setStackVariable(stack: \"net\", name: \"TF_VAR_secret\", value: \"e2e-secret-value\", secret: true) { name } }",
            json!({}),
        )
        .await;

    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    let id = fleet.trigger("net").await;
    fleet.wait_state(&id, "UNCONFIRMED", &[&worker]).await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    fleet.wait_state(&id, "FINISHED", &[&worker]).await;

    assert_eq!(
        fleet.history(&id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"]
    );
    // The apply's state went to the appliance's state backend.
    assert_eq!(fleet.state_versions("net").await, 1, "one state version stored");
    // The secret reached Terraform (its length is an output) and never a log.
    let all = format!("{}{}", worker.output(), fleet.app.server_log());
    assert!(!all.contains("e2e-secret-value"), "a secret value reached a log");
    // Terraform's saved plan holds the secret variable's value: the bucket holds it sealed.
    let plan = fleet.app.garage.bucket().get_object(format!("runs/{id}/plan.sealed")).await.expect("the plan was stored");
    let plan = plan.bytes();
    assert!(plan.len() > 100, "a sealed plan of {} bytes", plan.len());
    assert!(!plan.windows(b"e2e-secret-value".len()).any(|w| w == b"e2e-secret-value"), "the plan is stored in clear");
    assert!(!plan.starts_with(b"PK"), "the plan's zip is stored in clear");
    assert!(worker.output().contains(&format!("run_id={id}")) || worker.output().contains(&id));
}
