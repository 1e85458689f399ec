//! Runs: their kinds, their states as Spacelift names them, and the single table
//! of transitions every part of Hangar checks against.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a run exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// From the stack's tracked branch; may apply.
    Tracked,
    /// From a pull/merge request; plans only.
    Proposed,
    /// A scheduled plan that detects drift; plans only.
    Drift,
    /// One command in the stack's workspace.
    Task,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Tracked => "tracked",
            RunKind::Proposed => "proposed",
            RunKind::Drift => "drift",
            RunKind::Task => "task",
        }
    }

    /// Runs of this kind hold the stack: at most one of them is past QUEUED at a time.
    /// Proposed and drift runs only plan, so they run in parallel.
    pub fn holds_stack(self) -> bool {
        matches!(self, RunKind::Tracked | RunKind::Task)
    }

    /// Whether a run of this kind can go on to apply.
    pub fn may_apply(self) -> bool {
        matches!(self, RunKind::Tracked)
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "tracked" => RunKind::Tracked,
            "proposed" => RunKind::Proposed,
            "drift" => RunKind::Drift,
            "task" => RunKind::Task,
            other => return Err(format!("unknown run kind {other:?}")),
        })
    }
}

/// The IaC tool a stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Terraform,
    Opentofu,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Terraform => "terraform",
            Tool::Opentofu => "opentofu",
        }
    }
}

impl FromStr for Tool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "terraform" => Ok(Tool::Terraform),
            "opentofu" => Ok(Tool::Opentofu),
            other => Err(format!("unknown tool {other:?} (expected terraform or opentofu)")),
        }
    }
}

/// Run states. `QUEUED → READY → PREPARING → INITIALIZING → PLANNING →
/// (UNCONFIRMED → CONFIRMED → APPLYING) → FINISHED`, and the terminal `FAILED`,
/// `DISCARDED`, `CANCELED` and `STOPPED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    Queued,
    Ready,
    Preparing,
    Initializing,
    Planning,
    Unconfirmed,
    Confirmed,
    Applying,
    Finished,
    Failed,
    Discarded,
    Canceled,
    Stopped,
}

/// A transition the table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: RunState,
    pub to: RunState,
}

impl RunState {
    pub const ALL: [RunState; 13] = [
        RunState::Queued,
        RunState::Ready,
        RunState::Preparing,
        RunState::Initializing,
        RunState::Planning,
        RunState::Unconfirmed,
        RunState::Confirmed,
        RunState::Applying,
        RunState::Finished,
        RunState::Failed,
        RunState::Discarded,
        RunState::Canceled,
        RunState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Ready => "READY",
            RunState::Preparing => "PREPARING",
            RunState::Initializing => "INITIALIZING",
            RunState::Planning => "PLANNING",
            RunState::Unconfirmed => "UNCONFIRMED",
            RunState::Confirmed => "CONFIRMED",
            RunState::Applying => "APPLYING",
            RunState::Finished => "FINISHED",
            RunState::Failed => "FAILED",
            RunState::Discarded => "DISCARDED",
            RunState::Canceled => "CANCELED",
            RunState::Stopped => "STOPPED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Finished | RunState::Failed | RunState::Discarded | RunState::Canceled | RunState::Stopped
        )
    }

    /// A worker holds the run (under a lease) in these states.
    pub fn is_on_worker(self) -> bool {
        matches!(
            self,
            RunState::Preparing | RunState::Initializing | RunState::Planning | RunState::Confirmed | RunState::Applying
        )
    }

    /// The one table of allowed transitions.
    ///
    /// - QUEUED waits for its stack; READY waits for a worker of its pool.
    /// - CANCELED: stopped before a worker started it. STOPPED: stopped while a
    ///   worker ran it, but never while APPLYING (as in Spacelift: interrupting an
    ///   apply can leave state and reality apart).
    /// - PLANNING goes to UNCONFIRMED for a tracked run with changes, straight to
    ///   APPLYING when the stack autodeploys, or to FINISHED when there is nothing
    ///   to apply (no changes, or a kind that only plans).
    /// - READY may return to QUEUED when its pool is reset before any worker took it.
    pub fn can_become(self, to: RunState) -> bool {
        use RunState::*;
        match self {
            Queued => matches!(to, Ready | Canceled | Failed),
            Ready => matches!(to, Preparing | Queued | Canceled | Failed),
            Preparing => matches!(to, Initializing | Failed | Stopped),
            Initializing => matches!(to, Planning | Failed | Stopped),
            Planning => matches!(to, Unconfirmed | Applying | Finished | Failed | Stopped),
            Unconfirmed => matches!(to, Confirmed | Discarded | Failed),
            Confirmed => matches!(to, Applying | Failed | Stopped),
            Applying => matches!(to, Finished | Failed),
            Finished | Failed | Discarded | Canceled | Stopped => false,
        }
    }

    /// `Ok(to)` when the table allows it.
    pub fn transition(self, to: RunState) -> Result<RunState, TransitionError> {
        if self.can_become(to) { Ok(to) } else { Err(TransitionError { from: self, to }) }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::{self, *};

    #[test]
    fn terminal_states_go_nowhere_and_names_round_trip() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
            if s.is_terminal() {
                assert!(RunState::ALL.iter().all(|t| !s.can_become(*t)), "{s}");
            }
        }
    }

    #[test]
    fn the_happy_paths_exist() {
        let apply = [Queued, Ready, Preparing, Initializing, Planning, Unconfirmed, Confirmed, Applying, Finished];
        let autodeploy = [Queued, Ready, Preparing, Initializing, Planning, Applying, Finished];
        let no_changes = [Queued, Ready, Preparing, Initializing, Planning, Finished];
        for path in [&apply[..], &autodeploy[..], &no_changes[..]] {
            for w in path.windows(2) {
                assert!(w[0].can_become(w[1]), "{} -> {}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn an_apply_cannot_be_stopped_and_nothing_skips_planning() {
        assert!(Applying.transition(Stopped).is_err());
        assert!(Applying.transition(Canceled).is_err());
        assert!(Queued.transition(Applying).is_err());
        assert!(Ready.transition(Planning).is_err());
        assert!(Unconfirmed.transition(Applying).is_err(), "confirmation comes first");
        let e = Finished.transition(Queued).unwrap_err();
        assert_eq!(e.to_string(), "a run cannot go from FINISHED to QUEUED");
    }
}
