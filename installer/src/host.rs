//! The machine being installed: its prefix (every path lives under it), the
//! service account, whether systemd runs it, its clock; and the layout of an
//! installation under the prefix, so that nothing assumes `/`.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use crate::error::InstallError;

/// The account services run as, unless told otherwise.
pub const DEFAULT_SERVICE_USER: &str = "hangar";

/// The host the installer works on.
#[derive(Clone)]
pub struct Host {
    pub prefix: PathBuf,
    pub service_user: String,
    /// systemd is PID 1 (`/run/systemd/system` exists): the appliance runs as a unit.
    pub systemd: bool,
    pub clock: fn() -> DateTime<Utc>,
    /// Set by SIGINT: steps stop at their next boundary.
    pub interrupted: Arc<AtomicBool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("prefix", &self.prefix)
            .field("service_user", &self.service_user)
            .field("systemd", &self.systemd)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// This machine, with everything under `prefix`.
    pub fn detect(prefix: &Path, service_user: &str, no_systemd: bool) -> Host {
        Host {
            prefix: prefix.to_path_buf(),
            service_user: service_user.to_string(),
            systemd: !no_systemd && Path::new("/run/systemd/system").is_dir(),
            clock: Utc::now,
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `path` (absolute, as seen on the appliance) under the prefix.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        under(&self.prefix, path.as_ref())
    }

    pub fn layout(&self, data_dir: &Path) -> Layout {
        Layout::new(self, data_dir)
    }

    pub fn check_interrupt(&self, step: &str) -> Result<(), InstallError> {
        if self.interrupted.load(Ordering::SeqCst) {
            return Err(InstallError::Interrupted { step: step.to_string() });
        }
        Ok(())
    }

    /// The systemd unit's name: `hangar.service` for an installation at `/`,
    /// one per prefix otherwise so that two never collide.
    pub fn unit_name(&self) -> String {
        if self.prefix == Path::new("/") {
            "hangar.service".into()
        } else {
            let tag: String = self
                .prefix
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            format!("hangar{}.service", tag.trim_end_matches('-'))
        }
    }
}

/// `rel` (absolute or not) joined under `prefix`.
pub fn under(prefix: &Path, rel: &Path) -> PathBuf {
    let stripped = rel.strip_prefix("/").unwrap_or(rel);
    prefix.join(stripped)
}

/// Where everything of one installation is.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: PathBuf,
    pub opt: PathBuf,
    pub releases: PathBuf,
    pub current: PathBuf,
    pub etc: PathBuf,
    pub config: PathBuf,
    pub secrets: PathBuf,
    pub pki: PathBuf,
    pub trust: PathBuf,
    pub state_file: PathBuf,
    pub garage_config: PathBuf,
    pub data: PathBuf,
    pub postgres: PathBuf,
    pub pg_run: PathBuf,
    pub objects: PathBuf,
    pub supervisor: PathBuf,
    /// The drain's own files (its bare copies of the stacks' repositories).
    pub drain: PathBuf,
    /// Tool binaries and the provider mirror, kept across releases.
    pub tools: PathBuf,
    pub logs: PathBuf,
}

impl Layout {
    pub fn new(host: &Host, data_dir: &Path) -> Layout {
        let opt = host.path("/opt/hangar");
        let etc = host.path("/etc/hangar");
        let data = host.path(data_dir);
        Layout {
            prefix: host.prefix.clone(),
            releases: opt.join("releases"),
            current: opt.join("current"),
            opt,
            config: etc.join("hangar.toml"),
            secrets: etc.join("secrets"),
            pki: etc.join("pki"),
            trust: etc.join("trust"),
            state_file: etc.join("install-state.json"),
            garage_config: etc.join("garage.toml"),
            etc,
            postgres: data.join("postgres"),
            pg_run: data.join("run"),
            objects: data.join("objects"),
            supervisor: data.join("supervisor"),
            drain: data.join("drain"),
            tools: data.join("tools"),
            data,
            logs: host.path("/var/log/hangar"),
        }
    }

    pub fn secret(&self, name: &str) -> PathBuf {
        self.secrets.join(name)
    }

    /// A binary of the current release.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.current.join("bin").join(name)
    }

    pub fn pg_bin(&self, name: &str) -> PathBuf {
        self.current.join("embedded/postgres/usr/lib/postgresql/15/bin").join(name)
    }

    pub fn pg_lib(&self) -> PathBuf {
        self.current.join("embedded/postgres/lib")
    }

    /// The supervisor started without systemd records its pid here (not in
    /// its own state directory, which holds its children's pid files only).
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.data.join("supervise.pid")
    }

    pub fn socket(&self) -> PathBuf {
        self.supervisor.join("control.sock")
    }
}

/// The uid and gid of `user`.
pub fn user_ids(user: &str) -> Result<Option<(u32, u32)>, InstallError> {
    nix::unistd::User::from_name(user)
        .map(|u| u.map(|u| (u.uid.as_raw(), u.gid.as_raw())))
        .map_err(|e| InstallError::User { user: user.to_string(), problem: e.to_string() })
}

/// Creates `dir` (and missing parents, 0755) with `mode`, owned by `owner`;
/// an existing directory gets its mode and owner repaired.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), InstallError> {
    if let Some(parent) = dir.parent()
        && !parent.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(InstallError::io("create", parent))?;
    }
    if !dir.is_dir() {
        fs::DirBuilder::new().mode(mode).create(dir).map_err(InstallError::io("create", dir))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(InstallError::io("chmod", dir))?;
    chown(dir, owner)
}

pub fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), InstallError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(InstallError::io("chown", path))?;
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary name and a rename, so an
/// interrupted write never leaves a half file; mode and owner are set before
/// the rename.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        Ok(())
    })();
    result.map_err(InstallError::io("write", &tmp))?;
    if let Err(e) = chown(&tmp, owner) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(InstallError::io("rename into place", path))
}

/// Writes `contents` only when `path` differs; says whether it wrote.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<bool, InstallError> {
    if fs::read(path).is_ok_and(|old| old == contents) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(InstallError::io("chmod", path))?;
        chown(path, owner)?;
        return Ok(false);
    }
    write_atomic(path, contents, mode, owner)?;
    Ok(true)
}

/// A command, run to completion with its output captured; a non-zero exit is
/// an error carrying the last lines of that output.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, InstallError> {
    run_with_input(cmd, what, None)
}

pub fn run_with_input(cmd: &mut Command, what: &str, input: Option<&[u8]>) -> Result<String, InstallError> {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_owned();
    // Its own process group: a Ctrl-C at the terminal reaches the installer,
    // which finishes the step, not the child in the middle of it. And it dies
    // with the installer: a step's `psql` or `pg_restore` outliving a killed
    // run would race the next run's retry of that step. (A daemon the child
    // forks, such as the postmaster of `pg_ctl start`, does not inherit this.)
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes raw
    // system calls (prctl, getppid) on a value copied before the fork; it
    // allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The installer may have died before the line above took effect.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    cmd.process_group(0)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| InstallError::Spawn { program: PathBuf::from(&program), source })?;
    if let Some(bytes) = input
        && let Some(mut stdin) = child.stdin.take()
    {
        let _ = stdin.write_all(bytes);
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InstallError::Spawn { program: PathBuf::from(&program), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = stdout;
        }
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
        return Err(InstallError::Command {
            program: Path::new(&program).file_name().unwrap_or(OsStr::new("?")).to_string_lossy().into_owned(),
            what: what.to_string(),
            status: out.status.to_string(),
            output: tail,
        });
    }
    Ok(stdout)
}

/// Whether the process `pid` exists and its command line contains `needle`.
pub fn process_alive(pid: i32, needle: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            !cmd.is_empty() && cmd.contains(needle)
        }
        Err(_) => false,
    }
}

/// A pid from a pid file whose process still runs `needle`.
pub fn live_pid(file: &Path, needle: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(file).ok()?.lines().next()?.trim().parse().ok()?;
    process_alive(pid, needle).then_some(pid)
}

/// Removes directory `path` and what it holds, trying again while something
/// still writes into it (a process ending), for up to `timeout`.
pub fn remove_dir_settled(path: &Path, timeout: std::time::Duration) -> Result<(), InstallError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(InstallError::io("remove", path)(e)),
        }
    }
}

/// Waits (up to `timeout`) until no process has `path` on its command line
/// or as its working directory.
pub fn wait_until_unused(path: &Path, timeout: std::time::Duration) {
    let needle = path.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        // By its command line, or by its working directory: initdb's
        // bootstrap backend is told its directory by the environment and
        // works in it.
        let busy = fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().parse::<i32>().is_ok_and(|pid| {
                process_alive(pid, &needle) || fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(path))
            })
        });
        if !busy {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
