//! The Policies page: every policy with its kind, latest version, labels and
//! the stacks it applies to; and, for admins, the workbench: a policy not
//! attached anywhere yet, evaluated against the recorded inputs of past
//! runs ("what would this have decided"), nothing recorded or changed.
//! Both go through the API (`policies`, `testPolicy`), as a script would.

use askama::Template;
use serde_json::{Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, Session, html, op_error};
use crate::Console;
use crate::view::{Badge, Frame, Viewer};

pub(crate) struct PolicyLine {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) version: i64,
    pub(crate) labels: Vec<String>,
    pub(crate) stacks: Vec<String>,
    pub(crate) description: String,
}

pub(crate) struct ReplayLine {
    /// Empty for a push that made no run; `stack_id` then says whose it was.
    pub(crate) run_id: String,
    pub(crate) stack_id: String,
    pub(crate) recorded: String,
    pub(crate) result: Badge,
    pub(crate) messages: Vec<(String, String)>,
    pub(crate) error: Option<String>,
    pub(crate) millis: String,
}

/// What the workbench was given, shown again with its answer.
pub(crate) struct Workbench {
    pub(crate) kind: String,
    pub(crate) body: String,
    pub(crate) runs: i64,
    pub(crate) replays: Option<Vec<ReplayLine>>,
}

#[derive(Template)]
#[template(path = "policies.html")]
struct PoliciesPage {
    frame: Frame,
    viewer: Viewer,
    policies: Vec<PolicyLine>,
    bench: Workbench,
}

const LIST: &str = "query { policies { name kind description labels versions { version } stacks { slug } } }";
const TEST: &str = "query($k: PolicyKindValue!, $b: String!, $r: Int!) { testPolicy(kind: $k, body: $b, runs: $r) { runId stackId recordedPolicy recordedVersion recordedResult result messages { level text } error durationMs } }";
const KINDS: [&str; 4] = ["PLAN", "APPROVAL", "TRIGGER", "PUSH"];

fn lines(d: &Value) -> Vec<PolicyLine> {
    d["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PolicyLine {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            kind: p["kind"].as_str().unwrap_or_default().to_lowercase(),
            version: p["versions"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_i64()).max().unwrap_or(0),
            labels: p["labels"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_string)).collect(),
            stacks: p["stacks"].as_array().into_iter().flatten().filter_map(|s| s["slug"].as_str().map(str::to_string)).collect(),
            description: p["description"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

fn replay_lines(d: &Value) -> Vec<ReplayLine> {
    d["testPolicy"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let result = r["result"].as_str().unwrap_or("error");
            ReplayLine {
                run_id: r["runId"].as_str().unwrap_or_default().to_string(),
                stack_id: r["stackId"].as_str().unwrap_or_default().to_string(),
                recorded: format!(
                    "{} by {} v{}",
                    r["recordedResult"].as_str().unwrap_or_default(),
                    r["recordedPolicy"].as_str().unwrap_or_default(),
                    r["recordedVersion"].as_i64().unwrap_or_default()
                ),
                result: Badge::policy(result),
                messages: r["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| (m["level"].as_str().unwrap_or_default().to_string(), m["text"].as_str().unwrap_or_default().to_string()))
                    .collect(),
                error: r["error"].as_str().map(str::to_string),
                millis: format!("{:.1}", r["durationMs"].as_f64().unwrap_or_default()),
            }
        })
        .collect()
}

async fn page(c: &Console, s: &Session, bench: Workbench) -> Response {
    match c.backend.execute(Some(&s.token), LIST, json!({})).await {
        Ok(d) => html(
            StatusCode::OK,
            &PoliciesPage { frame: Frame::new("Policies", "policies", Some(s.viewer.clone())), viewer: s.viewer.clone(), policies: lines(&d), bench },
        ),
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn list(c: &Console, s: &Session) -> Response {
    page(c, s, Workbench { kind: "PLAN".into(), body: String::new(), runs: 10, replays: None }).await
}

/// The workbench's answer: the replays, on the same page, the body kept in
/// its field to edit and try again.
pub(super) async fn test(c: &Console, s: &Session, req: &Req) -> Response {
    let kind = req.field("kind").filter(|k| KINDS.contains(k)).unwrap_or("PLAN").to_string();
    let body = req.field("body").unwrap_or_default().replace("\r\n", "\n");
    let runs = req.field("runs").and_then(|r| r.trim().parse::<i64>().ok()).unwrap_or(10);
    match c.backend.execute(Some(&s.token), TEST, json!({ "k": kind, "b": body, "r": runs })).await {
        Ok(d) => page(c, s, Workbench { kind, body, runs, replays: Some(replay_lines(&d)) }).await,
        Err(e) => op_error(&s.viewer, &e),
    }
}
