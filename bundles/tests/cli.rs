//! The `hangar-bundle` binary, run as a user runs it: commands, exit codes
//! (0 ok, 1 failure, 2 usage), one-line errors, `--json`, key file rules.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hangar-bundle");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("HANGAR_LOG")
        .output()
        .expect("run hangar-bundle")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    // Not a terminal: no progress bars, nothing on stderr.
    assert_eq!(stderr(&o), "", "{args:?}");
    stdout(&o)
}

fn json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(&args)).unwrap()
}

/// Runs a command that must fail; returns its single error line.
fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(site.path("trust")).unwrap();
        fs::create_dir(site.path("src")).unwrap();
        fs::write(site.path("src/tool"), common::noise(1, 200_000)).unwrap();
        fs::write(site.path("src/conf"), "x = 1\n").unwrap();
        fs::write(
            site.path("recipe.toml"),
            "format = 1\nkind = \"tools\"\nversion = \"${version}\"\nplatform = \"linux-x86_64\"\n\
             [[source]]\ntype = \"tree\"\npath = \"src\"\ndest = \"tools\"\n",
        )
        .unwrap();
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A key whose public half the site trusts.
    fn trusted_key(&self, name: &str) -> PathBuf {
        ok(&["keygen", "--out", s(&self.path(name))]);
        fs::copy(
            self.path(&format!("{name}.pub")),
            self.path(&format!("trust/{name}.pub")),
        )
        .unwrap();
        self.path(&format!("{name}.key"))
    }
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &[][..],
        &["keygen"],
        &["build"],
        &["sign"],
        &["verify"],
        &["inspect"],
        &["extract"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = ok(&args);
        assert!(out.contains("Usage: hangar-bundle"), "{args:?}: {out}");
    }
    assert!(ok(&["extract", "--help"]).contains("--danger-allow-expired"));
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["build", "--out", "x"],
        &["build", "--recipe", "r", "--out", "x", "--var", "novalue"],
        &[
            "build",
            "--recipe",
            "r",
            "--out",
            "x",
            "--compression-level",
            "22",
        ],
        &["extract", "b.bundle"],
        &["verify", "b.bundle", "--installed-version", "not-semver"],
        &["sign", "b.bundle"],
    ] {
        assert_eq!(run(args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn keygen_build_verify_inspect_extract() {
    let site = Site::new();
    let key = site.trusted_key("release");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fails(&["keygen", "--out", s(&site.path("release"))]).contains("already exists"));

    let bundle = site.path("t.bundle");
    let built = json(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=3.1.4",
        "--key",
        s(&key),
    ]);
    assert_eq!(built["version"], "3.1.4");
    assert_eq!(built["files"], 2);
    let key_id = built["signed_by"][0].as_str().unwrap().to_owned();

    let trust = site.path("trust");
    let verified = json(&["verify", s(&bundle), "--trust", s(&trust)]);
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["bytes"], 200_006);
    assert_eq!(verified["signed_by"][0], key_id.as_str());

    let inspected = json(&["inspect", s(&bundle), "--trust", s(&trust)]);
    assert_eq!(inspected["kind"], "tools");
    assert_eq!(inspected["signatures"][0]["key_id"], key_id.as_str());
    assert_eq!(inspected["signatures"][0]["trusted"], true);
    let entries = inspected["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "tools/tool" && e["size"] == 200_000)
    );
    let text = ok(&["inspect", s(&bundle), "--trust", s(&trust)]);
    for needle in [
        "kind       tools",
        "version    3.1.4",
        &key_id,
        "tools/tool",
        "200000",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }

    let into = site.path("releases/3.1.4");
    fs::create_dir(site.path("releases")).unwrap();
    let extracted = json(&[
        "extract",
        s(&bundle),
        "--into",
        s(&into),
        "--trust",
        s(&trust),
    ]);
    assert_eq!(extracted["files"], 2);
    assert_eq!(
        fs::read(into.join("tools/tool")).unwrap(),
        common::noise(1, 200_000)
    );
    let err = fails(&[
        "extract",
        s(&bundle),
        "--into",
        s(&into),
        "--trust",
        s(&trust),
    ]);
    assert!(
        err.contains("already exists") && err.contains("3.1.4"),
        "{err}"
    );
}

#[test]
fn unsigned_bundles_are_signed_separately() {
    let site = Site::new();
    let key = site.trusted_key("release");
    let bundle = site.path("u.bundle");
    let out = ok(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=1.0.0",
    ]);
    assert!(out.contains("unsigned"), "{out}");
    let trust = site.path("trust");
    let err = fails(&["verify", s(&bundle), "--trust", s(&trust)]);
    assert!(err.contains("not signed"), "{err}");
    let signed = json(&["sign", s(&bundle), "--key", s(&key)]);
    assert_eq!(signed["ok"], true);
    json(&["verify", s(&bundle), "--trust", s(&trust)]);
}

#[test]
fn a_key_others_can_read_is_refused_before_building() {
    let site = Site::new();
    let key = site.trusted_key("release");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let bundle = site.path("t.bundle");
    let err = fails(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=1.0.0",
        "--key",
        s(&key),
    ]);
    assert!(err.contains("release.key") && err.contains("0600"), "{err}");
    assert!(!bundle.exists());
    let err = fails(&["sign", s(&bundle), "--key", s(&key)]);
    assert!(err.contains("0600"), "{err}");
}

#[test]
fn refusals_are_one_line_naming_the_entry_with_json_codes() {
    let site = Site::new();
    let trust = site.path("trust");
    let k = common::corpus::trusted_key();
    fs::write(trust.join("k.pub"), k.public_key().to_pem()).unwrap();
    let cases = common::corpus::hostile(&site.path("outside"));
    for (name, code, entry) in [
        ("symlink escaping", "not_regular_file", "\"bin/tool\""),
        ("extra entry", "not_in_manifest", "\"bin/evil\""),
        ("dot-dot entry", "unsafe_path", "\"../evil\""),
        ("tampered manifest", "bad_signature", "h.bundle"),
    ] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let bundle = site.path("h.bundle");
        fs::write(&bundle, &case.bundle).unwrap();
        let into = site.path("out");
        let err = fails(&[
            "extract",
            s(&bundle),
            "--into",
            s(&into),
            "--trust",
            s(&trust),
        ]);
        assert!(err.contains(entry), "{name}: {err}");
        assert!(!into.exists());
        let o = run(&["verify", s(&bundle), "--trust", s(&trust), "--json"]);
        assert_eq!(o.status.code(), Some(1));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], code, "{name}");
    }
}

#[test]
fn policy_flags_downgrade_and_expiry() {
    let site = Site::new();
    let trust = site.path("trust");
    let k = common::corpus::trusted_key();
    fs::write(trust.join("k.pub"), k.public_key().to_pem()).unwrap();
    let cases = common::corpus::hostile(&site.path("outside"));
    let get = |name: &str| cases.iter().find(|c| c.name == name).unwrap();

    let old = site.path("old.bundle");
    fs::write(&old, &get("downgrade").bundle).unwrap();
    let err = fails(&[
        "extract",
        s(&old),
        "--into",
        s(&site.path("a")),
        "--trust",
        s(&trust),
        "--installed-version",
        "1.0.0",
    ]);
    assert!(err.contains("older than the installed 1.0.0"), "{err}");
    ok(&[
        "extract",
        s(&old),
        "--into",
        s(&site.path("a")),
        "--trust",
        s(&trust),
        "--installed-version",
        "1.0.0",
        "--allow-downgrade",
    ]);

    let expired = site.path("expired.bundle");
    fs::write(&expired, &get("expired").bundle).unwrap();
    let err = fails(&["verify", s(&expired), "--trust", s(&trust)]);
    assert!(err.contains("expired"), "{err}");
    ok(&[
        "verify",
        s(&expired),
        "--trust",
        s(&trust),
        "--danger-allow-expired",
    ]);
}

#[test]
fn an_interrupted_extraction_removes_its_staging_directory() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::time::{Duration, Instant};

    let site = Site::new();
    // Big enough that the extraction is still writing when the signal comes.
    fs::write(site.path("src/big"), common::noise(5, 160 << 20)).unwrap();
    let key = site.trusted_key("release");
    let bundle = site.path("big.bundle");
    ok(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=1.0.0",
        "--compression-level",
        "1",
        "--key",
        s(&key),
    ]);
    let releases = site.path("releases");
    fs::create_dir(&releases).unwrap();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let into = releases.join("1.0.0");
        let mut child = Command::new(BIN)
            .args(["extract", s(&bundle), "--into", s(&into), "--trust"])
            .arg(site.path("trust"))
            .env_remove("HANGAR_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let staging = loop {
            let found = fs::read_dir(&releases)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().contains(".staging-"));
            if let Some(found) = found {
                break found;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{signal}: the extraction ended before the signal"
            );
            assert!(Instant::now() < deadline, "{signal}: no staging directory");
            std::thread::sleep(Duration::from_millis(1));
        };
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{signal}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.lines().count() == 1 && err.contains("interrupted") && err.contains("big.bundle"),
            "{signal}: {err}"
        );
        assert!(
            !staging.exists(),
            "{signal}: {} left behind",
            staging.display()
        );
        assert_eq!(
            fs::read_dir(&releases).unwrap().count(),
            0,
            "{signal}: something is left in {}",
            releases.display()
        );
    }
}

#[test]
fn a_full_disk_is_reported_with_its_reason_and_a_path_that_exists() {
    let site = Site::new();
    let key = site.trusted_key("release");
    let bundle = site.path("t.bundle");
    ok(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=1.0.0",
        "--key",
        s(&key),
    ]);
    // A 64 KiB filesystem of the extraction's own (a tmpfs in a private mount
    // namespace), too small for the 200 kB tool.
    let small = site.path("small");
    fs::create_dir(&small).unwrap();
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64k tmpfs "$1" || exit 99; exec "$2" extract "$3" --into "$1/release" --trust "$4""#)
        .args(["sh", s(&small), BIN, s(&bundle), s(&site.path("trust"))])
        .env_remove("HANGAR_LOG")
        .output()
        .expect("run unshare (util-linux)");
    let err = stderr(&o);
    assert_ne!(
        o.status.code(),
        Some(99),
        "this test mounts a tmpfs in a mount namespace of its own, which needs root: {err}"
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "the reason: {err}");
    assert!(err.contains("\"tools/tool\""), "the entry: {err}");
    // The directory named is the destination's parent, which is still there;
    // the staging directory inside it is not, and is not named.
    assert!(
        err.contains(&format!("in {}:", small.display())),
        "the directory: {err}"
    );
    assert!(!err.contains(".staging-"), "{err}");
}

#[test]
fn inspect_shows_invisible_characters_escaped() {
    let site = Site::new();
    for name in [
        "hangar\u{200b}",
        "tool\u{202e}txt.sh",
        "a\u{2066}b",
        "x\u{feff}",
    ] {
        fs::write(site.path("src").join(name), "x").unwrap();
    }
    let key = site.trusted_key("release");
    let bundle = site.path("t.bundle");
    ok(&[
        "build",
        "--recipe",
        s(&site.path("recipe.toml")),
        "--out",
        s(&bundle),
        "--var",
        "version=1.0.0",
        "--key",
        s(&key),
    ]);
    let text = ok(&["inspect", s(&bundle), "--trust", s(&site.path("trust"))]);
    for shown in [
        r"tools/hangar\u{200b}",
        r"tools/tool\u{202e}txt.sh",
        r"tools/a\u{2066}b",
        r"tools/x\u{feff}",
    ] {
        assert!(text.contains(shown), "{shown}: {text}");
    }
    for hidden in ['\u{200b}', '\u{202e}', '\u{2066}', '\u{feff}'] {
        assert!(
            !text.contains(hidden),
            "{hidden:?} printed as it is: {text}"
        );
    }
    // Ordinary names, quotes and accents included, are shown as they are.
    assert!(text.contains("tools/conf"), "{text}");
}

#[test]
fn the_error_line_carries_its_cause_and_the_log_the_chain() {
    let site = Site::new();
    let log = site.path("log");
    let missing = site.path("missing.bundle");
    let o = run(&[
        "--log-file",
        s(&log),
        "verify",
        s(&missing),
        "--trust",
        s(&site.path("trust")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    // Trust has no key yet: the error says so, and only that.
    assert_eq!(err.lines().count(), 1, "{err}");
    fs::write(
        site.path("trust/k.pub"),
        common::key(1).public_key().to_pem(),
    )
    .unwrap();
    let o = run(&[
        "--log-file",
        s(&log),
        "verify",
        s(&missing),
        "--trust",
        s(&site.path("trust")),
    ]);
    let err = stderr(&o);
    assert!(
        err.contains("cannot read bundle") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("No such file"), "{logged}");
}
