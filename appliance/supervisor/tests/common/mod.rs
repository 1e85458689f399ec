//! What the supervisor tests share: a `hangar supervise` process with its own
//! configuration, control-socket helpers, scripts as services, and /proc scans
//! for processes left behind.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hangar_supervisor::ctl::CtlClient;
use hangar_supervisor::protocol::{ServiceStatus, State};
use hangar_testkit::user::ServiceUser;
use hangar_testkit::{ChildProcess, TestDir, cargo_bin};
use nix::sys::signal::Signal;

/// A `[database]` section for configurations whose services never touch it
/// (the configuration file requires one).
pub const DUMMY_DATABASE: &str = "[database]\nhost = \"127.0.0.1\"\nname = \"none\"\nuser = \"none\"\n\
                                  password_file = \"/nonexistent/pw\"\nca_file = \"/nonexistent/ca.crt\"\n";

/// A supervisor under test.
#[derive(Debug)]
pub struct Sup {
    pub dir: TestDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub process: Option<ChildProcess>,
    pub user: ServiceUser,
}

/// The `[supervisor]` header for a test: everything under `dir`, quick back-off.
pub fn supervisor_header(dir: &Path, user: &ServiceUser, defaults: &str) -> String {
    format!(
        "[supervisor]\nsocket = \"{d}/run/control.sock\"\nlog_dir = \"{d}/log\"\nstate_dir = \"{d}/run\"\nuser = \"{u}\"\n\
         [supervisor.defaults]\nstop_timeout_secs = 2\n{defaults}\n",
        d = dir.display(),
        u = user.name
    )
}

impl Sup {
    /// A test directory and its paths; nothing started yet.
    pub fn new(label: &str) -> Sup {
        hangar_testkit::init();
        let dir = TestDir::new(label);
        let user = ServiceUser::get();
        Sup {
            config: dir.path().join("hangar.toml"),
            socket: dir.path().join("run/control.sock"),
            log_dir: dir.path().join("log"),
            state_dir: dir.path().join("run"),
            dir,
            process: None,
            user,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A string on the command line of every process this test starts: its
    /// directory (scripts live there, and `sleep_bin` is a copy of sleep there).
    pub fn marker(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A copy of `sleep` inside the test directory, so its processes carry the marker.
    pub fn sleep_bin(&self) -> String {
        let path = self.path().join("sleep");
        if !path.exists() {
            std::fs::copy("/bin/sleep", &path).expect("copy sleep");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod sleep");
        }
        path.display().to_string()
    }

    /// Writes the configuration: `[database]` (given or dummy), the supervisor
    /// header with `defaults`, then `services`.
    pub fn write_config(&self, database: Option<&str>, defaults: &str, services: &str) {
        let text = format!(
            "{}\n{}\n{}",
            database.unwrap_or(DUMMY_DATABASE),
            supervisor_header(self.path(), &self.user, defaults),
            services
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// A script the service user can run.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
        path
    }

    /// A directory the service user may write to.
    pub fn shared_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.subdir(name);
        self.user.chown(&p);
        p
    }

    pub fn hangar(&self) -> Command {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.config).env("HANGAR_LOG", "info,hangar_supervisor=debug");
        cmd
    }

    /// Starts `hangar supervise` and waits for its control socket.
    pub async fn start(&mut self) {
        self.start_with(|_| {}).await;
    }

    pub async fn start_with(&mut self, tweak: impl FnOnce(&mut Command)) {
        let mut cmd = self.hangar();
        cmd.arg("supervise");
        tweak(&mut cmd);
        let mut process = ChildProcess::spawn(cmd, "supervise", self.dir.path());
        let socket = self.socket.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if let Some(status) = process.try_exited() {
                panic!("supervisor exited ({status}) before listening:\n{}", process.output_tail());
            }
            assert!(Instant::now() < deadline, "no control socket after 60 s:\n{}", process.output_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.process = Some(process);
    }

    pub fn pid(&self) -> i32 {
        self.process.as_ref().expect("supervisor started").pid() as i32
    }

    pub fn client(&self) -> CtlClient {
        CtlClient::new(&self.socket)
    }

    pub async fn statuses(&self) -> Vec<ServiceStatus> {
        self.client().status().await.expect("ctl status").0
    }

    pub async fn status(&self, name: &str) -> ServiceStatus {
        self.statuses()
            .await
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in status"))
    }

    /// Waits until `name` is in `state`; returns its status then.
    pub async fn wait_state(&self, name: &str, state: State, timeout: Duration) -> ServiceStatus {
        let deadline = Instant::now() + timeout;
        loop {
            // A service added by a reload may not be listed yet.
            let found = self.statuses().await.into_iter().find(|s| s.name == name);
            if let Some(s) = &found
                && s.state == state
            {
                return s.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name} not {state} after {timeout:?}: {found:?}\n{}\n{}",
                    self.log(name),
                    self.process.as_ref().map(|p| p.output_tail()).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `hangar ctl ARGS` against this supervisor.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.hangar();
        cmd.arg("ctl").args(args);
        cmd.output().expect("run hangar ctl")
    }

    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{service}.log"))).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal supervisor");
    }

    /// SIGTERM; returns the exit code once it has exited.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut p = self.process.take().expect("supervisor started");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), Signal::SIGTERM).unwrap();
        let status = p
            .wait_timeout(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("supervisor did not exit after SIGTERM:\n{}", p.output_tail()));
        status.code()
    }

    pub fn output(&self) -> String {
        self.process.as_ref().map(|p| p.output()).unwrap_or_default()
    }
}

impl Drop for Sup {
    /// A test that fails mid-way must not leave services running: SIGTERM lets
    /// the supervisor stop them; if it cannot, SIGKILL it and kill the process
    /// groups its pid files name (its children live in their own sessions).
    fn drop(&mut self) {
        let Some(mut p) = self.process.take() else { return };
        p.signal(Signal::SIGTERM);
        if p.wait_timeout(Duration::from_secs(60)).is_some() {
            return;
        }
        p.kill();
        for entry in std::fs::read_dir(&self.state_dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok())
                && pid > 1
            {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Pids of processes whose command line contains `marker`, but for the supervisor.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        // The supervisor and ctl name the configuration, which is in the test directory too.
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
            && !String::from_utf8_lossy(&cmdline).contains("hangar.toml")
        {
            found.push(pid);
        }
    }
    found
}

/// (pid, state, ppid) of every child of `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(ppid) {
            found.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    found
}

pub fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
}

/// Waits until no process carries `marker`.
pub async fn wait_gone(marker: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind with {marker}: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
