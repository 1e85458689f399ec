//! `hangar.toml`: the appliance configuration, for the `hangar` binary and for
//! the installer that writes it. Strict (unknown keys are errors), validated
//! when loaded, and free of secrets (those live in files it points to).
//!
//! The sections of the server, the broker, the drain and the scheduler are
//! defined here, so that reading the file needs none of those crates; the
//! others come from the small crates that own them (database, VCS,
//! supervisor, object store).

pub mod broker;
pub mod drain;
pub mod scheduler;
pub mod server;

use std::path::{Path, PathBuf};

use hangar_db::DbConfig;
use serde::Deserialize;

pub use broker::{BrokerConfig, BrokerLimits};
pub use drain::DrainConfig;
pub use scheduler::{EntryConfig, SchedulerConfig};
pub use server::{SecretsConfig, ServerConfig};

/// Where the configuration is unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/hangar/hangar.toml";

/// The whole file. Each section belongs to the part of Hangar that reads it;
/// sections a command does not need may be absent (`hangar migrate` needs only
/// `[database]`), and each command checks that its own are present.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DbConfig,
    #[serde(default)]
    pub drain: DrainConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub vcs: Option<hangar_vcs::VcsConfig>,
    #[serde(default)]
    pub supervisor: Option<hangar_supervisor::SupervisorConfig>,
    #[serde(default)]
    pub server: Option<ServerConfig>,
    #[serde(default)]
    pub secrets: Option<SecretsConfig>,
    #[serde(default)]
    pub objects: Option<hangar_objects::ObjectsConfig>,
    #[serde(default)]
    pub broker: Option<BrokerConfig>,
}

/// A value of a section that cannot be used, named by its field
/// (`server.public_url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), problem: problem.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration {path}: {field}: {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message spans lines (it quotes the input); keep one line.
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at {})", line_col(text, s.start)))
                    .unwrap_or_default(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        };
        let db = &self.database;
        if db.host.trim().is_empty() {
            return Err(invalid("database.host", "must not be empty"));
        }
        if db.port == 0 {
            return Err(invalid("database.port", "must be between 1 and 65535"));
        }
        if db.name.is_empty() || db.user.is_empty() {
            return Err(invalid("database.name", "database name and user must not be empty"));
        }
        if !db.password_file.is_absolute() {
            return Err(invalid("database.password_file", "must be an absolute path"));
        }
        if !db.ca_file.is_absolute() {
            return Err(invalid("database.ca_file", "must be an absolute path"));
        }
        if db.pool_size == 0 || db.pool_size > 512 {
            return Err(invalid("database.pool_size", "must be between 1 and 512"));
        }
        self.drain.validate().map_err(|e| invalid(&e.field, &e.problem))?;
        self.scheduler.validate().map_err(|e| invalid(&e.field, &e.problem))?;
        if let Some(vcs) = &self.vcs {
            vcs.validate().map_err(|e| invalid(e.field, e.problem))?;
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    format!("line {line}, column {col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../hangar.example.toml");
        let cfg = Config::from_toml(text, Path::new("hangar.example.toml")).unwrap();
        assert_eq!(cfg.database.port, 5432);
        assert_eq!(cfg.database.pool_size, 16);
        let broker = cfg.broker.expect("the example documents [broker]");
        broker.validate().unwrap();
        assert_eq!(broker.listen.port(), 1984);
    }

    #[test]
    fn parse_errors_are_one_line_with_a_position() {
        let err = Config::from_toml("[database]\nhost = \n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn vcs_section_is_checked_when_loaded() {
        let text = include_str!("../hangar.example.toml");
        let cfg = Config::from_toml(text, Path::new("hangar.example.toml")).unwrap();
        let vcs = cfg.vcs.expect("the example documents [vcs]");
        assert_eq!(vcs.poll_interval_secs, 60);
        let bad = text.replace("poll_interval_secs = 60", "poll_interval_secs = 5");
        let err = Config::from_toml(&bad, Path::new("x.toml")).unwrap_err().to_string();
        assert_eq!(err, "invalid configuration x.toml: vcs.poll_interval_secs: must be between 10 and 86400");
    }

    #[test]
    fn scheduler_entries_enqueue_only_the_drains_jobs() {
        let text = include_str!("../hangar.example.toml");
        let entry = |kind: &str, payload: &str| {
            format!("{text}\n[[scheduler.entry]]\nname = \"nightly\"\nschedule = \"0 3 * * *\"\nkind = \"{kind}\"\npayload = {payload}\n")
        };
        let cfg = Config::from_toml(&entry("retention.cleanup", "{ days = 7 }"), Path::new("x.toml")).unwrap();
        assert_eq!(cfg.scheduler.entries.len(), 1);
        let err = Config::from_toml(&entry("report.nightly", "{}"), Path::new("x.toml")).unwrap_err().to_string();
        assert_eq!(err, "invalid configuration x.toml: scheduler.entry \"nightly\": unknown job kind \"report.nightly\"");
        let err = Config::from_toml(&entry("retention.cleanup", "{ weeks = 1 }"), Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.starts_with("invalid configuration x.toml: scheduler.entry \"nightly\": payload of a retention.cleanup job: "), "{err}");
    }

    #[test]
    fn drain_data_dir_must_be_absolute() {
        let text = include_str!("../hangar.example.toml");
        let cfg = Config::from_toml(text, Path::new("hangar.example.toml")).unwrap();
        assert_eq!(cfg.drain.data_dir.as_deref(), Some(Path::new("/var/lib/hangar/drain")));
        let bad = text.replace("data_dir = \"/var/lib/hangar/drain\"", "data_dir = \"var/lib/hangar/drain\"");
        let err = Config::from_toml(&bad, Path::new("x.toml")).unwrap_err().to_string();
        assert_eq!(err, "invalid configuration x.toml: drain.data_dir: must be an absolute path");
    }
}
