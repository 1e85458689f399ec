//! Hangar's own binaries as separate processes: locating (and building, once per
//! test run) the workspace binaries, and a child-process handle that logs to a
//! file, kills its whole process group and never leaves a zombie.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The directory holding the binaries of the profile the tests were built with.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let deps = exe.parent().expect("exe dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of the workspace binary `name`, built first if this test run has not built
/// the workspace binaries yet (so a test never runs a stale binary). Set
/// `HANGAR_TEST_PREBUILT=1` to skip the build.
pub fn cargo_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        if std::env::var_os("HANGAR_TEST_PREBUILT").is_none() {
            build_workspace_bins(&dir);
        }
    });
    let path = dir.join(name);
    assert!(path.is_file(), "binary {} does not exist", path.display());
    runnable_by_service_user(path)
}

/// Whether every directory above `path` lets others through and `path` lets
/// others execute it.
fn others_can_execute(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(&path) & 0o001 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// `bin`, or when tests run as root and `bin` sits where the service user cannot
/// reach it (a target directory or tool cache under `/root`), an up-to-date copy in
/// a root-owned, world-readable directory: services started as the service user,
/// and tests running commands as other accounts, can execute it but not replace it.
pub fn runnable_by_service_user(bin: PathBuf) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() || others_can_execute(&bin) {
        return bin;
    }
    // One directory per source directory, so two checkouts never swap binaries.
    let source_dir = bin
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .unwrap_or_default();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source_dir.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let tools = Path::new("/var/lib/hangar-test-tools").join(key);
    for dir in [tools.parent().expect("has a parent"), &tools] {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    }
    let name = bin.file_name().expect("a binary has a file name");
    let copy = tools.join(name);
    let source = fs::metadata(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    let current = fs::metadata(&copy)
        .ok()
        .is_some_and(|m| m.len() == source.len() && m.modified().ok() >= source.modified().ok());
    if !current {
        // Each process copies to its own name, then renames: a concurrent test never
        // runs a half-written binary.
        let partial = tools.join(format!(
            "{}.{}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        fs::copy(&bin, &partial)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), partial.display()));
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", partial.display()));
        fs::rename(&partial, &copy)
            .unwrap_or_else(|e| panic!("move {} into place: {e}", copy.display()));
    }
    copy
}

fn build_workspace_bins(dir: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    // Under nextest every test is its own process; the first one of the run builds,
    // the others find its stamp. Outside nextest each process checks once.
    let run_id =
        std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let stamp = dir.join(format!(".hangar-bins-built-{run_id}"));
    let lock_file = File::create(dir.join(".hangar-bins.lock")).expect("create build lock");
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).expect("take build lock");
    if stamp.exists() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    // The variables cargo set for this test crate are read by a build script
    // (ring's): inherited here, while a build from a shell lacks them, they
    // make the two builds rebuild each other's dependencies.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_crate = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"].iter().any(|p| key.starts_with(p))
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_TARGET_TMPDIR";
        if per_crate {
            cmd.env_remove(&*key);
        }
    }
    cmd.arg("build")
        .arg("--workspace")
        .arg("--bins")
        .arg("--manifest-path")
        .arg(&manifest);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building the workspace binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stamps of earlier runs are of no use any more.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".hangar-bins-built-")
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    File::create(&stamp).expect("write build stamp");
}

/// A child process in its own process group, with stdout and stderr going to
/// `<dir>/<name>.log`. Dropping it kills the group and reaps the child.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    pub fn spawn(mut cmd: Command, name: &str, dir: &Path) -> ChildProcess {
        let log = dir.join(format!("{name}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open process log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        ChildProcess {
            name: name.into(),
            child,
            log,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// SIGKILL to the group, then reap.
    pub fn kill(&mut self) {
        if self.try_exited().is_some() {
            return;
        }
        self.signal(Signal::SIGKILL);
        self.exited = self.child.wait().ok();
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_exited() {
            return Some(s);
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        self.exited
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last 4 KiB of the process's output, for failure messages.
    pub fn output_tail(&self) -> String {
        let mut f = match File::open(&self.log) {
            Ok(f) => f,
            Err(e) => return format!("(no log: {e})"),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        format!("[{} log {}]\n{s}", self.name, self.log.display())
    }

    /// The whole output so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
