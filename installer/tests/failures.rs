//! What the installer refuses, and what it leaves behind when it is stopped:
//! mistakes in the answers file, too little free disk, a port already taken
//! and wrong external S3 credentials are refused before anything on the host
//! changes; a bundle
//! whose payload is bad, a downgrade and a replayed bundle of an installed
//! version leave the host exactly as it was; an installer interrupted (SIGINT)
//! or killed (SIGKILL) in the middle of provisioning leaves a host that the
//! next run finishes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Site, bundle, check, error_line};
use nix::sys::signal::Signal;

/// Runs the install and expects a refusal whose one line contains `expected`,
/// with nothing written under the prefix.
fn refused_before_anything_changes(site: &Site, expected: &str) -> String {
    let out = site.install();
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = error_line(&out);
    assert!(line.starts_with("hangar-install: error: "), "{line}");
    assert!(line.contains(expected), "expected {expected:?} in: {line}");
    assert_eq!(site.files(), Vec::<String>::new(), "the prefix was changed ({line})");
    line
}

#[test]
fn answers_file_mistakes_are_refused_before_anything_changes() {
    let built = bundle();
    let mut site = Site::new("install-answers", &built);

    site.remove("hostname");
    let line = refused_before_anything_changes(&site, "missing key `hostname`");
    assert!(line.contains(&site.answers.display().to_string()), "{line}");
    site.set("hostname", "localhost");

    site.set("hostnme", "typo.example");
    refused_before_anything_changes(&site, "unknown key `hostnme`");
    site.remove("hostnme");

    for (key, value, expected) in [
        ("server_port", toml::Value::from("http"), "invalid `server_port`: \"http\" is not a port"),
        ("server_port", toml::Value::from(0), "invalid `server_port`: \"0\" is not a port"),
        ("broker_port", toml::Value::from(i64::from(site.ports.server)), "is already chosen for another service"),
        ("hostname", toml::Value::from("bad_host!"), "invalid `hostname`"),
        ("addresses", toml::Value::from("10.0.0.300"), "invalid `addresses`: \"10.0.0.300\" is not an IP address"),
        ("data_dir", toml::Value::from("var/lib/hangar"), "invalid `data_dir`"),
        ("admin_email", toml::Value::from("not-an-address"), "invalid `admin_email`"),
        ("admin_password", toml::Value::from("short"), "invalid `admin_password`: password is too weak: use at least 12 characters"),
        ("object_store", toml::Value::from("ceph"), "invalid `object_store`: \"ceph\" is not one of bundled, external"),
        ("tls", toml::Value::from(true), "invalid `tls`: must be a string"),
        ("confirm", toml::Value::from("yes"), "invalid `confirm`: must be true or false"),
        ("bundle", toml::Value::from("/nonexistent/appliance.bundle"), "invalid `bundle`"),
    ] {
        let before = site.keys.get(key).cloned().unwrap();
        site.set(key, value);
        let line = refused_before_anything_changes(&site, expected);
        assert!(!line.contains("Install-Passw0rd"), "{line}");
        site.set(key, before);
    }

    site.set("confirm", false);
    refused_before_anything_changes(&site, "not confirmed; nothing was changed");
    site.set("confirm", true);

    // The file holds the administrator's password: only its owner may read it.
    fs::set_permissions(&site.answers, fs::Permissions::from_mode(0o644)).unwrap();
    refused_before_anything_changes(&site, "must not be readable by group or others");
    fs::set_permissions(&site.answers, fs::Permissions::from_mode(0o600)).unwrap();

    fs::write(&site.answers, "hostname = [unclosed\n").unwrap();
    fs::set_permissions(&site.answers, fs::Permissions::from_mode(0o600)).unwrap();
    refused_before_anything_changes(&site, "answers file");
}

/// A small file system mounted (tmpfs) on a directory until dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        check(
            "mount a small tmpfs",
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=755"), "tmpfs"]).arg(dir).output().unwrap(),
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

/// A prefix on a 64 MiB file system is refused by the disk check, which says
/// how much is free and the minimum, with nothing written. Ignored with
/// `--ignore-preflight disk`, the check is shown as a warning and the install
/// goes on (here to the answers, refused for a missing bundle). The checks
/// nothing would work without cannot be ignored.
#[test]
fn too_little_disk_is_refused_unless_the_check_is_ignored() {
    let built = bundle();
    let mut site = Site::new("install-disk", &built);
    let _small = SmallDisk::mount(&site.prefix, "64m");
    let strict = || site.command(&["--answers"]).arg(&site.answers).arg("--trust").arg(&site.trust).output().unwrap();

    let out = strict();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let line = error_line(&out);
    let expected = format!("hangar-install: error: preflight: disk: 64 MiB free under {}, need at least 4096 MiB", site.prefix.display());
    assert_eq!(line, expected);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[!!] disk: 64 MiB free"), "{stdout}");
    assert!(stdout.contains("[ok] memory: "), "every check is shown: {stdout}");
    assert_eq!(site.files(), Vec::<String>::new());

    site.set("bundle", "/nonexistent/appliance.bundle");
    let out = site.install();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[--] disk: 64 MiB free") && stdout.contains("need at least 4096 MiB (ignored: --ignore-preflight disk)"), "{stdout}");
    assert!(error_line(&out).contains("invalid `bundle`"), "past the preflight: {}", error_line(&out));
    assert_eq!(site.files(), Vec::<String>::new());

    for check in ["privileges", "platform", "nonsense"] {
        let out = site.command(&["--answers"]).arg(&site.answers).args(["--ignore-preflight", check]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{check}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("invalid value '{check}' for '--ignore-preflight <CHECK>'")) && stderr.contains("processors, memory, disk, clock"), "{stderr}");
    }
}

#[test]
fn a_port_already_taken_is_refused_before_anything_changes() {
    let built = bundle();
    let site = Site::new("install-port", &built);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", site.ports.database)).unwrap();
    refused_before_anything_changes(&site, &format!("invalid `database_port`: port {} is already in use", site.ports.database));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_external_s3_credentials_are_refused_before_anything_changes() {
    let built = bundle();
    let garage = hangar_testkit::Garage::start().await;
    let mut site = Site::new("install-s3", &built);
    site.set("object_store", "external");
    site.set("s3_endpoint", garage.endpoint());
    site.set("s3_region", hangar_testkit::garage::REGION);
    site.set("s3_bucket", garage.bucket.clone());
    site.set("s3_access_key", garage.access_key.clone());
    site.set("s3_secret_key", "0".repeat(64));
    site.set("s3_ca_file", "");
    site.set("s3_danger_plain_http", true);
    let line = refused_before_anything_changes(&site, &format!("object store {}", garage.endpoint()));
    assert!(!line.contains(&"0".repeat(64)), "{line}");

    // With the right secret the check passes and the questions go on (to the
    // next missing key): the refusal above was the credential's.
    site.set("s3_secret_key", garage.secret_key.clone());
    site.remove("tls");
    refused_before_anything_changes(&site, "missing key `tls`");
}

#[test]
fn a_tampered_bundle_is_refused_and_nothing_is_unpacked() {
    let built = bundle();
    let mut site = Site::new("install-tampered", &built);
    let copy = site.dir.path().join("tampered.bundle");
    let mut bytes = fs::read(&built.bundle).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x40;
    fs::write(&copy, &bytes).unwrap();
    site.set("bundle", copy.display().to_string());
    let out = site.install();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let line = error_line(&out);
    assert!(line.contains(&copy.display().to_string()), "{line}");
    // The signature and the policy passed, the payload did not: the host is as
    // it was, with no state file naming the refused release.
    assert_eq!(site.files(), Vec::<String>::new(), "the prefix was changed ({line})");
}

/// `etc/hangar` and `opt/hangar` of `site`, to compare before and after.
fn host_state(site: &Site) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (common::snapshot(&site.path("etc/hangar")), common::snapshot(&site.path("opt/hangar")))
}

#[test]
fn refused_bundles_leave_an_installed_host_as_it_was() {
    let built = bundle();
    let mut site = Site::new("install-refusals", &built);
    check("install", site.install());
    let version = env!("CARGO_PKG_VERSION");
    let created = common::created_of(&built.bundle, &built.trust);
    let dir = site.dir.path().to_path_buf();
    let refuse = |site: &mut Site, bundle: &std::path::Path, expected: &[&str]| {
        site.set("bundle", bundle.display().to_string());
        let before = host_state(site);
        let out = site.install();
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        let line = error_line(&out);
        for needle in expected {
            assert!(line.contains(needle), "{needle:?} in: {line}");
        }
        assert!(before == host_state(site), "the host changed after: {line}");
    };

    // An upgrade whose signature and policy pass but whose payload is bad.
    let newer = common::variant(&built, &dir, "newer.bundle", "99.0.0", created, |_| {});
    let mut bytes = fs::read(&newer).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x40;
    fs::write(&newer, &bytes).unwrap();
    refuse(&mut site, &newer, &["newer.bundle"]);

    // Another signed bundle of the installed version, older and with other
    // contents; and the same version with build metadata.
    let note = |tree: &std::path::Path| fs::write(tree.join("bin/NOTE"), "a rebuild\n").unwrap();
    let rebuilt = common::variant(&built, &dir, "rebuilt.bundle", version, created - chrono::Duration::days(30), note);
    refuse(&mut site, &rebuilt, &["rebuilt.bundle", &format!("release {version} is installed from another bundle"), "--danger-replace-release"]);
    let tagged_version = format!("{version}+rebuild");
    let tagged = common::variant(&built, &dir, "tagged.bundle", &tagged_version, created, note);
    refuse(&mut site, &tagged, &["tagged.bundle", &tagged_version, "--danger-replace-release"]);
    assert!(!site.path(&format!("opt/hangar/releases/{version}/bin/NOTE")).exists());

    // Asked for explicitly (development builds), the rebuild replaces the release.
    site.set("bundle", rebuilt.display().to_string());
    let out = check("an explicit replacement", site.install_command().arg("--danger-replace-release").output().unwrap());
    assert!(out.contains("is ready") && !out.contains("already unpacked"), "{out}");
    assert_eq!(fs::read_to_string(site.path(&format!("opt/hangar/releases/{version}/bin/NOTE"))).unwrap(), "a rebuild\n");

    // An unfinished installation: an older bundle is a downgrade all the same,
    // refused before anything is written, the state kept as it is.
    let state_file = site.path("etc/hangar/install-state.json");
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
    state["ready_at"] = serde_json::Value::Null;
    fs::write(&state_file, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let older = common::variant(&built, &dir, "older.bundle", "0.0.9", created, |_| {});
    refuse(&mut site, &older, &["older.bundle", "0.0.9", &format!("older than the installed {version}")]);
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
}

/// Starts an install and stops it with `signal` once its output shows `at`.
fn stop_install_at(site: &Site, at: &str, signal: Signal) -> (Option<i32>, String) {
    common::signal_at(site.install_command(), at, Duration::from_millis(200), signal)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_or_killed_install_leaves_a_host_the_next_run_finishes() {
    let built = bundle();
    let site = Site::new("install-killed", &built);

    // Ctrl-C while the bundle is unpacked: the step completes, the run stops
    // with a clear message, the release is whole.
    let (code, out) = stop_install_at(&site, "[..] release", Signal::SIGINT);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("interrupted during"), "{out}");
    assert!(out.contains("run the installer again"), "{out}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(site.path(&format!("opt/hangar/releases/{version}/bin/hangar")).is_file());
    let hidden: Vec<String> = fs::read_dir(site.path("opt/hangar/releases")).unwrap().flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect();
    assert!(hidden.is_empty(), "staging left: {hidden:?}");

    // SIGKILL while the database is being made: the next run finishes it.
    let (code, out) = stop_install_at(&site, "[..] database", Signal::SIGKILL);
    assert_eq!(code, None, "killed: {out}");
    assert!(!site.path("etc/hangar/hangar.toml.tmp").exists());
    let state: serde_json::Value = serde_json::from_str(&fs::read_to_string(site.path("etc/hangar/install-state.json")).unwrap()).unwrap();
    let completed: Vec<&str> = state["completed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(completed.last(), Some(&"configuration"), "{state}");
    assert!(state["ready_at"].is_null(), "{state}");
    // The configuration written before the kill is whole and valid.
    let config = site.path("etc/hangar/hangar.toml");
    hangar_config::Config::from_file(&config).unwrap();
    let status = site.command(&["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("unfinished"));

    let out = check("the run after the kill", site.install());
    assert!(out.contains("is ready"), "{out}");
    assert!(out.contains("already unpacked"), "{out}");
    assert!(!site.path("var/lib/hangar/.postgres.init").exists());
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY"), "{status}");
    let http = common::client(&site.ca());
    let ready = http.get(format!("https://localhost:{}/ready", site.ports.server)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    check("uninstall", site.command(&["uninstall"]).output().unwrap());
    assert_eq!(site.processes(), Vec::<(i32, String)>::new());
}

#[test]
fn a_bundle_older_than_the_installed_release_is_refused_unless_allowed() {
    let built = bundle();
    let mut site = Site::new("install-downgrade", &built);
    check("install", site.install());
    // The installed release, as the state file records it, is newer than the bundle.
    let state_file = site.path("etc/hangar/install-state.json");
    let mut state: serde_json::Value = serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
    state["release"] = "9.9.9".into();
    fs::write(&state_file, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let config = fs::read(site.path("etc/hangar/hangar.toml")).unwrap();

    let out = site.install();
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("9.9.9") && line.contains(env!("CARGO_PKG_VERSION")), "{line}");
    assert_eq!(fs::read(site.path("etc/hangar/hangar.toml")).unwrap(), config, "nothing changed");
    assert!(fs::read_to_string(&state_file).unwrap().contains("9.9.9"));

    site.set("allow_downgrade", true);
    let out = check("an allowed downgrade", site.install());
    assert!(out.contains("is ready"), "{out}");
}
