//! The worker protocol: what a worker host and the appliance say to each other.
//!
//! Everything here travels as JSON over HTTPS on the server's port, the worker
//! authenticated by its client certificate and its worker token. The MQTT broker
//! carries only [`Notification`]s — ids, never secrets — that tell a worker to
//! ask over HTTPS.
//!
//! The calls, each a [`WorkerRoute`] (method, path and body limit defined
//! there once; the worker builds its URLs and the server parses requests
//! with it):
//!
//! | call | method and path |
//! |---|---|
//! | join a pool (no client certificate yet) | `POST /api/v1/workers/join` [`JoinRequest`] → [`JoinResponse`] |
//! | heartbeat | `POST /api/v1/worker/heartbeat` [`Heartbeat`] → [`HeartbeatReply`] |
//! | claim a READY run of the pool | `POST /api/v1/worker/claim` → 200 [`RunAssignment`] or 204 |
//! | wait for a run and claim it (long poll) | `POST /api/v1/worker/claim/wait` [`ClaimWait`] → [`ClaimWaitReply`] |
//! | report a state change | `POST /api/v1/worker/runs/{id}/state` [`StateReport`] → 200 [`RunStatus`], 409 [`RunStatus`] when refused |
//! | current state of a run | `GET /api/v1/worker/runs/{id}` → [`RunStatus`] |
//! | append a log chunk | `POST /api/v1/worker/runs/{id}/logs/{phase}/{seq}` (raw bytes, masked) → 204 |
//! | store the saved plan | `POST /api/v1/worker/runs/{id}/plan` (raw bytes, at most [`MAX_PLAN_BYTES`]) → [`PlanStored`] |
//! | the saved plan back | `GET /api/v1/worker/runs/{id}/plan` → raw bytes |
//! | store the plan's JSON | `POST /api/v1/worker/runs/{id}/plan-json` (raw bytes, at most [`MAX_PLAN_JSON_BYTES`]) → 204 |
//! | upload `errored.tfstate` | `POST /api/v1/worker/runs/{id}/errored-state` (raw bytes) → 204 |
//! | a tool binary | `GET /v1/tools/{tool}/{version}/{os}_{arch}` → bytes, header `x-hangar-sha256` |
//! | provider mirror | `/v1/providers/…` (Terraform's provider network mirror protocol) |
//! | state backend | `/state/v1/{stack}` with HTTP basic auth `run:<run token>` |
//!
//! Conventions the worker (`hangar-worker`) follows:
//! - every `/api/v1/worker/…` call and tool download presents the client
//!   certificate and `Authorization: Bearer <worker token>`;
//! - log chunks are numbered per run and phase from 0 without gaps, and a chunk
//!   whose POST failed is sent again with the same number (so storing it under
//!   `(run, phase, seq)` makes retries harmless);
//! - a state report refused with 409 whose [`RunStatus`] already has the
//!   reported state counts as accepted (a claim may have moved the run to
//!   PREPARING itself);
//! - the plan goes to the appliance, which seals it before it reaches the
//!   object store (a plan holds the values of secret variables); the worker
//!   checks the size and SHA-256 the appliance answers against its own file;
//! - task runs report PLANNING while their command runs, then FINISHED or FAILED.

mod route;

use serde::{Deserialize, Serialize};

pub use route::{
    Body, LATEST_VERSION, MAX_ERRORED_STATE_BYTES, MAX_JSON_BYTES, MAX_LOG_CHUNK_BYTES, MAX_LOG_SEQ, Method, RouteError,
    ToolDownload, VERSION_HEADER, WORKER_TOOL, WorkerRoute, parse_phase, parse_run_id, parse_seq,
};

use crate::{RunKind, RunState, Tool};

/// MQTT topic a worker subscribes to: `/tenants/w<id>/#`. Pool-wide
/// notifications arrive on `/tenants/w<id>/pool`, its own on `/tenants/w<id>/worker`;
/// `work_available` for a READY run is sent to one idle worker on its own topic,
/// not to the pool.
pub fn worker_tenant(worker_id: i64) -> String {
    format!("w{worker_id}")
}

/// A broker notification. Only ids: details come over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notification {
    /// A run of this pool became READY: try to claim.
    WorkAvailable { pool: i64 },
    /// A run this worker holds was confirmed: apply.
    RunConfirmed { run: i64 },
    /// A run this worker holds was stopped or canceled: kill its process group.
    RunCanceled { run: i64 },
}

/// What a joining worker sends, with the one-time join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// A name for operators (defaults to the host name).
    pub name: String,
    /// A PKCS#10 request for the worker's key, made on the worker host.
    pub csr_pem: String,
    pub host: HostInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
}

/// What the appliance answers a successful join. The token is shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub worker_id: i64,
    pub pool_id: i64,
    pub pool_name: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub worker_token: String,
    /// `https://host:1983`
    pub server_url: String,
    /// `mqtts://host:1984`
    pub broker_url: String,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("worker_id", &self.worker_id)
            .field("pool_id", &self.pool_id)
            .field("worker_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A worker's condition, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    Idle,
    Busy,
    /// Finishing what it holds and taking nothing new.
    Drained,
    Offline,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Idle => "idle",
            WorkerStatus::Busy => "busy",
            WorkerStatus::Drained => "drained",
            WorkerStatus::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub status: WorkerStatus,
    /// The run it holds, whose lease this heartbeat renews.
    pub run: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Until when the held run's lease now lasts (RFC 3339), if one is held.
    pub lease_expires_at: Option<String>,
    /// The held run's state, so a lost notification is caught up with.
    pub run_state: Option<RunState>,
    /// The operator drained this worker: take nothing new.
    pub drain: bool,
}

/// The worker transport: how a worker learns that there is work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Notifications from the MQTT broker, claims over HTTPS.
    #[default]
    Mqtt,
    /// Only HTTPS: a long-poll claim ([`ClaimWait`]) held open by the server.
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
        }
    }
}

/// The longest wait a worker may ask of a long-poll claim, in seconds.
pub const MAX_CLAIM_WAIT_SECS: u64 = 300;

/// A long-poll claim: the worker, idle, asks for a run of its pool and is
/// ready to wait for one. The call also counts as the idle worker's
/// heartbeat, at its start and at its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimWait {
    /// How long the worker waits for an answer at most (1 to
    /// [`MAX_CLAIM_WAIT_SECS`]); the server answers within the lesser of this
    /// and its own bound, so that no proxy between them times the call out.
    pub max_wait_secs: u64,
}

/// The answer to a long-poll claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimWaitReply {
    /// The run claimed for this worker, if one came during the wait.
    pub run: Option<RunAssignment>,
    /// The operator drained this worker: take nothing new (it is given none).
    pub drain: bool,
}

/// A claimed run: everything a worker needs to execute it. Carries secrets
/// (secret variables, the run token): only ever over HTTPS, never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAssignment {
    pub run_id: i64,
    pub kind: RunKind,
    pub stack: StackSpec,
    pub commit_sha: String,
    pub branch: String,
    /// For task runs.
    pub command: Option<String>,
    pub env: Vec<EnvVar>,
    /// Run-scoped credential for the state backend and run endpoints; dies with the run.
    pub run_token: String,
    /// `https://host:1983/state/v1/<stack slug>`
    pub state_url: String,
    pub tool: ToolSpec,
    /// `https://host:1983/v1/providers/`
    pub provider_mirror_url: String,
    pub lease_expires_at: String,
    /// Apply without waiting for a human (tracked runs with changes).
    pub autodeploy: bool,
}

impl std::fmt::Debug for RunAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunAssignment")
            .field("run_id", &self.run_id)
            .field("kind", &self.kind)
            .field("stack", &self.stack.slug)
            .field("commit_sha", &self.commit_sha)
            .field("env", &self.env.iter().map(|e| e.name.as_str()).collect::<Vec<_>>())
            .field("run_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    pub id: i64,
    pub slug: String,
    pub repository: String,
    pub project_root: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    /// Masked in logs wherever it appears.
    pub secret: bool,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret { "<secret>" } else { self.value.as_str() };
        f.debug_struct("EnvVar").field("name", &self.name).field("value", &value).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub tool: Tool,
    pub version: String,
    /// Where to download it from the appliance.
    pub url: String,
    /// Hex SHA-256 the download must have.
    pub sha256: String,
}

/// A planned change summary, as Terraform's plan reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
    /// Output values the plan changes. A plan changing only outputs still has
    /// something to apply (Terraform's `-detailed-exitcode` says 2), though no
    /// resource changes. Absent from older reports.
    #[serde(default)]
    pub outputs: u32,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.add + self.change + self.destroy > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateReport {
    pub to: RunState,
    /// Why (shown in the run's history), e.g. the failing command's last line.
    pub note: String,
    /// With the report leaving PLANNING.
    pub changes: Option<Changes>,
    /// The checked-out commit's message, with the report entering
    /// INITIALIZING (the worker is the one place that reads the commit for
    /// every kind of run, manual triggers included). The appliance keeps its
    /// first line, at most [`MAX_COMMIT_MESSAGE_CHARS`] characters. Absent
    /// from older workers' reports; a worker must not be newer than its
    /// appliance, whose strict parsing refuses fields it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
}

/// The most of a commit message's first line the appliance keeps.
pub const MAX_COMMIT_MESSAGE_CHARS: usize = 500;

/// What the appliance keeps of a commit message: its first non-blank line,
/// control characters dropped, at most [`MAX_COMMIT_MESSAGE_CHARS`]
/// characters; `None` when nothing is left.
pub fn commit_subject(message: &str) -> Option<String> {
    let line = message.lines().map(str::trim).find(|l| !l.is_empty())?;
    let subject: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_COMMIT_MESSAGE_CHARS)
        .collect();
    let subject = subject.trim();
    (!subject.is_empty()).then(|| subject.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_id: i64,
    pub state: RunState,
    pub failure_reason: Option<String>,
}

/// Largest saved plan the appliance stores. Plans are sealed in one piece, so
/// this bounds the server's memory per upload; real plans are far smaller.
pub const MAX_PLAN_BYTES: u64 = 64 * 1024 * 1024;

/// Largest plan JSON (`terraform show -json`) the appliance keeps for plan
/// policies. A plan over it is not uploaded; a stack with plan policies then
/// fails its run, since no policy could read the plan.
pub const MAX_PLAN_JSON_BYTES: u64 = 32 * 1024 * 1024;

/// A saved plan as the worker has it on disk: what the appliance's
/// [`PlanStored`] must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanUpload {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// What the appliance stored (sealed) for a run's plan: size and SHA-256 of
/// the plaintext it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStored {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Log phases, one object per chunk under each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Preparing,
    Initializing,
    Planning,
    Applying,
}

impl Phase {
    /// Every phase, in the order a run goes through them.
    pub const ALL: [Phase; 4] = [Phase::Preparing, Phase::Initializing, Phase::Planning, Phase::Applying];

    /// The phase named exactly as in paths and object keys (`planning`).
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Initializing => "initializing",
            Phase::Planning => "planning",
            Phase::Applying => "applying",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_small_tagged_json() {
        let n = Notification::WorkAvailable { pool: 3 };
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"{"type":"work_available","pool":3}"#);
        let back: Notification = serde_json::from_str(r#"{"type":"run_canceled","run":9}"#).unwrap();
        assert_eq!(back, Notification::RunCanceled { run: 9 });
        assert!(serde_json::from_str::<Notification>(r#"{"type":"rm -rf"}"#).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let v = EnvVar { name: "TF_VAR_pw".into(), value: "hunter2".into(), secret: true };
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn a_commit_message_is_kept_as_its_bounded_first_line() {
        assert_eq!(commit_subject("\n  \nFix the VPC\n\nLong body").as_deref(), Some("Fix the VPC"));
        assert_eq!(commit_subject("a\u{1b}[31mred\u{7}\r\nrest").as_deref(), Some("a[31mred"));
        assert_eq!(commit_subject(&"é".repeat(2000)).unwrap().chars().count(), MAX_COMMIT_MESSAGE_CHARS);
        assert_eq!(commit_subject(" \n\t\n"), None);
        assert_eq!(commit_subject("\u{0}\u{1}"), None);
        // Older workers send no message; a report without one stays as it was.
        let old: StateReport = serde_json::from_str(r#"{"to":"INITIALIZING","note":"n","changes":null}"#).unwrap();
        assert_eq!(old.commit_message, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("commit_message"));
    }
}
