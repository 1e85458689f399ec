//! Tools and worker bundles, from the bundle builder to a run: a tools bundle
//! built with `hangar-bundle build` (the shipped `tools` recipe) from a
//! directory laid out as `terraform providers mirror` writes it plus a
//! Terraform version, uploaded and applied with `hangar bundle`, then used
//! by a stack on a worker in a network namespace that routes nowhere but to
//! the appliance. Beside it the refusals (other kinds, unknown ids, readers,
//! a file that would change, entries with no place), and a worker bundle
//! whose `hangar-worker` a worker host installs with `hangar-worker update`.

mod common;
mod fleet;
mod isolated;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use diesel_async::RunQueryDsl;
use fleet::{Fleet, FleetOptions};
use hangar_testkit::netns::NetNs;
use hangar_testkit::{TestDir, cargo_bin, provider};
use isolated::{IsolatedGit, IsolatedWorker, assert_no_route_out};
use serde_json::{Value, json};

/// A Terraform version that only the tools bundle brings. No other Terraform
/// build can be had offline here, so it is 1.0.3's binary under a label of
/// its own: what matters is that the appliance serves what was applied.
const BUNDLED_TERRAFORM: &str = "1.0.3-offline";

/// The signing key of the site, its trust directory, and the staging area.
struct Site {
    dir: TestDir,
    key: PathBuf,
    trust: PathBuf,
    mirror: PathBuf,
    staging: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = TestDir::new("tools-bundles");
        let trust = dir.subdir("trust");
        let out = Command::new(cargo_bin("hangar-bundle")).arg("keygen").arg("--out").arg(trust.join("site")).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let key = dir.path().join("site.key");
        std::fs::rename(trust.join("site.key"), &key).unwrap();
        let mirror = dir.subdir("mirror");
        let staging = dir.path().join("staging");
        Site { dir, key, trust, mirror, staging }
    }

    /// The `[server]` lines for this site.
    fn settings(&self) -> String {
        format!(
            "provider_mirror_dir = \"{}\"\nbundles_dir = \"{}\"\nbundle_trust_dir = \"{}\"\n",
            self.mirror.display(),
            self.staging.display(),
            self.trust.display()
        )
    }

    /// `hangar-bundle build` of the shipped tools recipe over `dir`.
    fn build_tools(&self, dir: &Path, version: &str, out: &Path) {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bundles/recipes/tools.toml");
        let o = Command::new(cargo_bin("hangar-bundle"))
            .args(["build", "--recipe"])
            .arg(recipe)
            .arg("--var")
            .arg(format!("dir={}", dir.display()))
            .arg("--var")
            .arg(format!("version={version}"))
            .arg("--key")
            .arg(&self.key)
            .arg("--out")
            .arg(out)
            .arg("--compression-level")
            .arg("1")
            .output()
            .unwrap();
        assert!(o.status.success(), "hangar-bundle build: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// A bundle of `kind` holding `files` (path in the bundle, source), signed by the site.
    fn build_with_library(&self, kind: hangar_bundle::Kind, version: &str, files: &[(&str, &Path)], out: &Path) {
        let mut layout = hangar_bundle::Layout::new();
        for (dest, src) in files {
            let mut at = String::new();
            let parts: Vec<&str> = dest.split('/').collect();
            for dir in &parts[..parts.len() - 1] {
                at = if at.is_empty() { dir.to_string() } else { format!("{at}/{dir}") };
                if !layout.entries().any(|(p, _)| p == at) {
                    layout.add_dir(&at, 0o755).unwrap();
                }
            }
            layout.add_file(dest, src, Some(0o755)).unwrap();
        }
        let key = hangar_bundle::SigningKey::from_file(&self.key).unwrap();
        hangar_bundle::build_bundle(
            &layout,
            out,
            hangar_bundle::BuildOptions {
                kind,
                version: version.parse().unwrap(),
                platform: hangar_bundle::host_platform(),
                created: chrono::Utc::now(),
                expires: None,
                compression_level: 1,
                threads: 1,
                signing_keys: &[key],
                progress: None,
            },
        )
        .unwrap();
    }
}

/// `hangar bundle ARGS --json` against `app` with API key `key`.
fn hangar_bundle_cmd(app: &common::Appliance, key: &str, state: &Path, args: &[&str]) -> Output {
    Command::new(cargo_bin("hangar"))
        .arg("bundle")
        .args(args)
        .arg("--json")
        .arg("--server")
        .arg(app.url("/"))
        .arg("--ca-file")
        .arg(app.ca_path())
        .env("HANGAR_API_KEY", key)
        .env("HANGAR_CLIENT_CONFIG", state.join("no-client.toml"))
        .env("XDG_STATE_HOME", state)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json_of(o: &Output, what: &str) -> Value {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

async fn api_key(app: &common::Appliance, admin: &str, role: &str) -> String {
    let made = app
        .ok(admin, "mutation($r: UserRole) { createApiKey(name: \"bundles\", role: $r) { key } }", json!({ "r": role }))
        .await;
    made["createApiKey"]["key"].as_str().unwrap().to_string()
}

/// Uploads `bundle` with `hangar bundle upload`; returns the staged bundle's id.
fn upload(app: &common::Appliance, key: &str, state: &Path, bundle: &Path) -> String {
    let v = json_of(&hangar_bundle_cmd(app, key, state, &["upload", bundle.to_str().unwrap()]), "hangar bundle upload");
    v["id"].as_str().unwrap().to_string()
}

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Audit events of `action` for `target`.
async fn audited(app: &common::Appliance, action: &str, target: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        details: Value,
    }
    let mut c = app.pg.database().connect().await.unwrap();
    diesel::sql_query("SELECT details FROM audit_events WHERE action = $1 AND target = $2 ORDER BY id")
        .bind::<diesel::sql_types::Text, _>(action)
        .bind::<diesel::sql_types::Text, _>(target)
        .load::<Row>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.details)
        .collect()
}

/// A directory as a connected machine prepares it: the provider as
/// `terraform providers mirror` leaves it (archives and JSON documents)
/// under `providers/`, and a Terraform binary under `terraform/<version>/`.
fn tools_source(root: &Path) -> PathBuf {
    let src = root.join("tools-source");
    let providers = src.join("providers");
    provider::add_to_mirror(&providers);
    let pdir = providers.join(provider::HOSTNAME).join(provider::NAMESPACE).join(provider::TYPE);
    std::fs::write(pdir.join("index.json"), format!("{{\"versions\":{{\"{}\":{{}}}}}}", provider::VERSION)).unwrap();
    std::fs::write(pdir.join(format!("{}.json", provider::VERSION)), "{\"archives\":{}}").unwrap();
    let tf = src.join("terraform").join(BUNDLED_TERRAFORM);
    std::fs::create_dir_all(&tf).unwrap();
    std::fs::copy(hangar_testkit::terraform::terraform(), tf.join("terraform")).unwrap();
    src
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tools_bundle_applied_brings_a_terraform_version_and_a_provider_to_a_worker_with_no_route_out() {
    let site = Site::new();
    let ns = NetNs::create();
    let git = IsolatedGit::start(&ns).await;
    let fleet = Fleet::start_with_server(FleetOptions::default(), &site.settings()).await;
    let key = api_key(&fleet.app, &fleet.admin, "ADMIN").await;
    let state = site.dir.subdir("client-state");

    let src = tools_source(site.dir.path());
    let bundle = site.dir.path().join("tools.bundle");
    site.build_tools(&src, "2026.12.7", &bundle);
    let id = upload(&fleet.app, &key, &state, &bundle);
    assert!(files_under(&site.mirror).is_empty(), "nothing is served before the apply");

    let applied = json_of(&hangar_bundle_cmd(&fleet.app, &key, &state, &["apply", &id]), "hangar bundle apply");
    let archive = format!("providers/{}/{}", provider::SOURCE, provider::archive_name(provider::VERSION));
    let tf_entry = format!("terraform/{BUNDLED_TERRAFORM}/terraform");
    let mut installed: Vec<String> =
        applied["installed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    installed.sort();
    assert_eq!(installed, [archive.clone(), tf_entry.clone()], "{applied}");
    assert_eq!(applied["skipped"].as_array().unwrap().len(), 2, "the mirror's JSON documents: {applied}");
    assert_eq!(applied["bundle"]["kind"], "tools");
    assert!(applied["bundle"]["applied"]["applied_by"].is_string(), "{applied}");
    let tools = fleet.files.path().join("tools");
    let served_tf = tools.join(&tf_entry);
    assert_eq!(std::fs::read(&served_tf).unwrap(), std::fs::read(hangar_testkit::terraform::terraform()).unwrap());
    assert_eq!(
        files_under(&site.mirror),
        [format!("{}/{}", provider::SOURCE, provider::archive_name(provider::VERSION))],
        "the archive only: the mirror makes its own documents"
    );
    assert_eq!(audited(&fleet.app, "bundle.applied", &id).await.len(), 1);

    // A stack on the new version, whose configuration needs the provider.
    let host = fleet.files.subdir("worker-host");
    let motd = host.join("motd");
    let config = format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"from a tools bundle\\n\"\n  mode    = \"0644\"\n}}\n",
        provider::required_providers(),
        motd.display()
    );
    git.server.create_repo("bundled");
    git.server.push_files("bundled", "main", &[("infra/main.tf", &config)], "a file");
    fleet
        .create_stack("bundled", &git.url("bundled"), "isolated", json!({ "toolVersion": BUNDLED_TERRAFORM, "autodeploy": false }))
        .await;
    let worker = IsolatedWorker::start(&fleet, &ns, "isolated", "host-ns").await;
    assert_no_route_out(&ns);
    fleet.wait_workers("isolated", "idle", 1).await;
    let run = fleet.trigger("bundled").await;
    fleet.wait_state(&run, "UNCONFIRMED", &[&worker.process]).await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": run })).await;
    fleet.wait_state(&run, "FINISHED", &[&worker.process]).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "from a tools bundle\n");
    let log = fleet.app.server_log();
    let served = |path: &str| log.lines().any(|l| l.contains(&format!("path=\"{path}\"")) && l.contains("status=200"));
    assert!(served(&format!("/v1/tools/terraform/{BUNDLED_TERRAFORM}/linux_amd64")), "the bundled Terraform was fetched");
    assert!(
        served(&format!("/v1/providers/{}/{}", provider::SOURCE, provider::archive_name(provider::VERSION))),
        "the provider came from the mirror"
    );

    // Applied again: nothing changes.
    let modified = std::fs::metadata(&served_tf).unwrap().modified().unwrap();
    let again = json_of(&hangar_bundle_cmd(&fleet.app, &key, &state, &["apply", &id]), "a second apply");
    assert_eq!(again["installed"], json!([]), "{again}");
    assert_eq!(again["unchanged"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(std::fs::metadata(&served_tf).unwrap().modified().unwrap(), modified);
    // And through GraphQL.
    let d = fleet
        .ok("mutation($id: ID!) { applyBundle(id: $id) { kind version installed unchanged skipped } }", json!({ "id": id }))
        .await;
    assert_eq!(d["applyBundle"]["installed"], json!([]), "{d}");
    assert_eq!((d["applyBundle"]["kind"].as_str(), d["applyBundle"]["version"].as_str()), (Some("tools"), Some("2026.12.7")));
    assert_eq!(d["applyBundle"]["unchanged"].as_array().unwrap().len(), 2, "{d}");
    // The list shows when and by whom it was applied.
    let list = json_of(&hangar_bundle_cmd(&fleet.app, &key, &state, &["list"]), "hangar bundle list");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["applied"]["installed"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn applies_refuse_other_kinds_unknown_ids_readers_changed_files_and_strange_entries() {
    let site = Site::new();
    let fleet = Fleet::start_with_server(FleetOptions::default(), &site.settings()).await;
    let app = &fleet.app;
    let key = api_key(app, &fleet.admin, "ADMIN").await;
    let reader = api_key(app, &fleet.admin, "READER").await;
    let state = site.dir.subdir("client-state");
    let tools = fleet.files.path().join("tools");
    let before = files_under(&tools);
    let fails = |o: Output, what: &str| -> String {
        assert_eq!(o.status.code(), Some(1), "{what} fails: {}", String::from_utf8_lossy(&o.stdout));
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        err
    };

    // An appliance bundle is a release: it is upgraded to, never applied.
    let appliance = site.dir.path().join("appliance.bundle");
    let small = site.dir.path().join("small");
    std::fs::write(&small, "#!/bin/sh\n").unwrap();
    site.build_with_library(hangar_bundle::Kind::Appliance, "9.0.0", &[("bin/hangar", &small)], &appliance);
    let appliance_id = upload(app, &key, &state, &appliance);
    let err = fails(hangar_bundle_cmd(app, &key, &state, &["apply", &appliance_id]), "an appliance bundle");
    assert!(err.contains("400") && err.contains("wrong_kind") && err.contains("upgrade"), "{err}");
    assert_eq!(audited(app, "bundle.apply_refused", &appliance_id).await.len(), 1);

    // Unknown and malformed ids, a reader's key, no key.
    let err = fails(hangar_bundle_cmd(app, &key, &state, &["apply", &"0".repeat(32)]), "an unknown id");
    assert!(err.contains("404") && err.contains("no staged bundle"), "{err}");
    let (status, _) = post(app, Some(&key), "/api/v1/bundles/..%2F..%2Fetc/apply").await;
    assert_eq!(status, 404);
    let err = fails(hangar_bundle_cmd(app, &reader, &state, &["apply", &appliance_id]), "a reader");
    assert!(err.contains("403") && err.contains("admin role"), "{err}");
    let (status, _) = post(app, None, &format!("/api/v1/bundles/{appliance_id}/apply")).await;
    assert_eq!(status, 401);
    // The same through GraphQL's applyBundle.
    let apply = "mutation($id: ID!) { applyBundle(id: $id) { installed } }";
    let (code, message) = app.err(Some(&reader), apply, json!({ "id": appliance_id })).await;
    assert_eq!(code, "FORBIDDEN", "{message}");
    let (code, message) = app.err(Some(&fleet.admin), apply, json!({ "id": appliance_id })).await;
    assert!(code == "REFUSED" && message.contains("wrong_kind"), "{code}: {message}");
    let (code, message) = app.err(Some(&fleet.admin), apply, json!({ "id": "f".repeat(32) })).await;
    assert_eq!(code, "NOT_FOUND", "{message}");

    // A tools bundle with a file that has no place in the tools area.
    let odd = site.dir.subdir("odd");
    std::fs::create_dir_all(odd.join("etc")).unwrap();
    std::fs::write(odd.join("etc/motd"), "hello").unwrap();
    let odd_bundle = site.dir.path().join("odd.bundle");
    site.build_tools(&odd, "1.0.0", &odd_bundle);
    let odd_id = upload(app, &key, &state, &odd_bundle);
    let err = fails(hangar_bundle_cmd(app, &key, &state, &["apply", &odd_id]), "a strange entry");
    assert!(err.contains("unexpected_entry") && err.contains("etc/motd"), "{err}");

    // Terraform 1.0.3 is there already; a bundle bringing other bytes under
    // that version is refused whole: its provider is not installed either.
    let changed = site.dir.subdir("changed");
    provider::add_to_mirror(&changed.join("providers"));
    std::fs::create_dir_all(changed.join("terraform/1.0.3")).unwrap();
    std::fs::write(changed.join("terraform/1.0.3/terraform"), "#!/bin/sh\necho not terraform\n").unwrap();
    let changed_bundle = site.dir.path().join("changed.bundle");
    site.build_tools(&changed, "1.0.1", &changed_bundle);
    let changed_id = upload(app, &key, &state, &changed_bundle);
    let err = fails(hangar_bundle_cmd(app, &key, &state, &["apply", &changed_id]), "a changed version");
    assert!(err.contains("409") && err.contains("never replaced") && err.contains("terraform/1.0.3/terraform"), "{err}");

    // A staged bundle altered on disk after its upload: the apply reads it
    // again against its signed manifest and refuses it.
    let fresh = site.dir.subdir("fresh");
    std::fs::create_dir_all(fresh.join("terraform/1.0.3-fresh")).unwrap();
    std::fs::write(fresh.join("terraform/1.0.3-fresh/terraform"), "#!/bin/sh\necho fresh\n".repeat(64)).unwrap();
    let fresh_bundle = site.dir.path().join("fresh.bundle");
    site.build_tools(&fresh, "1.0.2", &fresh_bundle);
    let fresh_id = upload(app, &key, &state, &fresh_bundle);
    let staged = site.staging.join("staged").join(format!("{fresh_id}.bundle"));
    let mut bytes = std::fs::read(&staged).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x55;
    std::fs::write(&staged, bytes).unwrap();
    let err = fails(hangar_bundle_cmd(app, &key, &state, &["apply", &fresh_id]), "an altered staged bundle");
    assert!(err.contains("400") && err.contains(&fresh_id), "{err}");

    assert_eq!(files_under(&tools), before, "the tools area is as it was");
    assert!(files_under(&site.mirror).is_empty(), "the mirror is as it was");
    assert!(
        std::fs::read_dir(&tools).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with('.')),
        "no extraction left behind"
    );
}

async fn post(app: &common::Appliance, token: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = app.client.post(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_bundle_applied_is_installed_on_a_worker_host_by_hangar_worker_update() {
    let site = Site::new();
    let fleet = Fleet::start_with_server(FleetOptions::default(), &site.settings()).await;
    let key = api_key(&fleet.app, &fleet.admin, "ADMIN").await;
    let state = site.dir.subdir("client-state");
    let config_dir = fleet.join_worker("updates", "updated").await;

    // The worker host's binary: an older build, as far as its bytes go (an
    // ELF file runs with bytes appended).
    let real = cargo_bin("hangar-worker");
    let host_bin = site.dir.subdir("host-bin").join("hangar-worker");
    let mut old = std::fs::read(&real).unwrap();
    old.extend_from_slice(b"\nan older build\n");
    std::fs::write(&host_bin, &old).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let update = |args: &[&str]| {
        Command::new(&host_bin)
            .arg("update")
            .arg("--config-dir")
            .arg(&config_dir)
            .args(args)
            .env("HANGAR_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // Nothing applied yet: a clear failure, the binary untouched.
    let o = update(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/v1/tools/hangar-worker/latest/") && err.contains("404"), "{err}");
    assert_eq!(std::fs::read(&host_bin).unwrap(), old);

    // The worker bundle, with the worker host's own files beside the binary
    // (a stand-in for its Terraform).
    let bundle = site.dir.path().join("worker.bundle");
    let host_tool = site.dir.path().join("host-terraform");
    std::fs::write(&host_tool, "#!/bin/sh\n").unwrap();
    site.build_with_library(
        hangar_bundle::Kind::Worker,
        "9.9.9",
        &[("bin/hangar-worker", &real), ("tools/terraform/1.0.3/terraform", &host_tool)],
        &bundle,
    );
    let id = upload(&fleet.app, &key, &state, &bundle);

    // Applied from the console's System page, where it is listed once staged.
    let console = common::ConsoleSession::login(&fleet.app).await;
    let page = console.get("/admin/system").await;
    assert!(page.contains(&id) && page.contains("9.9.9") && page.contains("aria-label=\"Apply worker bundle 9.9.9\""), "{page}");
    assert!(page.contains("hangar bundle upload FILE --server"), "{page}");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    assert_eq!(console.post(&format!("/admin/bundles/{id}/apply"), &[("csrf", "forged")]).await, 403, "a forged form is refused");
    assert_eq!(console.post(&format!("/admin/bundles/{id}/apply"), &[("csrf", &csrf)]).await, 303);
    let page = console.get("/admin/system").await;
    assert!(page.contains(&format!("by {}", common::ADMIN_EMAIL)) && !page.contains("aria-label=\"Apply worker bundle"), "{page}");
    let listed = json_of(&hangar_bundle_cmd(&fleet.app, &key, &state, &["list"]), "list");
    assert!(listed[0]["applied"]["installed"] == json!(["bin/hangar-worker"]), "{listed}");
    assert_eq!(listed[0]["applied"]["skipped"], json!(["tools/terraform/1.0.3/terraform"]), "{listed}");

    // A version the appliance does not have.
    let o = update(&["--version", "1.2.3"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&host_bin).unwrap(), old);

    let o = update(&[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "update: {}", String::from_utf8_lossy(&o.stderr));
    let new = std::fs::read(&real).unwrap();
    assert!(out.contains("hangar-worker 9.9.9") && out.contains(&sha256_hex(&new)), "{out}");
    assert!(std::fs::read(&host_bin).unwrap() == new, "the binary is the bundle's");
    let v = Command::new(&host_bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("hangar-worker "), "it runs");
    assert!(
        std::fs::read_dir(host_bin.parent().unwrap()).unwrap().count() == 1,
        "no download left beside it"
    );

    // Up to date: said so, nothing written.
    let o = update(&[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("already"), "{}", String::from_utf8_lossy(&o.stdout));
}
