//! Evaluating in a child process whose memory is capped, so that a policy
//! that allocates without bound (`numbers.range(1, 1e9)` is one builtin call
//! the time limit cannot interrupt) ends its own process, not the caller's.
//!
//! The caller starts `program args…` with `RLIMIT_DATA` set, writes one
//! request to its standard input and reads one answer from its standard
//! output. The request is a JSON header line (`kind`, `time_ms`,
//! `body_bytes`), then the policy's Rego, then the input JSON; the answer is
//! one JSON document. An allocation the limit refuses aborts the child with
//! Rust's "memory allocation of N bytes failed", which the caller reads as
//! the memory limit. Past the deadline the caller kills the child.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::compile::{Policy, PolicyKind};
use crate::eval::{Decided, EvalError, Message, Outcome, Slot, evaluate};

/// Largest answer read back: messages are short, and a policy cannot print
/// more than its rules produce.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Header {
    kind: String,
    time_ms: u64,
    body_bytes: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Decided { outcome: Outcome, messages: Vec<Message> },
    TimeLimit,
    Failed { message: String },
}

/// Evaluates `policy` in a child process, waiting for it until `deadline`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_in_child(
    program: &Path,
    args: &[String],
    memory_bytes: u64,
    policy: &Policy,
    input: &str,
    limit: Duration,
    deadline: Instant,
    slot: Slot,
) -> Decided {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cap_data(&mut command, memory_bytes);
    let mut child = command
        .spawn()
        .map_err(|e| EvalError::Rego { message: format!("cannot start the evaluation's process {}: {e}", program.display()) })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let header = Header { kind: policy.kind().as_str().to_string(), time_ms: limit.as_millis() as u64, body_bytes: policy.source().len() };
    let mut request = serde_json::to_vec(&header).unwrap_or_default();
    request.push(b'\n');
    request.extend_from_slice(policy.source().as_bytes());
    request.extend_from_slice(input.as_bytes());
    let (tx, rx) = mpsc::sync_channel(1);
    let stdin = child.stdin.take();
    let waiter = std::thread::Builder::new().name("policy-child".into()).spawn(move || {
        let _slot = slot;
        // The child reads all of its input before it answers; a child that
        // died meanwhile makes this write fail, and its status says why.
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&request);
        }
        let mut stdout = Vec::new();
        if let Some(out) = child.stdout.take() {
            let _ = out.take(MAX_ANSWER).read_to_end(&mut stdout);
        }
        let mut stderr = Vec::new();
        if let Some(err) = child.stderr.take() {
            let _ = err.take(64 * 1024).read_to_end(&mut stderr);
        }
        let status = child.wait();
        let _ = tx.send((status, stdout, stderr));
    });
    if let Err(e) = waiter {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        return Err(EvalError::Rego { message: format!("cannot start the evaluation's thread: {e}") });
    }
    let (status, stdout, stderr) = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(answer) => answer,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(EvalError::TimeLimit { limit });
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => return Err(EvalError::Lost),
    };
    let stderr = String::from_utf8_lossy(&stderr);
    if stderr.contains("memory allocation of") {
        return Err(EvalError::MemoryLimit { limit_bytes: memory_bytes });
    }
    let status = status.map_err(|e| EvalError::Rego { message: format!("cannot wait for the evaluation's process: {e}") })?;
    match serde_json::from_slice::<Answer>(&stdout) {
        Ok(Answer::Decided { outcome, messages }) if status.success() => Ok((outcome, messages)),
        Ok(Answer::TimeLimit) => Err(EvalError::TimeLimit { limit }),
        Ok(Answer::Failed { message }) => Err(EvalError::Rego { message }),
        _ => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            Err(EvalError::Rego { message: format!("the evaluation's process ended with {status}: {}", last.trim()) })
        }
    }
}

/// Caps the data segment of the process `command` starts.
#[allow(unsafe_code)]
fn cap_data(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setrlimit(2) runs, which is
    // async-signal-safe and touches no lock or allocation of the parent.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, bytes, bytes).map_err(std::io::Error::from)
        });
    }
}

/// The child's side: reads one request from standard input, evaluates it
/// under its time limit, writes the answer to standard output. The program
/// named in [`crate::Isolation::Process`] calls it and exits with its code.
pub fn serve_child() -> ExitCode {
    let mut request = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut request) {
        return answer(&Answer::Failed { message: format!("cannot read the request: {e}") });
    }
    let answered = match decide(&request) {
        Ok((outcome, messages)) => Answer::Decided { outcome, messages },
        Err(EvalError::TimeLimit { .. }) => Answer::TimeLimit,
        Err(EvalError::Rego { message }) => Answer::Failed { message },
        Err(e) => Answer::Failed { message: e.to_string() },
    };
    answer(&answered)
}

fn decide(request: &[u8]) -> Decided {
    let bad = |what: &str| EvalError::Rego { message: format!("the evaluation's request is malformed: {what}") };
    let newline = request.iter().position(|b| *b == b'\n').ok_or_else(|| bad("no header line"))?;
    let header: Header = serde_json::from_slice(&request[..newline]).map_err(|e| bad(&e.to_string()))?;
    let rest = &request[newline + 1..];
    if header.body_bytes > rest.len() {
        return Err(bad("the policy is cut short"));
    }
    let body = std::str::from_utf8(&rest[..header.body_bytes]).map_err(|_| bad("the policy is not UTF-8"))?;
    let input = std::str::from_utf8(&rest[header.body_bytes..]).map_err(|_| bad("the input is not UTF-8"))?;
    let kind: PolicyKind = header.kind.parse().map_err(|e: String| bad(&e))?;
    let policy = Policy::compile(kind, body).map_err(|e| EvalError::Rego { message: format!("the policy does not compile: {e}") })?;
    let mut engine = policy.engine();
    evaluate(&mut engine, kind, policy.package(), input, Duration::from_millis(header.time_ms))
}

fn answer(a: &Answer) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, a).is_ok() && out.flush().is_ok();
    if written { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
