//! An upgrade killed with SIGKILL at each of its steps, forward and during a
//! rollback, then run again: the next `hangar-install upgrade` takes it up
//! from its record and completes it, or finishes rolling it back; never a mix
//! of two releases, never a database half-restored.

mod common;

use std::time::Duration;

use common::{Api, Site, both, bundle, bundle_of, check, cluster, current, error_line, records, state};
use nix::sys::signal::Signal;
use serde_json::json;

/// Starts `hangar-install upgrade ARGS` and kills it with SIGKILL `after`
/// its output shows `at`. Returns what it printed.
fn kill_upgrade_at(site: &Site, args: &[&str], at: &str, after: Duration) -> String {
    let mut cmd = site.command(&["upgrade"]);
    cmd.args(args).arg("--trust").arg(&site.trust);
    let (code, seen) = common::signal_at(cmd, at, after, Signal::SIGKILL);
    assert_eq!(code, None, "killed, not exited:\n{seen}");
    seen
}

/// The appliance is whole on `release`: `current`, the state, a ready status,
/// no upgrade unfinished, no database left over by a restore, the marker
/// context still there.
async fn whole_on(site: &Site, release: &str) {
    assert_eq!(current(site), release);
    assert_eq!(state(site)["release"], release);
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY") && !status.contains("UNFINISHED"), "{status}");
    let dbs = cluster(site).psql("postgres", "SELECT datname FROM pg_database ORDER BY 1", &[]).unwrap();
    assert!(!dbs.contains("restore"), "{dbs}");
    let api = Api::login(site).await;
    let d = api.ok("{ contexts { slug } }", json!({})).await;
    assert_eq!(d["contexts"][0]["slug"], "marker", "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_each_step_forward_the_next_run_completes_the_upgrade() {
    hangar_testkit::init();
    let built = bundle();
    let next = bundle_of(Some("0.2.0"));
    let first = env!("CARGO_PKG_VERSION");
    let site = Site::new("upgrade-killed", &built);
    check("install", site.install());
    Api::login(&site).await.ok("mutation { createContext(slug: \"marker\", name: \"Marker\") { slug } }", json!({})).await;

    // Back and forth between the two releases (the way back is a downgrade,
    // asked for), killed at another step each time: well into it, or at its
    // very first instruction (a `pg_ctl start` just begun, say).
    let steps = [
        ("release", 300),
        ("pre-checks", 300),
        ("backup", 300),
        ("switch", 300),
        ("migrate", 0),
        ("migrate", 300),
        // These two can pass within a few hundred milliseconds.
        ("start", 0),
        ("health", 0),
    ];
    for (i, (step, after)) in steps.into_iter().enumerate() {
        let (bundle, to, extra): (&std::path::Path, &str, &[&str]) =
            if i % 2 == 0 { (&next.bundle, "0.2.0", &[]) } else { (&built.bundle, first, &["--allow-downgrade"]) };
        let mut args = vec!["--bundle", bundle.to_str().unwrap()];
        args.extend_from_slice(extra);
        let seen = kill_upgrade_at(&site, &args, &format!("[..] {step}:"), Duration::from_millis(after));
        let rec = records(&site).pop().unwrap();
        assert_eq!(rec["outcome"], "running", "killed at {step}: {rec}\n{seen}");
        let status = site.command(&["status"]).output().unwrap();
        assert!(String::from_utf8_lossy(&status.stdout).contains("UNFINISHED"), "killed at {step}: {}", both(&status));
        // A plain install must not run over an unfinished upgrade.
        let install = site.install();
        assert_eq!(install.status.code(), Some(1), "{}", both(&install));
        assert!(error_line(&install).contains("is unfinished: run `hangar-install upgrade` to finish it first"));

        let out = site.command(&["upgrade"]).output().unwrap();
        let text = both(&out);
        assert!(out.status.success(), "the run after a kill at {step}:\n{text}\n(the killed one printed:\n{seen})");
        assert!(text.contains("Taking up the unfinished upgrade"), "{text}");
        assert!(text.contains(&format!("Hangar {to} is ready")), "{text}");
        whole_on(&site, to).await;
        let rec = records(&site).pop().unwrap();
        assert_eq!(rec["outcome"], "completed", "{rec}");
    }
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_a_rollback_the_next_run_finishes_rolling_back() {
    hangar_testkit::init();
    let built = bundle();
    let first = env!("CARGO_PKG_VERSION");
    let site = Site::new("upgrade-rollback-killed", &built);
    check("install", site.install());
    Api::login(&site).await.ok("mutation { createContext(slug: \"marker\", name: \"Marker\") { slug } }", json!({})).await;
    let broken_bin = common::profile_dir().join("hangar-failing-migration");
    let broken = common::variant(&built, site.dir.path(), "broken.bundle", "0.3.0", common::created_of(&built.bundle, &built.trust), |tree| {
        std::fs::copy(&broken_bin, tree.join("bin/hangar")).unwrap();
        common::set_release_info(tree, "0.3.0", "0.1.0");
    });
    let steps = [("stop", 300), ("switch back", 300), ("restore database", 0), ("restore database", 300), ("start", 0), ("health", 0)];
    for (step, after) in steps {
        let at = format!("[..] rollback: {step}:");
        let seen = kill_upgrade_at(&site, &["--bundle", broken.to_str().unwrap()], &at, Duration::from_millis(after));
        assert!(seen.contains("[!!] migrate:"), "{seen}");
        let out = site.command(&["upgrade"]).output().unwrap();
        let text = both(&out);
        assert_eq!(out.status.code(), Some(1), "the run after a kill in the rollback at {step}:\n{text}\n(the killed one printed:\n{seen})");
        assert!(text.contains("Taking up the unfinished upgrade"), "{text}");
        let line = error_line(&out);
        assert!(line.contains("failed at migrate") && line.contains(&format!("rolled back: release {first} runs again")), "{line}");
        whole_on(&site, first).await;
        let rec = records(&site).pop().unwrap();
        assert_eq!(rec["outcome"], "rolled-back", "{rec}");
    }
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}

/// The upgrade agent killed while the upgrade it started runs: the upgrade
/// goes on in its own process, its start step starts an agent again (the new
/// release's), and that agent reports how the upgrade asked for ended.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_agent_killed_mid_upgrade_leaves_the_upgrade_running_and_its_successor_reports_it() {
    hangar_testkit::init();
    let built = bundle();
    let next = bundle_of(Some("0.2.0"));
    let site = Site::new("agent-killed", &built);
    check("install", site.install());
    let api = Api::login(&site).await;
    api.ok("mutation { createContext(slug: \"marker\", name: \"Marker\") { slug } }", json!({})).await;
    // The server learns the test signing key.
    std::fs::copy(built.trust.join("dev.pub"), site.path("etc/hangar/trust/dev.pub")).unwrap();
    check("restart the server", common::ctl(&site, &["restart", "server"]));
    common::wait_ready(&site).await;
    let api = Api::login(&site).await;
    let key = common::admin_key(&api, "upgrades").await;
    let staged: serde_json::Value =
        serde_json::from_str(&check("upload", common::hangar_client(&site, &key, &["bundle", "upload", next.bundle.to_str().unwrap()]))).unwrap();
    let id = staged["id"].as_str().unwrap().to_string();
    let asked: serde_json::Value = serde_json::from_str(&check("upgrade", common::hangar_client(&site, &key, &["bundle", "upgrade", &id]))).unwrap();
    let request = asked["id"].as_str().unwrap().to_string();

    // Killed once it took the request and the upgrade it started has a
    // record (so: runs).
    let requests = site.path("var/lib/hangar/bundles/upgrades");
    let taken = requests.join(format!("{request}.taken.json"));
    let agents = site.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let under_way = || taken.exists() && records(&site).iter().any(|r| r["to"] == "0.2.0");
    for _ in 0..600 {
        if under_way() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(under_way(), "the agent never started the upgrade");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agents[0]), Signal::SIGKILL).unwrap();

    // The upgrade completes; a new agent reports it.
    let done = requests.join(format!("{request}.done.json"));
    let mut waited = 0;
    while !done.exists() {
        assert!(waited < 1800, "no report within 180 s; records: {:?}", records(&site));
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&done).unwrap()).unwrap();
    assert_eq!(report["outcome"], "completed", "{report}");
    let agents = site.agents();
    assert_eq!(agents.len(), 1, "one agent again: {agents:?}");
    assert!(site.agent_exe().unwrap().contains("/releases/0.2.0/"), "{:?}", site.agent_exe());
    whole_on(&site, "0.2.0").await;
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}
