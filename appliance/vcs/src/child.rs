//! Running git as a child that cannot outstay its welcome: its own process
//! group (so helpers such as git-remote-https die with it), a deadline for the
//! whole run, and caps on what is kept of its output. Both `ls-remote` polling
//! and the change cache run git this way.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What is kept of git's standard error: enough for its last words.
const MAX_STDERR: usize = 64 * 1024;

/// What a finished git printed.
#[derive(Debug)]
pub(crate) struct Captured {
    pub status: ExitStatus,
    /// At most `max_stdout` bytes.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// git printed more than `max_stdout`; it was stopped then.
    pub overflowed: bool,
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    TimedOut,
}

/// Runs `cmd` (stdio and process group are set here) until it exits or
/// `timeout` passes; either way nothing of its group is left running.
pub(crate) async fn run(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    max_stdout: usize,
) -> Result<Captured, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        let err = tokio::spawn(drain_capped(stderr, MAX_STDERR));
        let mut out = Vec::new();
        let _ = (&mut stdout)
            .take(max_stdout as u64 + 1)
            .read_to_end(&mut out)
            .await;
        let overflowed = out.len() > max_stdout;
        if overflowed {
            // Stop git now rather than wait for the deadline.
            out.truncate(max_stdout);
            kill_group(pgid);
        }
        drop(stdout);
        let status = child.wait().await;
        (status, out, err.await.unwrap_or_default(), overflowed)
    };
    let result = tokio::time::timeout(timeout, work).await;
    // Helpers (git-remote-https) may outlive git itself, on a deadline or not.
    kill_group_and_settle(pgid).await;
    match result {
        Err(_) => Err(RunError::TimedOut),
        Ok((Err(e), ..)) => Err(RunError::Spawn(e)),
        Ok((Ok(status), stdout, stderr, overflowed)) => Ok(Captured {
            status,
            stdout,
            stderr,
            overflowed,
        }),
    }
}

/// Reads `r` to its end, keeping the first `cap` bytes: reading on past the
/// cap keeps git from blocking on a full pipe.
async fn drain_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) if buf.len() < cap => buf.extend_from_slice(&chunk[..n.min(cap - buf.len())]),
            Ok(_) => {}
        }
    }
    buf
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

/// Kills the group and gives the kernel a moment to take its processes down
/// (the helpers are git's children, not ours to wait for).
async fn kill_group_and_settle(pgid: Option<Pid>) {
    kill_group(pgid);
    let Some(pgid) = pgid else { return };
    for _ in 0..100 {
        // Signal 0 only asks whether anyone in the group is left.
        if killpg(pgid, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
