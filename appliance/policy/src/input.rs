//! The documents policies receive as `input`, one type per kind. They are the
//! contract between the appliance and the policies its users write: fields are
//! only ever added.

use serde::{Deserialize, Serialize};

/// A plan policy's `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// The plan exactly as `terraform show -json` printed it
    /// (`input.plan.resource_changes`, `input.plan.variables`, ...).
    pub plan: serde_json::Value,
    pub run: RunInput,
    pub stack: StackInput,
}

/// An approval policy's `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalInput {
    pub run: RunInput,
    pub stack: StackInput,
    /// What the plan changes, when the run planned.
    pub plan: Option<PlanSummary>,
    /// Every review of the run so far, oldest first; a reviewer who reviewed
    /// twice appears once, with the latest review.
    pub reviews: Vec<ReviewInput>,
}

/// A trigger policy's `input`: a tracked run that ended, and the stacks it
/// may start (`trigger` names them by slug).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerInput {
    /// The run that ended: `input.run.state` is `FINISHED`, `FAILED`, ….
    pub run: RunInput,
    pub stack: StackInput,
    /// Every stack of the appliance, by slug.
    pub stacks: Vec<StackInput>,
}

/// The run a policy decides about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInput {
    pub id: i64,
    /// `tracked`, `proposed`, `drift` or `task`.
    pub kind: String,
    /// The run's state when the policy was evaluated (`PLANNING`, `UNCONFIRMED`).
    pub state: String,
    pub commit_sha: String,
    pub branch: String,
    /// Who or what started it, as the run records it (`alice@example.com`,
    /// `push to main`, `schedule drift`).
    pub triggered_by: String,
    /// The user who authored the change, when Hangar knows it: the user who
    /// triggered the run by hand. `null` for runs started by a push or a schedule.
    pub author: Option<String>,
}

/// The stack of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackInput {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub labels: Vec<String>,
    pub branch: String,
    pub repository: String,
}

/// A plan's change counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
    pub outputs: u32,
}

/// A review's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    Approve,
    Reject,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approve => "approve",
            ReviewDecision::Reject => "reject",
        }
    }
}

/// One review of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewInput {
    /// The reviewer's email.
    pub reviewer: String,
    /// The reviewer's role when reviewing: `reader`, `writer` or `admin`.
    pub role: String,
    pub decision: ReviewDecision,
    pub note: String,
    /// Whether the reviewer is the run's author; `null` when the author is unknown.
    pub is_author: Option<bool>,
    /// RFC 3339.
    pub at: String,
}

/// A push policy's `input`: one push to the repository of a stack, and what
/// Hangar would do with it without push policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushInput {
    pub push: PushEvent,
    pub stack: StackInput,
    /// The stack's project root (`.` for the repository's root).
    pub project_root: String,
    /// What happens when no push policy decides: `track` or `ignore`.
    pub default: String,
    /// Why, in words (`the push changes nothing under infra/`).
    pub default_reason: String,
}

/// A push, as the git server (or a poll of it) told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    /// The repository's full name, `team/infra`.
    pub repository: String,
    /// The branch pushed to.
    pub branch: String,
    /// Whether it is the branch the stack tracks.
    pub tracked_branch: bool,
    /// The commit before the push; `null` for a new branch.
    pub before: Option<String>,
    /// The commit pushed.
    pub after: String,
    /// Who pushed, as the git server names them; `null` when it does not say.
    pub pusher: Option<String>,
    /// The paths the pushed commits change, as far as known.
    pub paths: Vec<String>,
    /// Whether `paths` lists every changed path (false when the git server
    /// truncated its list or sends none).
    pub paths_complete: bool,
    /// Whether the push changes something under the project root: `null`
    /// when not known.
    pub touches_project_root: Option<bool>,
}
