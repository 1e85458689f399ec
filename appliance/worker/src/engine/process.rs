//! Runs one command of a run in its own process group, its stdout and stderr
//! merged into one pipe (so their order is kept) and streamed into the phase's
//! log as they come. Stopping sends SIGTERM to the whole group, then SIGKILL
//! after a grace period; whatever the group left running when the command
//! ended is killed too, so no process of a run outlives it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::logs::LogStream;
use super::{EngineError, RunHooks, StopSignal};

/// How long the pipe may stay open once the group is gone (a process that
/// left the group could hold it forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A command to run.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// What the log shows for it (never with secrets: it is masked anyway).
    pub display: String,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    Exited(i32),
    Signaled(i32),
    /// Stopped on request, with the request's reason.
    Stopped(String),
}

/// Runs `cmd`, streaming its output into `log`. When `stop` fires and
/// `stoppable` is set, the group is terminated.
pub(crate) async fn run<H: RunHooks>(
    cmd: &Cmd,
    log: &mut LogStream<'_, H>,
    stop: &StopSignal,
    stoppable: bool,
    grace: Duration,
) -> Result<Ended, EngineError> {
    log.mark();
    log.line(&format!("$ {}", cmd.display)).await;
    let (reader, writer) = std::io::pipe().map_err(|source| EngineError::Pipe { source })?;
    let writer2 = writer
        .try_clone()
        .map_err(|source| EngineError::Pipe { source })?;
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // The parent's copies of the pipe's write end go now, or EOF never comes.
    drop(command);
    let mut child = spawned.map_err(|source| EngineError::Spawn {
        program: cmd.program.clone(),
        source,
    })?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(|source| EngineError::Pipe { source })?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut eof = false;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut stopped: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        if status.is_some() && (eof || drain_until.is_some_and(|t| Instant::now() >= t)) {
            break;
        }
        let flush_at = log.due();
        tokio::select! {
            r = rx.read(&mut buf), if !eof => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => log.write(&buf[..n]).await,
            },
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(|source| EngineError::Wait { program: cmd.program.clone(), source })?;
                status = Some(s);
                // The command is over: anything it left behind in its group goes too.
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
                drain_until = Some(Instant::now() + DRAIN_LIMIT);
            }
            reason = stop.requested(), if stoppable && stopped.is_none() && status.is_none() => {
                log.line(&format!("stopping: {reason}")).await;
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGTERM);
                }
                stopped = Some(reason);
                kill_at = Some(Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && status.is_none() => {
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
                kill_at = None;
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => log.flush().await,
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() && !eof => {}
        }
    }
    log.flush().await;
    let status = status.expect("loop ends only after the exit");
    if let Some(reason) = stopped {
        return Ok(Ended::Stopped(reason));
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(s)) => Ended::Signaled(s),
        (None, None) => Ended::Exited(-1),
    })
}

/// Runs a short command and captures its stdout (not streamed: machine-readable
/// output such as `terraform show -json`). Its stderr goes into the log.
pub(crate) async fn capture<H: RunHooks>(
    cmd: &Cmd,
    log: &mut LogStream<'_, H>,
) -> Result<(i32, Vec<u8>), EngineError> {
    let out = tokio::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| EngineError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
    if !out.stderr.is_empty() {
        log.mark();
        log.write(&out.stderr).await;
    }
    Ok((out.status.code().unwrap_or(-1), out.stdout))
}

/// The `PATH` tools see: the tool's own directory first, then the worker's.
pub(crate) fn tool_path(tool_dir: &Path) -> String {
    let inherited = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    format!("{}:{inherited}", tool_dir.display())
}
