//! The `[vcs]` section of `hangar.toml`: how long Hangar waits for git servers
//! and how often it polls the ones that cannot send webhooks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[vcs]`. Every key has a default; the section may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VcsConfig {
    /// Seconds one commit-status request may take, connection included.
    pub status_timeout_secs: u64,
    /// Seconds one `git ls-remote` may take before git is killed.
    pub ls_remote_timeout_secs: u64,
    /// Seconds between two polls of a plain-git integration.
    pub poll_interval_secs: u64,
    /// The git binary used for polling (a name on `PATH`, or an absolute path).
    pub git: PathBuf,
}

impl Default for VcsConfig {
    fn default() -> Self {
        VcsConfig {
            status_timeout_secs: 10,
            ls_remote_timeout_secs: 30,
            poll_interval_secs: 60,
            git: PathBuf::from("git"),
        }
    }
}

/// A `[vcs]` value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct VcsConfigError {
    /// The key, as written in the file (`vcs.poll_interval_secs`).
    pub field: &'static str,
    pub problem: &'static str,
}

impl VcsConfig {
    pub fn validate(&self) -> Result<(), VcsConfigError> {
        let err = |field, problem| Err(VcsConfigError { field, problem });
        if !(1..=300).contains(&self.status_timeout_secs) {
            return err("vcs.status_timeout_secs", "must be between 1 and 300");
        }
        if !(1..=600).contains(&self.ls_remote_timeout_secs) {
            return err("vcs.ls_remote_timeout_secs", "must be between 1 and 600");
        }
        if !(10..=86_400).contains(&self.poll_interval_secs) {
            return err("vcs.poll_interval_secs", "must be between 10 and 86400");
        }
        if self.poll_interval_secs <= self.ls_remote_timeout_secs {
            return err("vcs.poll_interval_secs", "must be longer than vcs.ls_remote_timeout_secs");
        }
        let git = self.git.as_os_str();
        if git.is_empty() || (self.git.components().count() > 1 && !self.git.is_absolute()) {
            return err("vcs.git", "must be a program name or an absolute path");
        }
        Ok(())
    }

    pub fn status_timeout(&self) -> Duration {
        Duration::from_secs(self.status_timeout_secs)
    }

    pub fn ls_remote_timeout(&self) -> Duration {
        Duration::from_secs(self.ls_remote_timeout_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        vcs: Option<VcsConfig>,
    }

    #[test]
    fn defaults_validate_and_partial_sections_fill_in() {
        VcsConfig::default().validate().unwrap();
        let f: File = toml::from_str("[vcs]\npoll_interval_secs = 120\n").unwrap();
        let v = f.vcs.unwrap();
        assert_eq!(v.poll_interval(), Duration::from_secs(120));
        assert_eq!(v.status_timeout(), Duration::from_secs(10));
        let f: File = toml::from_str("").unwrap();
        assert!(f.vcs.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<File>("[vcs]\npoll_interval = 5\n").is_err());
        let bad = [
            VcsConfig { status_timeout_secs: 0, ..Default::default() },
            VcsConfig { ls_remote_timeout_secs: 601, ..Default::default() },
            VcsConfig { poll_interval_secs: 5, ..Default::default() },
            VcsConfig { poll_interval_secs: 30, ls_remote_timeout_secs: 30, ..Default::default() },
            VcsConfig { git: PathBuf::from("bin/git"), ..Default::default() },
            VcsConfig { git: PathBuf::new(), ..Default::default() },
        ];
        for b in bad {
            let e = b.validate().unwrap_err();
            assert!(e.to_string().starts_with("vcs."), "{e}");
        }
        VcsConfig { git: PathBuf::from("/usr/bin/git"), ..Default::default() }.validate().unwrap();
    }
}
