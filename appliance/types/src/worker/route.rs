//! The worker API's routes, defined once: each call's method, path and body.
//! The worker builds its URLs with [`WorkerRoute::path`]; the server matches a
//! request with [`WorkerRoute::parse`] and holds its body to
//! [`WorkerRoute::body`]. Tool downloads have their own [`ToolDownload`].

use std::fmt;

use super::{MAX_PLAN_BYTES, MAX_PLAN_JSON_BYTES, Phase};

/// Largest JSON body of a worker call.
pub const MAX_JSON_BYTES: u64 = 256 * 1024;
/// Largest log chunk the appliance stores. Workers send at most 64 KiB; the
/// margin is for other senders, not an invitation.
pub const MAX_LOG_CHUNK_BYTES: u64 = 1024 * 1024;
/// Highest log chunk number: a million 64 KiB chunks is 64 GiB of output for
/// one phase, far past any log worth keeping.
pub const MAX_LOG_SEQ: u64 = 999_999;
/// Largest `errored.tfstate` the appliance stores (sealed, in one piece).
pub const MAX_ERRORED_STATE_BYTES: u64 = 64 * 1024 * 1024;

/// The HTTP methods of the worker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Nothing.
    Empty,
    /// JSON of the call's request type, at most `max` bytes.
    Json { max: u64 },
    /// Raw bytes (`application/octet-stream`), at most `max`.
    Bytes { max: u64 },
}

impl Body {
    /// The most bytes accepted.
    pub fn max(self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Json { max } | Body::Bytes { max } => max,
        }
    }
}

/// A call of the worker API. The table of the module documentation of
/// [`crate::worker`] lists the request and answer types of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerRoute {
    /// `POST /api/v1/workers/join`: [`super::JoinRequest`] → [`super::JoinResponse`]; no client certificate yet.
    Join,
    /// `POST /api/v1/worker/heartbeat`: [`super::Heartbeat`] → [`super::HeartbeatReply`].
    Heartbeat,
    /// `POST /api/v1/worker/claim` → 200 [`super::RunAssignment`] or 204.
    Claim,
    /// `POST /api/v1/worker/claim/wait`: [`super::ClaimWait`] → [`super::ClaimWaitReply`].
    /// The long poll of the HTTP transport: held open until a run of the pool
    /// is claimed for the worker or the wait ends.
    ClaimWait,
    /// `GET /api/v1/worker/runs/{run}` → [`super::RunStatus`].
    RunStatus { run: i64 },
    /// `POST /api/v1/worker/runs/{run}/state`: [`super::StateReport`] → 200 [`super::RunStatus`], 409 [`super::RunStatus`] when refused.
    ReportState { run: i64 },
    /// `POST /api/v1/worker/runs/{run}/logs/{phase}/{seq}`: raw bytes (masked) → 204.
    LogChunk { run: i64, phase: Phase, seq: u64 },
    /// `POST /api/v1/worker/runs/{run}/plan`: raw bytes → [`super::PlanStored`].
    StorePlan { run: i64 },
    /// `GET /api/v1/worker/runs/{run}/plan` → raw bytes.
    FetchPlan { run: i64 },
    /// `POST /api/v1/worker/runs/{run}/errored-state`: raw bytes → 204.
    ErroredState { run: i64 },
    /// `POST /api/v1/worker/runs/{run}/plan-json`: the plan as `terraform show
    /// -json` printed it, for the appliance's plan policies → 204.
    StorePlanJson { run: i64 },
}

/// Why a request is no call of the worker API, each naming what it got.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such worker call")]
    Unknown,
    #[error("{method} is not answered on this path")]
    Method { method: String },
    #[error("{given:?} is not a run id")]
    RunId { given: String },
    #[error("unknown log phase {given:?} (expected preparing, initializing, planning or applying)")]
    Phase { given: String },
    #[error("chunk number {given:?} is not between 0 and {MAX_LOG_SEQ}")]
    Seq { given: String },
}

/// Segments are echoed back in errors; this keeps them short.
fn echo(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A run id as it appears in paths: a positive decimal number.
pub fn parse_run_id(s: &str) -> Result<i64, RouteError> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse::<i64>().ok())
        .flatten()
        .filter(|v| *v > 0)
        .ok_or_else(|| RouteError::RunId { given: echo(s) })
}

/// A log phase exactly as it appears in paths (`planning`), nothing else.
pub fn parse_phase(s: &str) -> Result<Phase, RouteError> {
    Phase::parse(s).ok_or_else(|| RouteError::Phase { given: echo(s) })
}

/// A chunk number as it appears in paths: decimal digits only, at most [`MAX_LOG_SEQ`].
pub fn parse_seq(s: &str) -> Result<u64, RouteError> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse::<u64>().ok())
        .flatten()
        .filter(|v| *v <= MAX_LOG_SEQ)
        .ok_or_else(|| RouteError::Seq { given: echo(s) })
}

impl WorkerRoute {
    /// Where the calls of a joined worker live.
    pub const PREFIX: &'static str = "/api/v1/worker";
    /// Where joining workers call.
    pub const JOIN_PATH: &'static str = "/api/v1/workers/join";

    pub fn method(self) -> Method {
        match self {
            WorkerRoute::RunStatus { .. } | WorkerRoute::FetchPlan { .. } => Method::Get,
            _ => Method::Post,
        }
    }

    /// The path, from the root of the appliance's URL.
    pub fn path(self) -> String {
        let p = Self::PREFIX;
        match self {
            WorkerRoute::Join => Self::JOIN_PATH.to_string(),
            WorkerRoute::Heartbeat => format!("{p}/heartbeat"),
            WorkerRoute::Claim => format!("{p}/claim"),
            WorkerRoute::ClaimWait => format!("{p}/claim/wait"),
            WorkerRoute::RunStatus { run } => format!("{p}/runs/{run}"),
            WorkerRoute::ReportState { run } => format!("{p}/runs/{run}/state"),
            WorkerRoute::LogChunk { run, phase, seq } => format!("{p}/runs/{run}/logs/{}/{seq}", phase.as_str()),
            WorkerRoute::StorePlan { run } | WorkerRoute::FetchPlan { run } => format!("{p}/runs/{run}/plan"),
            WorkerRoute::ErroredState { run } => format!("{p}/runs/{run}/errored-state"),
            WorkerRoute::StorePlanJson { run } => format!("{p}/runs/{run}/plan-json"),
        }
    }

    /// What the call sends.
    pub fn body(self) -> Body {
        match self {
            WorkerRoute::Join | WorkerRoute::Heartbeat | WorkerRoute::ClaimWait | WorkerRoute::ReportState { .. } => {
                Body::Json { max: MAX_JSON_BYTES }
            }
            WorkerRoute::Claim | WorkerRoute::RunStatus { .. } | WorkerRoute::FetchPlan { .. } => Body::Empty,
            WorkerRoute::LogChunk { .. } => Body::Bytes { max: MAX_LOG_CHUNK_BYTES },
            WorkerRoute::StorePlan { .. } => Body::Bytes { max: MAX_PLAN_BYTES },
            WorkerRoute::ErroredState { .. } => Body::Bytes { max: MAX_ERRORED_STATE_BYTES },
            WorkerRoute::StorePlanJson { .. } => Body::Bytes { max: MAX_PLAN_JSON_BYTES },
        }
    }

    /// The run the call is about, if any.
    pub fn run(self) -> Option<i64> {
        match self {
            WorkerRoute::Join | WorkerRoute::Heartbeat | WorkerRoute::Claim | WorkerRoute::ClaimWait => None,
            WorkerRoute::RunStatus { run }
            | WorkerRoute::ReportState { run }
            | WorkerRoute::LogChunk { run, .. }
            | WorkerRoute::StorePlan { run }
            | WorkerRoute::FetchPlan { run }
            | WorkerRoute::ErroredState { run }
            | WorkerRoute::StorePlanJson { run } => Some(run),
        }
    }

    /// The call `method` on `path` (percent-decoded segments after the root,
    /// `["api", "v1", "worker", "claim"]`) makes. A known path with another
    /// method is [`RouteError::Method`]; a malformed id, phase or chunk number
    /// is named.
    pub fn parse(method: &str, path: &[&str]) -> Result<WorkerRoute, RouteError> {
        let route = match path {
            ["api", "v1", "workers", "join"] => WorkerRoute::Join,
            ["api", "v1", "worker", rest @ ..] => match rest {
                ["heartbeat"] => WorkerRoute::Heartbeat,
                ["claim"] => WorkerRoute::Claim,
                ["claim", "wait"] => WorkerRoute::ClaimWait,
                ["runs", id] => WorkerRoute::RunStatus { run: parse_run_id(id)? },
                ["runs", id, "state"] => WorkerRoute::ReportState { run: parse_run_id(id)? },
                ["runs", id, "errored-state"] => WorkerRoute::ErroredState { run: parse_run_id(id)? },
                ["runs", id, "plan-json"] => WorkerRoute::StorePlanJson { run: parse_run_id(id)? },
                ["runs", id, "plan"] => {
                    let run = parse_run_id(id)?;
                    // One path, two calls: the method picks.
                    if method == Method::Get.as_str() {
                        WorkerRoute::FetchPlan { run }
                    } else {
                        WorkerRoute::StorePlan { run }
                    }
                }
                ["runs", id, "logs", phase, seq] => {
                    WorkerRoute::LogChunk { run: parse_run_id(id)?, phase: parse_phase(phase)?, seq: parse_seq(seq)? }
                }
                _ => return Err(RouteError::Unknown),
            },
            _ => return Err(RouteError::Unknown),
        };
        if route.method().as_str() != method {
            return Err(RouteError::Method { method: echo(method) });
        }
        Ok(route)
    }
}

/// `GET /v1/tools/{tool}/{version}/{os}_{arch}`: a tool binary, its SHA-256 in
/// the `x-hangar-sha256` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolDownload<'a> {
    pub tool: &'a str,
    pub version: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
}

/// The tool name under which the appliance serves `hangar-worker` binaries.
pub const WORKER_TOOL: &str = "hangar-worker";
/// The version of a tool download that names the highest one present.
pub const LATEST_VERSION: &str = "latest";
/// The response header naming the version a tool download served.
pub const VERSION_HEADER: &str = "x-hangar-version";

impl<'a> ToolDownload<'a> {
    pub const PREFIX: &'static str = "/v1/tools";

    pub fn path(&self) -> String {
        format!("{}/{}/{}/{}_{}", Self::PREFIX, self.tool, self.version, self.os, self.arch)
    }

    /// The download named by the segments after [`Self::PREFIX`]; the server
    /// still checks each against its own alphabet before touching a file.
    pub fn parse(tail: &[&'a str]) -> Option<ToolDownload<'a>> {
        let [tool, version, platform] = tail else { return None };
        let (os, arch) = platform.split_once('_')?;
        Some(ToolDownload { tool, version, os, arch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<&str> {
        path.trim_start_matches('/').split('/').collect()
    }

    #[test]
    fn every_route_parses_back_from_its_own_path() {
        let all = [
            WorkerRoute::Join,
            WorkerRoute::Heartbeat,
            WorkerRoute::Claim,
            WorkerRoute::ClaimWait,
            WorkerRoute::RunStatus { run: 7 },
            WorkerRoute::ReportState { run: 7 },
            WorkerRoute::LogChunk { run: 7, phase: Phase::Planning, seq: 12 },
            WorkerRoute::StorePlan { run: 7 },
            WorkerRoute::FetchPlan { run: 7 },
            WorkerRoute::ErroredState { run: 7 },
            WorkerRoute::StorePlanJson { run: 7 },
        ];
        for r in all {
            let path = r.path();
            assert_eq!(WorkerRoute::parse(r.method().as_str(), &segments(&path)), Ok(r), "{path}");
        }
        assert_eq!(WorkerRoute::LogChunk { run: 7, phase: Phase::Planning, seq: 12 }.path(), "/api/v1/worker/runs/7/logs/planning/12");
    }

    #[test]
    fn malformed_paths_are_named() {
        fn p(method: &str, path: &str) -> Result<WorkerRoute, RouteError> {
            WorkerRoute::parse(method, &segments(path))
        }
        assert_eq!(p("POST", "/api/v1/worker/nope"), Err(RouteError::Unknown));
        assert_eq!(p("GET", "/api/v1/worker/claim"), Err(RouteError::Method { method: "GET".into() }));
        assert_eq!(p("DELETE", "/api/v1/worker/runs/3/plan"), Err(RouteError::Method { method: "DELETE".into() }));
        for bad in ["0", "-1", "+1", "x", "99999999999999999999", ""] {
            let path = format!("/api/v1/worker/runs/{bad}/state");
            assert!(matches!(p("POST", &path), Err(RouteError::RunId { .. })), "{bad:?}");
        }
        for bad in ["Planning", "planning ", "", "plan", "PLANNING"] {
            let path = format!("/api/v1/worker/runs/1/logs/{bad}/0");
            assert!(matches!(p("POST", &path), Err(RouteError::Phase { .. })), "{bad:?}");
        }
        for bad in ["-1", "+1", "1e3", "", " 1", "1000000", "18446744073709551616", "0x10"] {
            let path = format!("/api/v1/worker/runs/1/logs/planning/{bad}");
            assert!(matches!(p("POST", &path), Err(RouteError::Seq { .. })), "{bad:?}");
        }
        assert_eq!(parse_seq("000017"), Ok(17));
        assert_eq!(parse_seq(&MAX_LOG_SEQ.to_string()), Ok(MAX_LOG_SEQ));
    }

    #[test]
    fn bodies_are_bounded_per_call() {
        assert_eq!(WorkerRoute::Heartbeat.body(), Body::Json { max: MAX_JSON_BYTES });
        assert_eq!(WorkerRoute::Claim.body().max(), 0);
        assert_eq!(WorkerRoute::StorePlan { run: 1 }.body().max(), MAX_PLAN_BYTES);
        assert_eq!(WorkerRoute::StorePlanJson { run: 1 }.body().max(), MAX_PLAN_JSON_BYTES);
    }

    #[test]
    fn tool_downloads_round_trip() {
        let t = ToolDownload { tool: "terraform", version: "1.0.3", os: "linux", arch: "amd64" };
        assert_eq!(t.path(), "/v1/tools/terraform/1.0.3/linux_amd64");
        let path = t.path();
        let segs = segments(&path);
        assert_eq!(ToolDownload::parse(&segs[2..]), Some(t));
        assert_eq!(ToolDownload::parse(&["terraform", "1.0.3"]), None);
        assert_eq!(ToolDownload::parse(&["terraform", "1.0.3", "linux"]), None);
    }
}
