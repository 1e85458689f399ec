//! The install state file (`/etc/hangar/install-state.json`): which release is
//! being or was installed, with what non-secret settings, and which steps
//! completed. A re-run reads it to know what belongs to this installation;
//! `status`, `uninstall` and `support-bundle` read it to find everything.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::answers::Ports;
use crate::error::InstallError;
use crate::host::write_atomic;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstallState {
    pub release: String,
    /// The release installed before this one, during an upgrade.
    #[serde(default)]
    pub previous_release: Option<String>,
    pub data_dir: PathBuf,
    pub service_user: String,
    pub hostname: String,
    pub listen: IpAddr,
    pub ports: Ports,
    pub bundled_objects: bool,
    /// `role@host:port/database` of an external PostgreSQL; none: the bundled one.
    #[serde(default)]
    pub external_database: Option<String>,
    pub systemd: bool,
    pub admin_email: String,
    /// Steps completed for `release`, in order.
    pub completed: Vec<String>,
    pub started_at: DateTime<Utc>,
    /// Set when the health gate passed.
    #[serde(default)]
    pub ready_at: Option<DateTime<Utc>>,
}

impl InstallState {
    pub fn load(path: &Path) -> Result<Option<InstallState>, InstallError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| InstallError::State { path: path.to_path_buf(), problem: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(InstallError::Io { action: "read", path: path.to_path_buf(), source }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), InstallError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| InstallError::State { path: path.to_path_buf(), problem: e.to_string() })?;
        write_atomic(path, text.as_bytes(), 0o644, None)
    }

    pub fn mark(&mut self, step: &str, path: &Path) -> Result<(), InstallError> {
        if !self.completed.iter().any(|s| s == step) {
            self.completed.push(step.to_string());
        }
        self.save(path)
    }

    pub fn is_complete(&self) -> bool {
        self.ready_at.is_some()
    }
}
