//! The appliance and worker bundles, built from this repository by the documented
//! commands (with debug binaries), verify, inspect and extract; the extracted
//! PostgreSQL initialises and runs a cluster as an unprivileged user from its new
//! place, on the bundle's own libraries.
//!
//! Downloads come from the cache `bundles/prime-cache.sh` fills: the builds here
//! run with `--offline`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hangar-bundle");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo put our binaries for this test run (target/debug).
fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

fn check(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Builds the `hangar`, `hangar-worker` and `hangar-install` binaries next to
/// this test's `hangar-bundle`.
fn build_hangar() {
    let bins = bin_dir();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "-p",
            "hangar",
            "--bin",
            "hangar",
            "-p",
            "hangar-worker",
            "--bin",
            "hangar-worker",
            "-p",
            "hangar-install",
            "--bin",
            "hangar-install",
        ])
        .current_dir(repo());
    if bins.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    cargo.env("CARGO_TARGET_DIR", bins.parent().unwrap());
    check(
        "cargo build -p hangar -p hangar-worker -p hangar-install",
        cargo.output().unwrap(),
    );
}

struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    trust: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = common::open_tempdir();
        let base = dir.path().join("release-key");
        check(
            "keygen",
            Command::new(BIN)
                .args(["keygen", "--out"])
                .arg(&base)
                .output()
                .unwrap(),
        );
        let trust = dir.path().join("trust");
        fs::create_dir(&trust).unwrap();
        fs::copy(base.with_extension("pub"), trust.join("release.pub")).unwrap();
        Site {
            key: base.with_extension("key"),
            trust,
            dir,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `bundles/build-<which>.sh` offline with the debug binaries.
    fn build(&self, which: &str) -> PathBuf {
        let out = self.path(&format!("{which}.bundle"));
        let output = Command::new(repo().join(format!("bundles/build-{which}.sh")))
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--key")
            .arg(&self.key)
            .arg("--out")
            .arg(&out)
            .args(["--offline", "--compression-level", "3"])
            .output()
            .unwrap();
        check(&format!("build-{which}.sh"), output);
        out
    }

    fn cli_json(&self, args: &[&str], bundle: &Path) -> Value {
        let output = Command::new(BIN)
            .args(args)
            .arg(bundle)
            .arg("--trust")
            .arg(&self.trust)
            .arg("--json")
            .output()
            .unwrap();
        serde_json::from_str(&check(&format!("{args:?}"), output)).unwrap()
    }
}

fn paths(inspected: &Value) -> Vec<String> {
    inspected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_appliance_bundle_builds_verifies_extracts_and_its_postgres_runs_relocated() {
    build_hangar();
    let site = Site::new();
    let bundle = site.build("appliance");
    let version = env!("CARGO_PKG_VERSION");

    let verified = site.cli_json(&["verify"], &bundle);
    assert_eq!(verified["kind"], "appliance");
    assert_eq!(verified["version"], version);

    let inspected = site.cli_json(&["inspect"], &bundle);
    assert_eq!(inspected["platform"], "linux-x86_64");
    let paths = paths(&inspected);
    for expected in [
        "bin/hangar",
        "bin/hangar-worker",
        "bin/hangar-install",
        "embedded/postgres/usr/lib/postgresql/15/bin/postgres",
        "embedded/postgres/usr/lib/postgresql/15/bin/initdb",
        "embedded/postgres/usr/lib/postgresql/15/bin/pg_ctl",
        "embedded/postgres/usr/lib/postgresql/15/lib/plpgsql.so",
        "embedded/postgres/usr/share/postgresql/15/postgres.bki",
        "embedded/postgres/lib/libpq.so.5",
        "embedded/garage/garage",
        "tools/terraform/1.0.3/terraform",
        "tools/providers",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "the bundle lacks {expected}"
        );
    }
    assert!(
        !paths.iter().any(|p| p.contains("llvmjit")),
        "JIT is left out"
    );

    // Extract where the installer would: <prefix>/opt/hangar/releases/<version>.
    let prefix = site.path("prefix");
    let releases = prefix.join("opt/hangar/releases");
    fs::create_dir_all(&releases).unwrap();
    for dir in [
        prefix.as_path(),
        &prefix.join("opt"),
        &prefix.join("opt/hangar"),
        &releases,
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let release = releases.join(version);
    let output = Command::new(BIN)
        .arg("extract")
        .arg(&bundle)
        .arg("--into")
        .arg(&release)
        .arg("--trust")
        .arg(&site.trust)
        .args(["--platform", "linux-x86_64"])
        .output()
        .unwrap();
    check("extract", output);

    let terraform = Command::new(release.join("tools/terraform/1.0.3/terraform"))
        .arg("version")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(check("terraform version", terraform).starts_with("Terraform v1.0.3\n"));
    let garage = Command::new(release.join("embedded/garage/garage"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(check("garage --version", garage).contains("garage"));

    relocated_postgres_runs(&release, &site.path("pg"));
}

/// Initialises and starts a cluster with the extracted binaries, as an
/// unprivileged user, and checks it uses only the bundle's files and libraries
/// (besides the C library).
fn relocated_postgres_runs(release: &Path, work: &Path) {
    let pg = release.join("embedded/postgres");
    let bin = pg.join("usr/lib/postgresql/15/bin");
    let lib = pg.join("lib");
    let data = work.join("data");
    let sockets = work.join("run");
    for dir in [work, &data, &sockets] {
        fs::create_dir(dir).unwrap();
    }
    fs::set_permissions(work, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    let user = Unprivileged::new();
    user.own(&data);
    user.own(&sockets);

    let pg_cmd = |name: &str| {
        let mut c = Command::new(bin.join(name));
        c.env_clear()
            .env("LD_LIBRARY_PATH", &lib)
            .env("PATH", "/usr/bin:/bin")
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        user.apply(&mut c);
        c
    };

    let version = check(
        "postgres -V",
        pg_cmd("postgres").arg("-V").output().unwrap(),
    );
    assert!(
        version.starts_with("postgres (PostgreSQL) 15."),
        "{version}"
    );
    let sharedir = check(
        "pg_config",
        pg_cmd("pg_config").arg("--sharedir").output().unwrap(),
    );
    assert_eq!(
        Path::new(sharedir.trim()),
        pg.join("usr/share/postgresql/15")
    );

    check(
        "initdb",
        pg_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .unwrap(),
    );
    let options = format!("-k {} -c listen_addresses= -c jit=off", sockets.display());
    check(
        "pg_ctl start",
        pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(sockets.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap(),
    );
    let _stop = Stop {
        command: pg_cmd("pg_ctl"),
        data: data.clone(),
    };

    let sql = |query: &str| {
        check(
            query,
            pg_cmd("psql")
                .arg("-h")
                .arg(&sockets)
                .args(["-U", "postgres", "-At", "-c", query])
                .output()
                .unwrap(),
        )
    };
    assert!(sql("select version()").starts_with("PostgreSQL 15."));
    // An extension module from the relocated library directory, linking libcrypto.
    sql("create extension pgcrypto");
    assert_eq!(
        sql("select encode(digest('hangar', 'sha256'), 'hex')").trim(),
        hex::encode(common::sha256(b"hangar"))
    );

    let pid: u32 = fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut libraries: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .collect();
    libraries.sort();
    libraries.dedup();
    let release_prefix = release.to_str().unwrap();
    let foreign: Vec<&&str> = libraries
        .iter()
        .filter(|p| !p.starts_with(release_prefix))
        .filter(|p| {
            let name = Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            ![
                "ld-linux-x86-64.so.2",
                "libc.so.6",
                "libm.so.6",
                "libresolv.so.2",
            ]
            .contains(&name.as_str())
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "libraries from outside the bundle: {foreign:?}"
    );
    assert!(
        libraries
            .iter()
            .any(|p| p.ends_with("/embedded/postgres/lib/libssl.so.3")),
        "{libraries:?}"
    );
}

/// Stops the cluster however the test ends.
struct Stop {
    command: Command,
    data: PathBuf,
}

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self
            .command
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }
}

/// PostgreSQL refuses to run as root: when the tests are root, run it as nobody.
struct Unprivileged(Option<(u32, u32)>);

impl Unprivileged {
    fn new() -> Unprivileged {
        if !nix::unistd::geteuid().is_root() {
            return Unprivileged(None);
        }
        let user = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("a `nobody` user");
        Unprivileged(Some((user.uid.as_raw(), user.gid.as_raw())))
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn apply(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.0 {
            // std drops the supplementary groups too when it changes the uid as root.
            command.uid(uid).gid(gid);
        }
    }
}

#[test]
fn the_worker_bundle_builds_and_verifies() {
    build_hangar();
    let site = Site::new();
    let bundle = site.build("worker");
    let inspected = site.cli_json(&["inspect"], &bundle);
    assert_eq!(inspected["kind"], "worker");
    let paths = paths(&inspected);
    assert!(
        paths.iter().any(|p| p == "tools/terraform/1.0.3/terraform"),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| p == "bin/hangar-worker"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("embedded/")),
        "no server parts: {paths:?}"
    );
    let verified = site.cli_json(&["verify"], &bundle);
    assert_eq!(verified["ok"], true);
}
