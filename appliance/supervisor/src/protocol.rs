//! The control protocol between `hangar ctl` and `hangar supervise`: JSON lines
//! over a unix socket. The client sends one request line; the supervisor answers
//! with one response line, or, for `tail`, a stream of `data` lines ended by a
//! line with `end` (a follow ends only when the client hangs up). Every line
//! carries `v`; a supervisor answers a version it does not speak with an error.

use serde::{Deserialize, Serialize};

use crate::reaper::ExitInfo;

pub const VERSION: u32 = 1;

/// Longest request line the supervisor reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Starts a stopped or FAILED service; with `wait`, answers once it is ready.
    Start {
        service: String,
        #[serde(default)]
        wait: bool,
    },
    /// Stops a service (stop signal, then SIGKILL); answers once it is stopped.
    Stop { service: String },
    /// Stops then starts, ignoring the back-off; with `wait`, answers once ready.
    Restart {
        service: String,
        #[serde(default)]
        wait: bool,
    },
    /// The last `lines` lines of the service's log, then more as they come if `follow`.
    Tail {
        service: String,
        #[serde(default = "default_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
}

fn default_lines() -> usize {
    50
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// A response line. Only the fields that apply are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceStatus>>,
    /// Problem with the last configuration reload, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            v: VERSION,
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            v: VERSION,
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }

    pub fn message(message: impl Into<String>) -> Response {
        Response {
            message: Some(message.into()),
            ..Response::ok()
        }
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started yet, or running but unready, because a dependency is not ready.
    Waiting,
    /// Started, its readiness check not passed yet.
    Starting,
    Ready,
    /// Was ready; its check fails now (it is not killed for that).
    Unready,
    /// Exited; will be started again after its back-off.
    Backoff,
    /// Hit its start limit; stays down until `hangar ctl start`.
    Failed,
    Stopping,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unready => "unready",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service as `ctl status` shows it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    /// When the current child was started.
    pub started_at_ms: Option<i64>,
    /// When the service entered its current state.
    pub since_ms: i64,
    /// Starts after the first one (crash restarts and operator restarts).
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    pub last_exit_at_ms: Option<i64>,
    /// The readiness check's last answer, or why the service waits.
    pub detail: String,
}

impl ServiceStatus {
    pub fn new(name: &str) -> ServiceStatus {
        ServiceStatus {
            name: name.to_string(),
            state: State::Waiting,
            pid: None,
            started_at_ms: None,
            since_ms: now_ms(),
            restarts: 0,
            last_exit: None,
            last_exit_at_ms: None,
            detail: String::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
