//! The record of one upgrade (or restore), kept as a file under
//! `<data>/upgrades/<id>.json`. While it runs the record is its journal: every
//! step is written there before it starts and when it ends, so that a run
//! killed at any point is taken up by the next one from where it stopped.
//! Once finished it is history, read by `hangar-install status`, the API and
//! the console. Files rather than the database: a rollback restores the
//! database from a backup, which would take the history with it.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InstallError;
use crate::installed::save_json;

/// The record format this installer writes and reads.
pub const FORMAT: u32 = 1;

/// How an upgrade ended, or that it has not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Under way, or interrupted: the next `hangar-install upgrade` takes it up.
    Running,
    /// The new release runs and passed the health gate.
    Completed,
    /// It failed after the appliance was stopped; the previous release runs
    /// again on the database as it was backed up.
    RolledBack,
    /// A pre-check refused it; nothing changed.
    Refused,
    /// It failed before anything changed (and the appliance kept running).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Completed => "completed",
            Outcome::RolledBack => "rolled back",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Which way the steps go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Forward,
    Rollback,
}

/// One pre-check and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One step: when it started and ended, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub phase: Phase,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while running (or when the run was killed during the step).
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub detail: String,
}

impl Step {
    pub fn secs(&self) -> Option<f64> {
        self.finished_at.map(|f| (f - self.started_at).num_milliseconds() as f64 / 1000.0)
    }
}

/// Options of the run that a resumed run keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordOptions {
    pub trust_dirs: Vec<PathBuf>,
    pub allow_downgrade: bool,
    pub health_timeout_secs: u64,
    pub apply_wait_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub format: u32,
    pub id: String,
    /// `upgrade` or `restore`.
    pub kind: String,
    pub from: String,
    pub to: String,
    /// Who asked: an API user (`alice@example.com`), or root on the host.
    pub requested_by: String,
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// SHA-256 of the bundle's signed manifest, which names every byte of it.
    #[serde(default)]
    pub bundle_sha256: Option<String>,
    pub options: RecordOptions,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub phase: Phase,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// The backup made before the appliance was changed.
    #[serde(default)]
    pub backup: Option<String>,
    /// Services this run stopped while the appliance kept running (for the backup).
    #[serde(default)]
    pub stopped: Vec<String>,
    /// The new release's migrations may have run: a rollback restores the database.
    #[serde(default)]
    pub database_changed: bool,
    /// When the first service was stopped.
    #[serde(default)]
    pub downtime_from: Option<DateTime<Utc>>,
    /// From the first service stopped to the health gate passing.
    #[serde(default)]
    pub downtime_secs: Option<f64>,
    pub outcome: Outcome,
    /// What failed, with its cause.
    #[serde(default)]
    pub error: Option<String>,
    /// What failed in the rollback (which the next run retries).
    #[serde(default)]
    pub rollback_error: Option<String>,
    /// The outcome is in the audit trail.
    #[serde(default)]
    pub audited: bool,
}

impl Record {
    pub fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    pub fn save(&self, dir: &Path) -> Result<(), InstallError> {
        save_json(&Record::path(dir, &self.id), self)
    }

    /// Every record in `dir`, oldest first; unreadable files are skipped.
    pub fn all(dir: &Path) -> Vec<Record> {
        let mut out: Vec<Record> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Record>(&b).ok())
            .collect();
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        out
    }

    /// The record of an upgrade that has not finished, if any.
    pub fn unfinished(dir: &Path) -> Option<Record> {
        Record::all(dir).into_iter().rev().find(|r| r.outcome == Outcome::Running && r.kind == "upgrade")
    }

    /// The last step of `phase` that was started.
    pub fn last_step(&self, phase: Phase) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.phase == phase)
    }

    /// Whether `name` of `phase` finished successfully.
    pub fn done(&self, phase: Phase, name: &str) -> bool {
        self.steps.iter().any(|s| s.phase == phase && s.name == name && s.ok == Some(true))
    }

    /// One line for `status`.
    pub fn summary(&self) -> String {
        let when = self.started_at.format("%Y-%m-%d %H:%M UTC");
        let took = self.finished_at.map(|f| format!(", {:.1} s", (f - self.started_at).num_milliseconds() as f64 / 1000.0)).unwrap_or_default();
        let mut s = format!("{when}  {} {} -> {}  {}  by {}{took}", self.kind, self.from, self.to, self.outcome.as_str(), self.requested_by);
        if let Some(b) = &self.backup {
            s += &format!(", backup {b}");
        }
        if let Some(d) = self.downtime_secs {
            s += &format!(", downtime {d:.1} s");
        }
        s
    }

    /// The steps with their durations, on one line.
    pub fn steps_line(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                let what = match (s.phase, s.ok) {
                    (Phase::Forward, _) => s.name.clone(),
                    (Phase::Rollback, _) => format!("rollback: {}", s.name),
                };
                match (s.ok, s.secs()) {
                    (Some(true), Some(t)) => format!("{what} {t:.1} s"),
                    (Some(false), Some(t)) => format!("{what} FAILED after {t:.1} s"),
                    _ => format!("{what} (interrupted)"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
