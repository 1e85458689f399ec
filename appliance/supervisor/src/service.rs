//! One service's life: wait for its dependencies, start the child, check it until
//! it is ready and keep checking, restart it with back-off when it exits, give up
//! at the start limit, stop its whole process group on request.
//!
//! Each service has its own task (`Runner::run`); the rest of the supervisor only
//! sends it commands and watches its status.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ServiceSpec;
use crate::logs::{self, LogFile};
use crate::protocol::{ServiceStatus, State, now_ms};
use crate::ready::Checker;
use crate::reaper::{self, ExitInfo, Launch, Reaper};

/// Replies to the control socket: `Ok(message)` or `Err(reason)`.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// What the supervisor asks of a service.
#[derive(Debug)]
pub enum Cmd {
    Start(Reply),
    Stop(Reply),
    Restart(Reply),
    /// Stop the child and end the task (supervisor shutdown, service removed or replaced).
    Shutdown(oneshot::Sender<()>),
}

/// How often dependencies are looked at while waiting for them.
const DEP_POLL: Duration = Duration::from_millis(20);
/// Period of the readiness check until the first success.
const STARTING_CHECK: Duration = Duration::from_millis(50);
/// Period of the readiness check while unready.
const UNREADY_CHECK: Duration = Duration::from_secs(1);
/// Time a child without a readiness check must stay up to count as ready.
const NO_CHECK_GRACE: Duration = Duration::from_millis(100);
/// Extra time for a process group to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

enum Outcome {
    /// The child ended on its own (or could not start, or never got ready).
    Failed { uptime: Duration },
    Stopped(Reply),
    Restarted(Reply),
    Shutdown(oneshot::Sender<()>),
}

enum Interrupt {
    Stop(Reply),
    Shutdown(oneshot::Sender<()>),
    /// Start or restart while starting anyway: go ahead now.
    Proceed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Run,
    Stopped,
    Failed,
}

pub struct Runner {
    pub spec: Arc<ServiceSpec>,
    pub status: Arc<watch::Sender<ServiceStatus>>,
    pub deps: Vec<(String, watch::Receiver<ServiceStatus>)>,
    pub cmds: mpsc::Receiver<Cmd>,
    pub reaper: Reaper,
    pub log: Arc<LogFile>,
    pub state_dir: PathBuf,
    pub checker: Checker,
    backoff: Duration,
    failures: VecDeque<Instant>,
    started_once: bool,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("service", &self.spec.name).finish_non_exhaustive()
    }
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: Arc<ServiceSpec>,
        status: Arc<watch::Sender<ServiceStatus>>,
        deps: Vec<(String, watch::Receiver<ServiceStatus>)>,
        cmds: mpsc::Receiver<Cmd>,
        reaper: Reaper,
        log: Arc<LogFile>,
        state_dir: PathBuf,
    ) -> Runner {
        let checker = Checker::new(&spec.ready, &spec.run_as, reaper.clone());
        Runner {
            backoff: spec.backoff_initial,
            spec,
            status,
            deps,
            cmds,
            reaper,
            log,
            state_dir,
            checker,
            failures: VecDeque::new(),
            started_once: false,
        }
    }

    fn set(&self, state: State, detail: impl Into<String>) {
        let detail = detail.into();
        self.status.send_modify(|s| {
            if s.state != state {
                s.since_ms = now_ms();
            }
            s.state = state;
            s.detail = detail;
        });
    }

    /// The task's body; `start` says whether the service starts right away.
    pub async fn run(mut self, start: bool) {
        let mut wanted = if start { Wanted::Run } else { Wanted::Stopped };
        loop {
            match wanted {
                Wanted::Stopped | Wanted::Failed => {
                    if wanted == Wanted::Stopped {
                        self.set(State::Stopped, "stopped");
                    }
                    self.status.send_modify(|s| s.pid = None);
                    match self.cmds.recv().await {
                        None => return,
                        Some(Cmd::Start(r)) | Some(Cmd::Restart(r)) => {
                            self.failures.clear();
                            self.backoff = self.spec.backoff_initial;
                            wanted = Wanted::Run;
                            let _ = r.send(Ok(format!("{} starting", self.spec.name)));
                        }
                        Some(Cmd::Stop(r)) => {
                            let _ = r.send(Ok(format!("{} is already stopped", self.spec.name)));
                        }
                        Some(Cmd::Shutdown(r)) => {
                            let _ = r.send(());
                            return;
                        }
                    }
                }
                Wanted::Run => {
                    match self.wait_for_deps().await {
                        Some(Interrupt::Stop(r)) => {
                            let _ = r.send(Ok(format!("{} stopped", self.spec.name)));
                            wanted = Wanted::Stopped;
                            continue;
                        }
                        Some(Interrupt::Shutdown(r)) => {
                            let _ = r.send(());
                            return;
                        }
                        Some(Interrupt::Proceed) | None => {}
                    }
                    match self.run_once().await {
                        Outcome::Stopped(r) => {
                            let _ = r.send(Ok(format!("{} stopped", self.spec.name)));
                            wanted = Wanted::Stopped;
                        }
                        Outcome::Restarted(r) => {
                            let _ = r.send(Ok(format!("{} restarting", self.spec.name)));
                        }
                        Outcome::Shutdown(r) => {
                            self.set(State::Stopped, "stopped");
                            let _ = r.send(());
                            return;
                        }
                        Outcome::Failed { uptime } => match self.after_failure(uptime).await {
                            Some(Interrupt::Stop(r)) => {
                                let _ = r.send(Ok(format!("{} stopped", self.spec.name)));
                                wanted = Wanted::Stopped;
                            }
                            Some(Interrupt::Shutdown(r)) => {
                                self.set(State::Stopped, "stopped");
                                let _ = r.send(());
                                return;
                            }
                            Some(Interrupt::Proceed) => {}
                            None if self.status.borrow().state == State::Failed => wanted = Wanted::Failed,
                            None => {}
                        },
                    }
                }
            }
        }
    }

    /// Start limit and back-off after a failure. `None` when the wait ran out (or
    /// the service is now FAILED); `Some` when a command cut it short.
    async fn after_failure(&mut self, uptime: Duration) -> Option<Interrupt> {
        let now = Instant::now();
        if uptime >= self.spec.stable_after {
            self.backoff = self.spec.backoff_initial;
        }
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.spec.start_limit_interval)
        {
            self.failures.pop_front();
        }
        if self.failures.len() as u32 >= self.spec.start_limit_burst {
            let msg = format!(
                "failed {} times within {}s; not restarted until `hangar ctl start {}`",
                self.failures.len(),
                self.spec.start_limit_interval.as_secs(),
                self.spec.name
            );
            tracing::error!(service = %self.spec.name, "{msg}");
            self.log.note(&msg);
            self.set(State::Failed, msg);
            return None;
        }
        // The back-off is the least time between two starts: a child that ran
        // longer than it is started again at once.
        let delay = self.backoff.saturating_sub(uptime);
        self.backoff = (self.backoff * 2).min(self.spec.backoff_max);
        if delay.is_zero() {
            return None;
        }
        self.set(State::Backoff, format!("restarting in {:.1}s", delay.as_secs_f64()));
        let until = Instant::now() + delay;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => None,
            cmd = self.cmds.recv() => match cmd {
                None => Some(Interrupt::Shutdown(oneshot::channel().0)),
                Some(Cmd::Stop(r)) => Some(Interrupt::Stop(r)),
                Some(Cmd::Shutdown(r)) => Some(Interrupt::Shutdown(r)),
                Some(Cmd::Start(r)) | Some(Cmd::Restart(r)) => {
                    let _ = r.send(Ok(format!("{} starting now", self.spec.name)));
                    Some(Interrupt::Proceed)
                }
            },
        }
    }

    fn first_unready_dep(&self) -> Option<(String, State)> {
        self.deps.iter().find_map(|(name, rx)| {
            let s = rx.borrow();
            (!s.is_ready()).then(|| (name.clone(), s.state))
        })
    }

    async fn wait_for_deps(&mut self) -> Option<Interrupt> {
        loop {
            let (dep, state) = self.first_unready_dep()?;
            self.set(State::Waiting, format!("waiting for {dep} ({state})"));
            tokio::select! {
                _ = tokio::time::sleep(DEP_POLL) => {}
                cmd = self.cmds.recv() => match cmd {
                    None => return Some(Interrupt::Shutdown(oneshot::channel().0)),
                    Some(Cmd::Stop(r)) => return Some(Interrupt::Stop(r)),
                    Some(Cmd::Shutdown(r)) => return Some(Interrupt::Shutdown(r)),
                    Some(Cmd::Start(r)) | Some(Cmd::Restart(r)) => {
                        let _ = r.send(Ok(format!("{} is waiting for {dep}", self.spec.name)));
                    }
                },
            }
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.pid", self.spec.name))
    }

    fn spawn(&self) -> Result<(reaper::Spawned, OwnedFd), String> {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot create the output pipe: {e}"))?;
        let write_copy = write_end.try_clone().map_err(|e| format!("cannot create the output pipe: {e}"))?;
        let s = &self.spec;
        let mut cmd = reaper::command(Launch {
            program: &s.command,
            args: &s.args,
            env: &s.env.0,
            working_dir: &s.working_dir,
            run_as: &s.run_as,
            stdout: Stdio::from(write_end),
            stderr: Stdio::from(write_copy),
        });
        let spawned = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", s.command.display()))?;
        // The command holds our copies of the pipe's write end: closing them lets
        // the log pump see the end of the output once the child's side is gone.
        drop(cmd);
        Ok((spawned, read_end))
    }

    async fn run_once(&mut self) -> Outcome {
        let started = Instant::now();
        self.set(State::Starting, "starting");
        let (spawned, read_end) = match self.spawn() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(service = %self.spec.name, "{e}");
                self.log.note(&e);
                self.status.send_modify(|s| {
                    s.last_exit = None;
                    s.last_exit_at_ms = Some(now_ms());
                });
                self.set(State::Starting, e);
                return Outcome::Failed { uptime: Duration::ZERO };
            }
        };
        let pid = spawned.pid;
        let mut exit_rx = spawned.exit;
        tokio::spawn(logs::pump(read_end, self.log.clone()));
        write_pid_file(&self.pid_file(), pid);
        let restarted = std::mem::replace(&mut self.started_once, true);
        self.status.send_modify(|s| {
            s.pid = Some(pid as u32);
            s.started_at_ms = Some(now_ms());
            if restarted {
                s.restarts += 1;
            }
        });
        self.log.note(&format!("started {} as {} (pid {pid})", self.spec.command.display(), self.spec.run_as.name));
        tracing::info!(service = %self.spec.name, pid, "started");

        let mut ever_ready = false;
        let mut check: Option<JoinHandle<Result<String, String>>> = None;
        // Without a check, a child counts as ready once it has stayed up a moment,
        // so one that exits at once is not reported ready.
        let mut next_check = if self.checker.is_none() { Instant::now() + NO_CHECK_GRACE } else { Instant::now() };
        let ready_deadline = started + self.spec.ready_timeout;
        let outcome = loop {
            tokio::select! {
                // An exit that already happened wins over a check that passed.
                biased;
                exit = &mut exit_rx => {
                    let exit = exit.unwrap_or(ExitInfo { code: None, signal: None });
                    let uptime = started.elapsed();
                    self.record_exit(exit, uptime, false);
                    if let Some(h) = check.take() { h.abort(); }
                    self.clear_group(pid, Instant::now() + self.spec.stop_timeout, true).await;
                    break Outcome::Failed { uptime };
                }
                cmd = self.cmds.recv() => {
                    let interrupt = match cmd {
                        None => Outcome::Shutdown(oneshot::channel().0),
                        Some(Cmd::Start(r)) => {
                            let _ = r.send(Ok(format!("{} is already running", self.spec.name)));
                            continue;
                        }
                        Some(Cmd::Stop(r)) => Outcome::Stopped(r),
                        Some(Cmd::Restart(r)) => Outcome::Restarted(r),
                        Some(Cmd::Shutdown(r)) => Outcome::Shutdown(r),
                    };
                    if let Some(h) = check.take() { h.abort(); }
                    self.stop_child(pid, &mut exit_rx, started).await;
                    break interrupt;
                }
                res = async { check.as_mut().expect("guarded").await }, if check.is_some() => {
                    check = None;
                    let res = res.unwrap_or_else(|e| Err(format!("readiness check failed: {e}")));
                    next_check = Instant::now() + self.after_check(res, &mut ever_ready);
                }
                _ = tokio::time::sleep_until(next_check), if check.is_none() => {
                    if !ever_ready && Instant::now() >= ready_deadline {
                        let msg = format!(
                            "not ready within {}s: {}",
                            self.spec.ready_timeout.as_secs(),
                            self.status.borrow().detail
                        );
                        tracing::warn!(service = %self.spec.name, "{msg}");
                        self.log.note(&msg);
                        self.stop_child(pid, &mut exit_rx, started).await;
                        self.set(State::Starting, msg);
                        break Outcome::Failed { uptime: started.elapsed() };
                    }
                    check = Some(tokio::spawn(self.checker.clone().check(pid)));
                }
            }
        };
        let _ = std::fs::remove_file(self.pid_file());
        outcome
    }

    /// Applies a check's answer; returns when to check next.
    fn after_check(&self, res: Result<String, String>, ever_ready: &mut bool) -> Duration {
        let state = self.status.borrow().state;
        match res {
            Ok(detail) => {
                if state != State::Ready {
                    let what = if *ever_ready { "ready again" } else { "ready" };
                    tracing::info!(service = %self.spec.name, %detail, "{what}");
                    self.log.note(&format!("{what}: {detail}"));
                }
                *ever_ready = true;
                self.set(State::Ready, detail);
                if self.checker.is_none() {
                    // Nothing to re-check; wake up rarely.
                    Duration::from_secs(3600)
                } else {
                    self.spec.check_interval
                }
            }
            Err(detail) if !*ever_ready => {
                self.set(State::Starting, detail);
                STARTING_CHECK.min(self.spec.check_interval)
            }
            Err(detail) => {
                // A dependant whose dependency went away waits for it; it is not killed.
                let (new_state, shown) = match self.first_unready_dep() {
                    Some((dep, dep_state)) => (State::Waiting, format!("waiting for {dep} ({dep_state}): {detail}")),
                    None => (State::Unready, detail),
                };
                if state == State::Ready {
                    tracing::warn!(service = %self.spec.name, detail = %shown, "unready");
                    self.log.note(&format!("unready: {shown}"));
                }
                self.set(new_state, shown);
                UNREADY_CHECK.min(self.spec.check_interval)
            }
        }
    }

    /// `asked`: the supervisor stopped it (not a crash).
    fn record_exit(&self, exit: ExitInfo, uptime: Duration, asked: bool) {
        let msg = format!("exited ({exit}) after {:.1}s", uptime.as_secs_f64());
        if asked {
            tracing::info!(service = %self.spec.name, "{msg}");
        } else {
            tracing::warn!(service = %self.spec.name, "{msg}");
        }
        self.log.note(&msg);
        self.status.send_modify(|s| {
            s.last_exit = Some(exit);
            s.last_exit_at_ms = Some(now_ms());
            s.pid = None;
            s.detail = msg.clone();
            // A crashed child is not shown ready, not even for the moment
            // before its back-off begins.
            if !asked && s.state != State::Backoff {
                s.state = State::Backoff;
                s.since_ms = now_ms();
            }
        });
    }

    /// The stop signal to the group, SIGKILL to the group after the deadline.
    async fn stop_child(&self, pid: i32, exit_rx: &mut oneshot::Receiver<ExitInfo>, started: Instant) {
        self.set(State::Stopping, format!("sent SIG{}", self.spec.stop_signal.as_str().trim_start_matches("SIG")));
        self.log.note(&format!("stopping with {}", self.spec.stop_signal.as_str()));
        reaper::signal_group(pid, self.spec.stop_signal);
        let deadline = Instant::now() + self.spec.stop_timeout;
        let exit = match tokio::time::timeout_at(deadline, &mut *exit_rx).await {
            Ok(r) => r.ok(),
            Err(_) => {
                self.log.note(&format!(
                    "still running {}s after {}; sending SIGKILL to its process group",
                    self.spec.stop_timeout.as_secs(),
                    self.spec.stop_signal.as_str()
                ));
                reaper::signal_group(pid, Signal::SIGKILL);
                exit_rx.await.ok()
            }
        };
        if let Some(exit) = exit {
            self.record_exit(exit, started.elapsed(), true);
        }
        self.clear_group(pid, deadline, false).await;
    }

    /// Waits for the rest of the process group to go, signalling it first when
    /// the main process ended on its own; SIGKILL once `deadline` has passed.
    async fn clear_group(&self, pgid: i32, deadline: Instant, send_stop: bool) {
        if !reaper::group_alive(pgid) {
            return;
        }
        if send_stop {
            self.log.note("stopping what the exited process left in its group");
            reaper::signal_group(pgid, self.spec.stop_signal);
        }
        let mut killed = false;
        let give_up = deadline + KILL_GRACE;
        while reaper::group_alive(pgid) {
            let now = Instant::now();
            if now >= deadline && !killed {
                self.log.note("sending SIGKILL to the rest of its process group");
                reaper::signal_group(pgid, Signal::SIGKILL);
                killed = true;
            }
            if now >= give_up {
                tracing::error!(service = %self.spec.name, pgid, "process group survives SIGKILL");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `<pid> <start time>`: enough to recognise the process after a supervisor crash
/// without mistaking a recycled pid for it.
fn write_pid_file(path: &Path, pid: i32) {
    let start = reaper::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
    if let Err(e) = std::fs::write(path, format!("{pid} {start}\n")) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write pid file");
    }
}

/// Kills children a previous supervisor left running (it was killed outright):
/// each pid file that still names a live process of the same start time.
pub fn kill_leftovers(state_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(state_dir) else { return };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pid") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut it = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            it.next().and_then(|p| p.parse::<i32>().ok()),
            it.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if pid > 1 && reaper::proc_stat(pid).is_some_and(|s| s.start_time == start && s.pgid == pid) {
            tracing::warn!(pid, file = %path.display(), "killing a process group left by a previous supervisor");
            reaper::signal_group(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&path);
    }
}
