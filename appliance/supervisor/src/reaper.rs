//! Starting children and reaping every descendant.
//!
//! The supervisor is the child subreaper of its process tree: a grandchild whose
//! parent dies is re-parented to it rather than to init. One task therefore owns
//! `waitpid(-1)`: it hands each exit status to whoever started that child and
//! reaps everything else, so no zombie survives. A re-parented process is an
//! orphan some service left behind (services must stay in the foreground); it is
//! sent SIGTERM, then SIGKILL. Nothing else in the process may wait for children
//! (no `tokio::process`, no `Command::output`): it would steal exit statuses.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::RunAs;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            (None, None) => f.write_str("ended"),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Children we started and wait for, by pid.
    children: Mutex<HashMap<i32, oneshot::Sender<ExitInfo>>>,
    /// Orphans seen, and when they were first sent SIGTERM.
    orphans: Mutex<HashMap<i32, Instant>>,
}

/// The process's only waiter for children (see the module comment).
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

/// A started child: its pid (also its process group) and its exit, to come.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// How long an orphan gets between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

impl Reaper {
    /// Becomes the subreaper and starts the reaping task, which ends with `stop`.
    pub fn start(stop: CancellationToken) -> Result<Reaper, crate::SupervisorError> {
        nix::sys::prctl::set_child_subreaper(true).map_err(crate::SupervisorError::Subreaper)?;
        let reaper = Reaper {
            inner: Arc::new(Inner::default()),
        };
        let r = reaper.clone();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_err(|e| crate::SupervisorError::Subreaper(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_secs(1));
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sigchld.recv() => r.reap_all(),
                    _ = sweep.tick() => {
                        r.reap_all();
                        r.sweep_orphans();
                    }
                }
            }
            r.reap_all();
        });
        Ok(reaper)
    }

    /// Starts `cmd` and registers it before the reaper can see it exit.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let (tx, rx) = oneshot::channel();
        // Held across fork+exec: the reaping task takes the same lock before
        // calling waitpid, so it cannot reap this child before it is registered.
        let mut children = self.inner.children.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // std's Child neither kills nor waits on drop; the exit comes through us.
        drop(child);
        children.insert(pid, tx);
        Ok(Spawned { pid, exit: rx })
    }

    fn reap_all(&self) {
        let mut children = self.inner.children.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (pid, info) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitInfo { code: Some(code), signal: None }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitInfo {
                        code: None,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            };
            match children.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(info);
                }
                None => {
                    self.inner.orphans.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid.as_raw());
                    tracing::info!(pid = pid.as_raw(), status = %info, "reaped an orphaned descendant");
                }
            }
        }
    }

    /// SIGTERM to orphans re-parented to us, SIGKILL to those still there later.
    fn sweep_orphans(&self) {
        let me = std::process::id() as i32;
        let children = self.inner.children.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<i32> = direct_children(me).into_iter().filter(|p| !children.contains_key(p)).collect();
        drop(children);
        let mut orphans = self.inner.orphans.lock().unwrap_or_else(|e| e.into_inner());
        orphans.retain(|p, _| found.contains(p));
        for pid in found {
            match orphans.get(&pid) {
                None => {
                    tracing::warn!(pid, "a service left an orphaned process behind; terminating it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    orphans.insert(pid, Instant::now());
                }
                Some(since) if since.elapsed() >= ORPHAN_GRACE => {
                    tracing::warn!(pid, "orphaned process ignored SIGTERM; killing it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
    }
}

/// Pids whose parent is `ppid`, from /proc.
pub fn direct_children(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.ppid == ppid))
        .collect()
}

/// The fields of /proc/<pid>/stat the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// Clock ticks after boot: with the pid, identifies a process across pid reuse.
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// True while any process is in group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}

/// Sends `sig` to the process group `pgid` (ignoring a group already gone).
pub fn signal_group(pgid: i32, sig: Signal) {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = sig.as_str(), error = %e, "cannot signal process group"),
    }
}

/// What a child is started with.
#[derive(Debug)]
pub struct Launch<'a> {
    pub program: &'a std::path::Path,
    pub args: &'a [String],
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub working_dir: &'a std::path::Path,
    pub run_as: &'a RunAs,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// Variables passed on from the supervisor's own environment; everything else a
/// child sees is set here or in its service's `env`. NOTIFY_SOCKET in particular
/// is not passed: a child notifying systemd would speak for the supervisor.
const PASSED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// Builds the command for a child: its own session and process group, the
/// service user's credentials (supplementary groups, then gid, then uid, so the
/// privilege to change groups is dropped last), a clean environment.
#[allow(unsafe_code)]
pub fn command(l: Launch<'_>) -> Command {
    let mut cmd = Command::new(l.program);
    cmd.args(l.args)
        .env_clear()
        .current_dir(l.working_dir)
        .stdin(Stdio::null())
        .stdout(l.stdout)
        .stderr(l.stderr);
    for key in PASSED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    cmd.env("HOME", &l.run_as.home)
        .env("USER", &l.run_as.name)
        .env("LOGNAME", &l.run_as.name)
        .envs(l.env);
    let switch = l.run_as.switch;
    let (uid, gid, groups) = (l.run_as.uid, l.run_as.gid, l.run_as.groups.clone());
    // SAFETY: the closure runs between fork and exec and only makes raw system
    // calls (setsid, setgroups, setgid, setuid) on data prepared before the fork;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if switch {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            Ok(())
        });
    }
    cmd
}
