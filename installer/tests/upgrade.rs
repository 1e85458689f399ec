//! Upgrades on real installations, with two appliance bundles built from this
//! repository (`bundles/build-appliance.sh`, the second with `--version`):
//! the pre-checks refuse what must be refused and change nothing; an upgrade
//! backs up first, switches, migrates and passes the health gate, keeping the
//! previous release on disk and every piece of data; a release whose
//! migration fails on purpose is rolled back by itself to the running
//! release on the database as it was; and the history is in `status`, the
//! records and the audit trail.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use common::{Api, Site, both, bundle, bundle_of, check, cluster, current, error_line, records, state, upgrade};
use serde_json::json;

/// The version the second test bundle is built as.
const NEXT: &str = "0.2.0";

/// `etc/hangar`, `opt/hangar` and the backups, to compare before and after.
fn host_state(site: &Site) -> (BTreeMap<String, String>, BTreeMap<String, String>, Vec<String>) {
    let backups = fs::read_dir(site.path("var/lib/hangar/backups"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    (common::snapshot(&site.path("etc/hangar")), common::snapshot(&site.path("opt/hangar")), backups)
}

/// Builds a tools bundle with the shipped recipe, signed by the test key,
/// and uploads and applies it with `hangar bundle`: its files land in the
/// tools area, the service user's like the rest of it.
async fn apply_a_tools_bundle(site: &Site, api: &Api, tools: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let src = site.dir.path().join("tools-source");
    let archive = "providers/hangar.test/hangar/hangartest/terraform-provider-hangartest_0.1.0_linux_amd64.zip";
    for (path, text) in [("terraform/1.0.3-bundled/terraform", "#!/bin/sh\n"), (archive, "a provider archive")] {
        fs::create_dir_all(src.join(path).parent().unwrap()).unwrap();
        fs::write(src.join(path), text).unwrap();
    }
    let bins = common::profile_dir();
    let bundle = site.dir.path().join("tools.bundle");
    let recipe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/recipes/tools.toml");
    check(
        "hangar-bundle build",
        Command::new(bins.join("hangar-bundle"))
            .args(["build", "--recipe"])
            .arg(recipe)
            .arg("--var")
            .arg(format!("dir={}", src.display()))
            .args(["--var", "version=2026.12.7", "--key"])
            .arg(bins.join("hangar-install-tests/dev-key.key"))
            .arg("--out")
            .arg(&bundle)
            .output()
            .unwrap(),
    );
    let key = common::admin_key(api, "tools").await;
    let staged: serde_json::Value =
        serde_json::from_str(&check("hangar bundle upload", common::hangar_client(site, &key, &["bundle", "upload", bundle.to_str().unwrap()]))).unwrap();
    let id = staged["id"].as_str().unwrap();
    let applied: serde_json::Value = serde_json::from_str(&check("hangar bundle apply", common::hangar_client(site, &key, &["bundle", "apply", id]))).unwrap();
    assert_eq!(applied["installed"].as_array().map(Vec::len), Some(2), "{applied}");
    let owner = fs::metadata(tools).unwrap().uid();
    for f in [tools.join("terraform/1.0.3-bundled/terraform"), tools.join(archive)] {
        assert_eq!(fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).uid(), owner, "{}", f.display());
    }
}

/// What an administrator made before the upgrade, read back.
async fn data(api: &Api) -> serde_json::Value {
    api.ok(
        "{ me { email name } users { email role } contexts { slug name } workerPools { name } }",
        json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_backs_up_switches_and_keeps_everything_and_the_checks_refuse_what_they_must() {
    hangar_testkit::init();
    let built = bundle();
    let next = bundle_of(Some(NEXT));
    let version = env!("CARGO_PKG_VERSION");
    let site = Site::new("upgrade-e2e", &built);
    check("install", site.install());
    let api = Api::login(&site).await;
    api.ok(
        "mutation { createUser(email: \"dev@hangar.test\", name: \"Dev\", role: WRITER, password: \"Another-Passw0rd-Here\") { id } }",
        json!({}),
    )
    .await;
    api.ok("mutation { createContext(slug: \"shared\", name: \"Shared settings\") { slug } }", json!({})).await;
    api.ok("mutation { createWorkerPool(name: \"builders\") { id } }", json!({})).await;
    let before = data(&api).await;

    // The tools area is in the data directory, seeded from the release.
    let tools = site.path("var/lib/hangar/tools");
    let config_path = site.path("etc/hangar/hangar.toml");
    assert!(tools.join("terraform/1.0.3/terraform").is_file());
    assert!(tools.join(format!("hangar-worker/{version}/hangar-worker")).is_file());
    let config = fs::read_to_string(&config_path).unwrap();
    let in_data = [format!("tools_dir = \"{}\"\n", tools.display()), format!("provider_mirror_dir = \"{}/providers\"\n", tools.display())];
    assert!(in_data.iter().all(|l| config.contains(l.as_str())), "{config}");
    // As an earlier installer left it, with the tools inside the release,
    // and a version a tools bundle added since.
    let release_tools = site.path("opt/hangar/current/tools");
    let in_release =
        [format!("tools_dir = \"{}\"\n", release_tools.display()), format!("provider_mirror_dir = \"{}/providers\"\n", release_tools.display())];
    fs::write(&config_path, config.replace(&in_data[0], &in_release[0]).replace(&in_data[1], &in_release[1])).unwrap();
    let added = tools.join("terraform/1.0.3-added/terraform");
    fs::create_dir_all(added.parent().unwrap()).unwrap();
    fs::write(&added, "#!/bin/sh\n").unwrap();
    // The site signs tools bundles with the test key.
    fs::copy(built.trust.join("dev.pub"), site.path("etc/hangar/trust/dev.pub")).unwrap();

    // Refusals: each names its check, and the appliance is as it was.
    let dir = site.dir.path().to_path_buf();
    let created = common::created_of(&built.bundle, &built.trust);
    let refused = |bundle: &std::path::Path, args: &[&str], check_name: &str, needles: &[&str]| {
        let before = host_state(&site);
        let out = upgrade(&site, bundle, args);
        assert_eq!(out.status.code(), Some(1), "{}", both(&out));
        let line = error_line(&out);
        assert!(line.contains(&format!("refused by the pre-check \"{check_name}\"")), "{line}");
        for n in needles {
            assert!(line.contains(n), "{n:?} in: {line}");
        }
        assert!(before == host_state(&site), "the host changed after: {line}");
        assert_eq!(current(&site), version);
        line
    };
    refused(&built.bundle, &[], "version", &[&format!("release {version} is the installed one")]);
    let far = common::variant(&built, &dir, "far.bundle", "0.5.0", created, |tree| common::set_release_info(tree, "0.5.0", "0.3.0"));
    refused(&far, &[], "upgrade path", &["upgrade to 0.3.0 first, then to 0.5.0", &format!("this host has {version}")]);
    let older = common::variant(&built, &dir, "older.bundle", "0.0.9", created, |tree| common::set_release_info(tree, "0.0.9", "0.0.1"));
    refused(&older, &[], "version", &["0.0.9 is older than the installed", "--allow-downgrade"]);
    check("stop the drain", common::ctl(&site, &["stop", "drain"]));
    refused(&next.bundle, &[], "services", &["not every service is ready", "drain stopped"]);
    check("start the drain", common::ctl(&site, &["start", "drain"]));
    let records_before = records(&site);
    assert_eq!(records_before.len(), 4, "{records_before:?}");
    assert!(records_before.iter().all(|r| r["outcome"] == "refused"), "{records_before:?}");

    // The upgrade, asked for through the API as an administrator would from
    // any machine: the bundle uploaded and the upgrade asked for with
    // `hangar`; the installer's upgrade agent carries it out. The server
    // reads the trusted keys at start: it learns the test key first.
    check("restart the server", common::ctl(&site, &["restart", "server"]));
    common::wait_ready(&site).await;
    let api = Api::login(&site).await;
    let key = common::admin_key(&api, "upgrades").await;
    let hangar = |args: &[&str]| common::hangar_client(&site, &key, args);
    // As the audit trail names an API key's holder.
    let asker = format!("{} (API key upgrades)", common::ADMIN_EMAIL);
    let staged: serde_json::Value = serde_json::from_str(&check("upload", hangar(&["bundle", "upload", next.bundle.to_str().unwrap()]))).unwrap();
    assert_eq!((staged["kind"].as_str(), staged["version"].as_str()), (Some("appliance"), Some(NEXT)), "{staged}");
    let id = staged["id"].as_str().unwrap().to_string();
    // Applying a release to the tools area is refused.
    let out = hangar(&["bundle", "apply", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let out = hangar(&["bundle", "upgrade", &id, "--wait"]);
    let end: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("{e}: {}", both(&out)));
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!((end["state"].as_str(), end["version"].as_str(), end["requested_by"].as_str()), (Some("completed"), Some(NEXT), Some(asker.as_str())), "{end}");
    assert!(end["message"].as_str().unwrap().contains(&format!("Hangar {NEXT} runs: upgraded from {version}")), "{end}");
    // What the upgrade printed, in its log on the host.
    let text = fs::read_to_string(end["log"].as_str().unwrap()).unwrap();
    for c in ["signature and trust root", "kind and platform", "contents", "version", "upgrade path", "database format", "free disk", "services", "runs applying"] {
        assert!(text.contains(&format!("[ok] {c}:")), "{c} in:\n{text}");
    }
    assert!(text.contains("handing over to the installer of release 0.2.0"), "{text}");
    for step in ["pre-checks", "release", "backup", "switch", "migrate", "start", "health"] {
        assert!(text.contains(&format!("[ok] {step}:")), "{step} in:\n{text}");
    }
    assert!(text.contains(&format!("Hangar {NEXT} is ready: upgraded from {version}")), "{text}");
    assert!(!site.path("var/lib/hangar/upgrades/incoming").read_dir().unwrap().any(|_| true), "the bundle's copy is removed");
    // The agent is the new release's now.
    let agent = (0..50)
        .find_map(|_| {
            let found = site.agent_exe().filter(|exe| exe.contains(&format!("/releases/{NEXT}/")));
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            found
        })
        .unwrap_or_else(|| panic!("the agent runs {:?}", site.agent_exe()));
    assert!(agent.ends_with("bin/hangar-install"), "{agent}");
    assert_eq!(current(&site), NEXT);
    assert!(site.path(&format!("opt/hangar/releases/{version}/bin/hangar")).is_file(), "the previous release stays");
    let st = state(&site);
    assert_eq!((st["release"].as_str(), st["previous_release"].as_str()), (Some(NEXT), Some(version)), "{st}");

    // Every piece of data is still there, through the new release.
    let api = Api::login(&site).await;
    assert_eq!(data(&api).await, before);

    // Requests the server did not write (the service user's directory is
    // not to be trusted) are refused by the agent with their reason, and
    // change nothing: a link where the staged release should be, and bytes
    // other than those the server verified.
    let requests = site.path("var/lib/hangar/bundles/upgrades");
    let staged_dir = site.path("var/lib/hangar/bundles/staged");
    let (linked, altered) = ("a".repeat(32), "c".repeat(32));
    std::os::unix::fs::symlink(&next.bundle, staged_dir.join(format!("{linked}.bundle"))).unwrap();
    fs::write(staged_dir.join(format!("{altered}.bundle")), b"not what was verified").unwrap();
    for (req, bundle) in [("b".repeat(32), &linked), ("d".repeat(32), &altered)] {
        let body = json!({ "id": req, "bundle": bundle, "sha256": "0".repeat(64), "version": "9.9.9",
                           "requested_by": "mallory", "requested_at": "2026-12-07T00:00:00Z" });
        fs::write(requests.join(format!("{req}.request.json")), body.to_string()).unwrap();
    }
    fs::write(requests.join(format!("{}.request.json", "e".repeat(32))), "{ not json").unwrap();
    let done = |req: &str| -> serde_json::Value {
        let path = requests.join(format!("{req}.done.json"));
        for _ in 0..100 {
            if let Ok(text) = fs::read_to_string(&path) {
                return serde_json::from_str(&text).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the agent did not answer {}", path.display());
    };
    let refused = done(&"b".repeat(32));
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains(&format!("cannot read staged bundle {linked}")), "{refused}");
    let refused = done(&"d".repeat(32));
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("changed since it was verified"), "{refused}");
    assert!(!requests.join(format!("{}.taken.json", "b".repeat(32))).exists(), "never taken");
    assert!(!requests.join(format!("{}.done.json", "e".repeat(32))).exists(), "garbage is not a request");
    assert_eq!(current(&site), NEXT);
    assert_eq!(records(&site).len(), records_before.len() + 1, "no upgrade was tried");

    // tools and what was added.
    let config = fs::read_to_string(&config_path).unwrap();
    assert!(in_data.iter().all(|l| config.contains(l.as_str())), "{config}");
    assert!(text.contains("the configuration now points at it"), "{text}");
    assert!(added.is_file(), "a version added to the tools area stays");
    for v in [version, NEXT] {
        assert!(tools.join(format!("hangar-worker/{v}/hangar-worker")).is_file(), "{v}'s worker");
    }

    // The upgraded appliance's server (the service user) applies a tools
    // bundle to the tools area.
    apply_a_tools_bundle(&site, &api, &tools).await;

    // The backup: a manifest whose checksums hold, the database dump and the keys.
    let recs = records(&site);
    let rec = recs.last().unwrap();
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!((rec["from"].as_str(), rec["to"].as_str()), (Some(version), Some(NEXT)));
    assert!(rec["downtime_secs"].as_f64().unwrap() > 0.0, "{rec}");
    assert!(rec["audited"].as_bool().unwrap(), "{rec}");
    let backup_id = rec["backup"].as_str().unwrap();
    let backup = site.path(&format!("var/lib/hangar/backups/{backup_id}"));
    let sums = Command::new("sha256sum").arg("-c").arg("--quiet").arg("SHA256SUMS").current_dir(&backup).output().unwrap();
    assert!(sums.status.success(), "{}", both(&sums));
    let manifest: serde_json::Value = serde_json::from_str(&fs::read_to_string(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["release"], version);
    assert_eq!(manifest["reason"], format!("before the upgrade from {version} to {NEXT}"));
    let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for f in ["database.dump", "objects.txt", "files/hangar.toml", "files/secrets/master.key", "files/pki/ca.key", "files/install-state.json"] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }
    assert!(!manifest["migrations"].as_array().unwrap().is_empty());
    let mode = fs::metadata(backup.join("files/secrets/master.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);

    // The history: in status, and in the audit trail.
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY"), "{status}");
    assert!(status.contains(&format!("upgrade {version} -> {NEXT}  completed  by {asker}")), "{status}");
    assert!(status.contains("upgrade agent   running (pid"), "{status}");
    // And on the console's System page, with the upgrade asked for.
    let page = common::console_page(&site, "/admin/system").await;
    let history = page.split_once("id=\"upgrades-h\"").map(|(_, h)| h).unwrap_or_else(|| panic!("no history in:\n{page}"));
    assert!(history.contains(&format!("<span class=\"mono\">{version}</span> → <span class=\"mono\">{NEXT}</span>")), "{history}");
    assert!(history.contains(">completed</span>") && history.contains(&format!("backup <span class=\"mono\">{backup_id}</span>")), "{history}");
    assert!(history.contains("pre-checks ") && history.contains("health "), "{history}");
    assert!(page.contains(&format!("asked by {asker}")) && !page.contains("aria-label=\"Upgrade the appliance to"), "{page}");
    assert!(status.contains("steps: pre-checks"), "{status}");
    assert!(status.contains(&format!("backup {backup_id}")), "{status}");
    let api = Api::login(&site).await;
    let asked = api.ok("{ auditEvents(action: \"appliance.upgrade_requested\") { items { actor target } } }", json!({})).await;
    assert_eq!(asked["auditEvents"]["items"][0]["actor"], asker, "{asked}");
    let audit = api.ok("{ auditEvents(action: \"appliance.upgrade\") { items { actor action target details } } }", json!({})).await;
    let items = audit["auditEvents"]["items"].as_array().unwrap();
    let done = items.iter().find(|i| i["target"] == format!("release:{NEXT}") && i["details"]["outcome"] == "completed");
    assert!(done.is_some(), "{audit}");
    assert!(items.iter().filter(|i| i["details"]["outcome"] == "refused").count() >= 4, "{audit}");

    // The same upgrade again: nothing to do.
    let out = upgrade(&site, &next.bundle, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains(&format!("release {NEXT} is the installed one")), "{}", both(&out));
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_whose_migration_fails_is_rolled_back_to_the_running_one_on_its_data() {
    hangar_testkit::init();
    let built = bundle();
    let version = env!("CARGO_PKG_VERSION");
    let site = Site::new("upgrade-rollback", &built);
    check("install", site.install());
    let api = Api::login(&site).await;
    api.ok("mutation { createContext(slug: \"kept\", name: \"Kept through a rollback\") { slug } }", json!({})).await;
    let before = data(&api).await;
    let migrations_before = cluster(&site).query("SELECT version FROM __diesel_schema_migrations ORDER BY version").unwrap();

    let broken_bin = common::profile_dir().join("hangar-failing-migration");
    let broken = common::variant(&built, site.dir.path(), "broken.bundle", "0.3.0", common::created_of(&built.bundle, &built.trust), |tree| {
        fs::copy(&broken_bin, tree.join("bin/hangar")).unwrap();
        common::set_release_info(tree, "0.3.0", "0.1.0");
    });
    let out = upgrade(&site, &broken, &[]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = error_line(&out);
    assert!(line.contains("the upgrade to 0.3.0 failed at migrate"), "{line}");
    assert!(line.contains("a deliberately failing migration of the test release"), "{line}");
    assert!(line.contains(&format!("rolled back: release {version} runs again, the database restored from backup")), "{line}");
    assert!(line.contains("passed the health gate"), "{line}");
    for step in ["stop", "switch back", "restore database", "start", "health"] {
        assert!(text.contains(&format!("[ok] rollback: {step}:")), "{step} in:\n{text}");
    }

    // The first release runs, on its data as it was before the upgrade.
    assert_eq!(current(&site), version);
    assert_eq!(state(&site)["release"], version);
    assert!(site.path("opt/hangar/releases/0.3.0").is_dir(), "the failed release stays for a look");
    let pg = cluster(&site);
    assert_eq!(pg.query("SELECT version FROM __diesel_schema_migrations ORDER BY version").unwrap(), migrations_before);
    assert_eq!(
        pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'upgrade_probe'").unwrap().trim(),
        "0",
        "the successful migration of the failed release was undone"
    );
    let api = Api::login(&site).await;
    assert_eq!(data(&api).await, before);
    assert_eq!(before["me"]["name"], "Administrator");
    // The console's System page shows what the supervisor runs again: every
    // service ready, with the pid of a live process.
    let services = common::console_services(&site).await;
    for name in ["postgres", "garage", "objects-tls", "server", "drain", "scheduler"] {
        let s = services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} on the System page: {services:?}"));
        assert_eq!(s.state, "ready", "{s:?}");
        let pid: u32 = s.pid.parse().unwrap_or_else(|_| panic!("a pid for {s:?}"));
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "{s:?} is not a live process");
    }
    let page = common::console_page(&site, "/admin/system").await;
    let history = page.split_once("id=\"upgrades-h\"").map(|(_, h)| h).unwrap_or_else(|| panic!("no history in:\n{page}"));
    assert!(history.contains(">rolled back</span>") && history.contains("a deliberately failing migration"), "{history}");
    assert!(history.contains("migrate failed after") && history.contains("rollback: restore database "), "{history}");
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY"), "{status}");
    assert!(status.contains(&format!("upgrade {version} -> 0.3.0  rolled back")), "{status}");
    assert!(status.contains("failed at migrate:"), "{status}");
    assert!(status.contains("rollback: restore database"), "{status}");
    let rec = records(&site).pop().unwrap();
    assert_eq!(rec["outcome"], "rolled-back", "{rec}");
    assert!(rec["database_changed"].as_bool().unwrap());
    assert!(rec["audited"].as_bool().unwrap());
    let audit = api.ok("{ auditEvents(first: 10) { items { action target details } } }", json!({})).await;
    let actions: Vec<(&str, &str)> = audit["auditEvents"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["action"].as_str().unwrap(), i["target"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("appliance.upgrade", "release:0.3.0")), "{actions:?}");
    assert!(actions.contains(&("appliance.rollback", &*format!("release:{version}"))), "{actions:?}");

    // Nothing is left unfinished: an install run (a repair) goes through.
    let again = check("a repair after the rollback", site.install());
    assert!(again.contains("is ready"), "{again}");
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}
