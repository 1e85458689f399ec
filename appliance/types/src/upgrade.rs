//! Upgrades asked for through the API or the console, handed from the
//! server (the service user) to the installer's upgrade agent (root) as files
//! in `<bundles_dir>/upgrades/`:
//!
//! - `{id}.request.json`: an [`UpgradeRequest`], written by the server;
//! - `{id}.taken.json`: an [`UpgradeTaken`], written by the agent as it starts
//!   the upgrade;
//! - `{id}.done.json`: an [`UpgradeDone`], written by the agent when the
//!   upgrade ended, whichever way.
//!
//! The request only names a staged bundle: the agent copies it out of the
//! service user's reach, checks the SHA-256 the server verified, and the
//! upgrade checks its signature again. A request cannot ask for a downgrade.

use serde::{Deserialize, Serialize};

/// The directory under `bundles_dir`.
pub const DIR: &str = "upgrades";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// 32 lowercase hex digits, as every id of the staging area.
    pub id: String,
    /// The staged appliance bundle's id.
    pub bundle: String,
    /// SHA-256 of the staged file, as verified at upload.
    pub sha256: String,
    pub version: String,
    pub requested_by: String,
    /// RFC 3339.
    pub requested_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeTaken {
    pub id: String,
    /// RFC 3339.
    pub started_at: String,
    /// The upgrade's output, on the appliance host.
    pub log: String,
}

/// How an upgrade asked for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeOutcome {
    /// The new release runs.
    Completed,
    /// It failed after the switch and the previous release runs again on
    /// its data.
    RolledBack,
    /// A pre-check refused it, or the request itself was refused; nothing
    /// changed.
    Refused,
    /// It failed and no rollback brought the previous release back: the
    /// operator must look (`hangar-install status`).
    Failed,
}

impl UpgradeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeOutcome::Completed => "completed",
            UpgradeOutcome::RolledBack => "rolled-back",
            UpgradeOutcome::Refused => "refused",
            UpgradeOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeDone {
    pub id: String,
    pub outcome: UpgradeOutcome,
    /// One line: what happened, or what failed and where.
    pub message: String,
    /// The installer's record of the upgrade, when it made one.
    pub record: Option<String>,
    /// RFC 3339.
    pub finished_at: String,
    pub log: String,
}

/// Whether `id` is an id of the staging area (and so safe in a file name).
pub fn id_ok(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
