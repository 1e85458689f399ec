//! A stack whose configuration manages real files through the test provider,
//! end to end on the real appliance: `hangar server` (with its broker and
//! its provider mirror), `hangar drain`, a git server, and a worker in a
//! network namespace that routes nowhere but to the appliance. Terraform
//! 1.0.3 on the worker installs the provider from the appliance's mirror; each
//! commit is planned, confirmed and applied, and the worker host's files
//! follow: created, changed, removed.

mod common;
mod fleet;
mod isolated;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleet::{Fleet, FleetOptions};
use hangar_testkit::netns::NetNs;
use hangar_testkit::{TestDir, provider};
use isolated::{IsolatedGit, IsolatedWorker, assert_no_route_out};
use serde_json::json;

/// A configuration with one file on the worker host.
fn config_with_file(path: &Path, content: &str, mode: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n  mode    = \"{mode}\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

/// Plans run `id`, confirms it once it waits for confirmation, and waits
/// for it to finish; returns what its plan counted to add, change and destroy.
async fn plan_confirm_apply(fleet: &Fleet, id: &str, worker: &IsolatedWorker, before_confirm: impl FnOnce()) -> (u64, u64, u64) {
    fleet.wait_state(id, "UNCONFIRMED", &[&worker.process]).await;
    before_confirm();
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    fleet.wait_state(id, "FINISHED", &[&worker.process]).await;
    assert_eq!(
        fleet.history(id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"]
    );
    let d = fleet.ok("query($id: ID!) { run(id: $id) { changes { add change destroy } } }", json!({ "id": id })).await;
    let c = &d["run"]["changes"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("run {id} counted no changes: {d}"));
    (n("add"), n("change"), n("destroy"))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_no_route_out_creates_changes_and_removes_real_files_through_the_appliances_mirror() {
    let ns = NetNs::create();
    let git = IsolatedGit::start(&ns).await;
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\n", mirror_dir.path().display());
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings).await;
    let host = fleet.files.subdir("worker-host");
    let motd = host.join("motd");

    git.server.create_repo("files");
    git.server.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "hello from a run\\n", "0644"))], "a file");
    fleet.create_stack("files", &git.url("files"), "isolated", json!({ "autodeploy": false })).await;
    let worker = IsolatedWorker::start(&fleet, &ns, "isolated", "host-ns").await;
    assert_no_route_out(&ns);
    fleet.wait_workers("isolated", "idle", 1).await;

    // First commit: planned (nothing on the host yet), confirmed, applied.
    let id = fleet.trigger("files").await;
    let changes = plan_confirm_apply(&fleet, &id, &worker, || assert!(!motd.exists(), "a plan makes nothing")).await;
    assert_eq!(changes, (1, 0, 0));
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello from a run\n");
    assert_eq!(mode_of(&motd), 0o644);

    // The provider came from the appliance's mirror, every request answered.
    let log = fleet.app.server_log();
    let asked: Vec<&str> = log.lines().filter(|l| l.contains("path=\"/v1/providers/")).collect();
    let archive = format!("/v1/providers/{}/{}", provider::SOURCE, provider::archive_name(provider::VERSION));
    for want in [format!("/v1/providers/{}/index.json", provider::SOURCE), format!("/v1/providers/{}/{}.json", provider::SOURCE, provider::VERSION), archive.clone()] {
        assert!(asked.iter().any(|l| l.contains(&format!("path=\"{want}\"")) && l.contains("status=200")), "{want} served: {asked:#?}");
    }
    assert!(asked.iter().all(|l| l.contains("status=200")), "{asked:#?}");
    // What Terraform runs on the worker host is the binary packaged.
    let installed = fleet
        .files
        .path()
        .join("cache-host-ns/plugins")
        .join(provider::SOURCE)
        .join(provider::VERSION)
        .join(provider::platform())
        .join(provider::BINARY);
    let packaged = hangar_testkit::cargo_bin(provider::BINARY);
    let same = std::fs::read(&installed).unwrap() == std::fs::read(&packaged).unwrap();
    assert!(same, "{} differs from {}", installed.display(), packaged.display());

    // Second commit: content and mode change in place.
    git.server.push_files("files", "main", &[("infra/main.tf", &config_with_file(&motd, "changed by a second commit\\n", "0600"))], "change the file");
    let id = fleet.trigger("files").await;
    let changes = plan_confirm_apply(&fleet, &id, &worker, || {
        assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello from a run\n", "a plan changes nothing")
    })
    .await;
    assert_eq!(changes, (0, 1, 0), "changed in place, not replaced");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "changed by a second commit\n");
    assert_eq!(mode_of(&motd), 0o600);

    // Third commit: the resource is gone from the configuration, so is the file.
    let empty = provider::required_providers();
    git.server.push_files("files", "main", &[("infra/main.tf", empty.as_str())], "remove the file");
    let id = fleet.trigger("files").await;
    let changes = plan_confirm_apply(&fleet, &id, &worker, || assert!(motd.exists(), "a plan removes nothing")).await;
    assert_eq!(changes, (0, 0, 1));
    assert!(!motd.exists(), "the apply removed the file");
    assert_eq!(fleet.state_versions("files").await, 3);
}
