//! Backup, wipe, restore onto a fresh prefix: an appliance with a worker, a
//! stack that applied Terraform, a context with a secret and run logs is
//! backed up with `hangar-install backup`; its host is wiped (the object
//! store's data copied aside first, as an operator restores a bucket with the
//! engine's own means); another prefix gets the bundle and the backup with
//! `hangar-install restore --from DIR --answers FILE`. Everything comes back:
//! the users, the stack, its secret still readable by a run, the contexts, the
//! runs and their logs, the worker pool, and the worker itself with the
//! certificate it already had. A new run applies on top of the restored
//! state: Terraform read it (same lineage, next serial).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{ADMIN_EMAIL, Api, IGNORE_DISK, Site, apply, both, bundle, check, join_worker, run_worker};
use hangar_testkit::{GitServer, TestDir, wait_for};
use serde_json::{Value, json};

const SECRET: &str = "restored-secret-7f3a9c";

/// Terraform with no provider: a variable from the stack's context (secret),
/// outputs that show it arrived.
fn config(greeting: &str) -> String {
    format!(
        r#"
variable "secret" {{
  type    = string
  default = ""
}}

output "message" {{
  value = "{greeting} world"
}}

output "secret_length" {{
  value = length(var.secret)
}}
"#
    )
}

async fn state_versions(api: &Api, stack: &str) -> Vec<Value> {
    api.ok("query($s: String!) { stateVersions(stack: $s) { id serial lineage runId } }", json!({ "s": stack })).await["stateVersions"]
        .as_array()
        .unwrap()
        .clone()
}

/// A stored state version, decrypted by the appliance.
async fn state_of(api: &Api, stack: &str, version: &str) -> Value {
    let r = api.http.get(format!("{}/api/v1/stacks/{stack}/state/versions/{version}", api.base)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn logs(api: &Api, run: &str) -> String {
    let r = api.http.get(format!("{}/api/v1/runs/{run}/logs", api.base)).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restored_onto_a_fresh_prefix_brings_everything_back_and_terraform_reads_its_state() {
    hangar_testkit::init();
    let built = bundle();
    let files = TestDir::new("restore-files");
    let git = GitServer::start().await;
    git.create_repo("app");
    git.push_files("app", "main", &[("infra/main.tf", &config("hello"))], "first");

    // The first host: a worker, a stack with a context holding a secret, one applied run.
    let a = Site::new("restore-from", &built);
    check("install", a.install());
    let api = Api::login(&a).await;
    api.ok("mutation { createWorkerPool(name: \"builders\") { id } }", json!({})).await;
    let worker_dir = join_worker(&a, &api, &files, "builders").await;
    let mut worker = run_worker(&worker_dir, &files);
    api.ok(
        "mutation($i: StackInput!) { createStack(input: $i) { slug } }",
        json!({ "i": {
            "slug": "app", "name": "App", "repository": git.url("app"), "branch": "main",
            "tool": "TERRAFORM", "toolVersion": "1.0.3", "workerPool": "builders", "projectRoot": "infra",
        }}),
    )
    .await;
    api.ok("mutation { createContext(slug: \"shared\", name: \"Shared\") { slug } }", json!({})).await;
    api.ok(
        "mutation($v: String!) { setContextVariable(context: \"shared\", name: \"TF_VAR_secret\", value: $v, secret: true) { name } }",
        json!({ "v": SECRET }),
    )
    .await;
    api.ok("mutation { attachContext(stack: \"app\", context: \"shared\") { slug } }", json!({})).await;
    let first_run = apply(&api, "app", &worker).await;
    let before = state_versions(&api, "app").await;
    assert_eq!(before.len(), 1, "{before:?}");
    let first_log = logs(&api, &first_run).await;
    assert!(first_log.contains("hello world"), "{first_log}");
    let users_before = api.ok("{ users { email role } workerPools { name } contexts { slug } }", json!({})).await;

    // The backup, kept off the host.
    let out = check("backup", a.command(&["backup"]).output().unwrap());
    let made = PathBuf::from(out.lines().nth(1).unwrap().trim());
    assert!(made.join("manifest.json").is_file(), "{out}");
    let kept = files.path().join("backup");
    check("copy the backup", Command::new("cp").arg("-a").arg(&made).arg(&kept).output().unwrap());
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(kept.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["objects"]["referenced"].as_u64().unwrap() >= 2, "a state version and log chunks: {manifest}");
    let objects_list = std::fs::read_to_string(kept.join("objects.txt")).unwrap();
    assert!(objects_list.contains(&format!("runs/{first_run}/logs/")), "{objects_list}");

    // The bucket is copied with the engine's own means (Garage, single node:
    // its directories, the appliance stopped), then the host is wiped.
    worker.terminate(Duration::from_secs(5));
    check("stop", a.command(&["uninstall"]).output().unwrap());
    let bucket = files.path().join("objects");
    check("copy the bucket", Command::new("cp").arg("-a").arg(a.path("var/lib/hangar/objects")).arg(&bucket).output().unwrap());
    check("reinstall", a.install());
    check("wipe", a.command(&["uninstall", "--purge-data"]).output().unwrap());
    assert!(!a.path("var/lib/hangar").exists() && !a.path("etc/hangar").exists());

    // A fresh prefix: the bucket in place, then the bundle and the backup.
    // A restore brings back a dump of the bundled PostgreSQL: answers that
    // ask for an external one are refused before anything is installed.
    let mut c = Site::new("restore-onto-external", &built);
    c.set("database", "external");
    let out = c
        .command(&["restore", "--from", kept.to_str().unwrap(), "--answers", c.answers.to_str().unwrap(), "--trust", c.trust.to_str().unwrap(), IGNORE_DISK[0], IGNORE_DISK[1]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let line = common::error_line(&out);
    assert!(line.contains("invalid `database`: a restore brings back a dump of the bundled PostgreSQL"), "{line}");
    assert!(!c.path("opt/hangar").exists() && !c.path("etc/hangar/install-state.json").exists());
    drop(c);

    let b = Site::new("restore-onto", &built);
    std::fs::create_dir_all(b.path("var/lib/hangar")).unwrap();
    check("place the bucket", Command::new("cp").arg("-a").arg(&bucket).arg(b.path("var/lib/hangar/objects")).output().unwrap());
    let out = b
        .command(&["restore", "--from", kept.to_str().unwrap(), "--answers", b.answers.to_str().unwrap(), "--trust", b.trust.to_str().unwrap(), IGNORE_DISK[0], IGNORE_DISK[1]])
        .output()
        .unwrap();
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("every checksum verified"), "{text}");
    assert!(text.contains(&format!("Restored backup {}", manifest["id"].as_str().unwrap())), "{text}");
    // The certificate authority is the backup's: the worker's certificate holds.
    assert_eq!(std::fs::read(b.ca()).unwrap(), std::fs::read(kept.join("files/pki/ca.crt")).unwrap());

    let api = Api::login(&b).await;
    assert_eq!(api.ok("{ users { email role } workerPools { name } contexts { slug } }", json!({})).await, users_before);
    assert_eq!(state_versions(&api, "app").await, before);
    assert!(logs(&api, &first_run).await.contains("hello world"), "the run's log comes back with the bucket");
    let me = api.ok("{ me { email } }", json!({})).await;
    assert_eq!(me["me"]["email"], ADMIN_EMAIL);

    // The worker host moves with the appliance (its name now points here): the
    // same certificate, only the ports of this test host differ.
    let path = worker_dir.join("worker.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!(":{}\"", a.ports.server), &format!(":{}\"", b.ports.server))
        .replace(&format!(":{}\"", a.ports.broker), &format!(":{}\"", b.ports.broker));
    std::fs::write(&path, toml).unwrap();
    let worker = run_worker(&worker_dir, &files);
    git.push_files("app", "main", &[("infra/main.tf", &config("restored"))], "second");
    let second_run = apply(&api, "app", &worker).await;
    let after = state_versions(&api, "app").await;
    assert_eq!(after.len(), 2, "{after:?}");
    let newest = &after[0];
    assert_eq!(newest["runId"], json!(second_run));
    assert_eq!(newest["lineage"], before[0]["lineage"], "Terraform continued the restored state");
    assert_eq!(newest["serial"].as_i64().unwrap(), before[0]["serial"].as_i64().unwrap() + 1);
    let state = state_of(&api, "app", newest["id"].as_str().unwrap()).await;
    assert_eq!(state["outputs"]["message"]["value"], "restored world");
    assert_eq!(state["outputs"]["secret_length"]["value"], SECRET.len(), "the sealed secret still opens");
    let status = check("status", b.command(&["status"]).output().unwrap());
    assert!(status.contains("restore ") && status.contains("completed"), "{status}");
    drop(worker);
    check("uninstall", b.command(&["uninstall"]).output().unwrap());
}

/// The complete backups under `site`, by id, with their reasons.
fn backups(site: &Site) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(site.path("var/lib/hangar/backups"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m: Value = serde_json::from_str(&std::fs::read_to_string(e.path().join("manifest.json")).ok()?).ok()?;
            Some((m["id"].as_str()?.to_string(), m["reason"].as_str()?.to_string()))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_run_as_the_service_user_and_keep_the_retention_count() {
    hangar_testkit::init();
    let built = bundle();
    let mut site = Site::new("backup-schedule", &built);
    // Every three seconds (a sixth field, the seconds, first).
    site.set("backup_schedule", "*/3 * * * * *");
    site.set("backup_retention", "1");
    check("install", site.install());
    let status = check("status", site.command(&["status"]).output().unwrap());
    // The first scheduled backup may already be there.
    let schedule = "scheduled \"*/3 * * * * *\" (UTC)";
    let none_yet = format!("none yet (at most 1 kept), {schedule}");
    let one_kept = format!("1 kept (at most 1), {schedule}; newest ");
    assert!(status.contains(&none_yet) || status.contains(&one_kept), "{status}");

    // A backup every three seconds; the older ones removed.
    let mut seen = std::collections::BTreeSet::new();
    wait_for("three scheduled backups", Duration::from_secs(90), || {
        for (id, reason) in backups(&site) {
            assert_eq!(reason, "scheduled");
            seen.insert(id);
        }
        let done = seen.len() >= 3;
        async move { done.then_some(()) }
    })
    .await;
    check("stop the scheduled backups", common::ctl(&site, &["stop", "backups"]));
    let now = backups(&site);
    assert_eq!(now.len(), 1, "the retention count is one: {now:?}");
    let (id, _) = now[0].clone();
    let dir = site.path(&format!("var/lib/hangar/backups/{id}"));
    let svc = nix::unistd::User::from_name("hangar").unwrap().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(dir.join("database.dump")).unwrap().uid(), svc.uid.as_raw(), "made by the service user");
    let sums = Command::new("sha256sum").arg("-c").arg("--quiet").arg("SHA256SUMS").current_dir(&dir).output().unwrap();
    assert!(sums.status.success(), "{}", both(&sums));
    let log = std::fs::read_to_string(site.path("var/log/hangar/backups.log")).unwrap();
    assert!(log.contains("next backup at") && log.contains(&format!("backup {id} made")), "{log}");

    // A manual one counts too (the retention keeps the newest).
    let out = check("backup", site.command(&["backup"]).output().unwrap());
    assert!(out.starts_with("backup ") && out.contains("-manual"), "{out}");
    let now = backups(&site);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].1, "manual");
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}
