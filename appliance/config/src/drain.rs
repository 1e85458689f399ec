//! The `[drain]` section of `hangar.toml`: how many jobs a drain handles at
//! once and where it keeps its own files.

use serde::Deserialize;

use crate::Invalid;

/// The `[drain]` section of `hangar.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Jobs handled at once by this process.
    pub concurrency: usize,
    /// Jobs claimed per query.
    pub batch_size: i64,
    /// Seconds a claim lasts without renewal.
    pub lease_seconds: u64,
    /// Seconds a stopping drain waits for running handlers.
    pub shutdown_seconds: u64,
    /// Where the drain keeps its own files: bare copies of the stacks'
    /// repositories, to learn with git what a push changed when the webhook
    /// does not list it. Without one, such pushes always make a run.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { concurrency: 32, batch_size: 50, lease_seconds: 60, shutdown_seconds: 10, data_dir: None }
    }
}

impl DrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(Invalid::new("drain.concurrency", "must be between 1 and 1024"));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(Invalid::new("drain.batch_size", "must be between 1 and 1000"));
        }
        if !(5..=3600).contains(&self.lease_seconds) {
            return Err(Invalid::new("drain.lease_seconds", "must be between 5 and 3600"));
        }
        if self.shutdown_seconds > 600 {
            return Err(Invalid::new("drain.shutdown_seconds", "must be at most 600"));
        }
        if self.data_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(Invalid::new("drain.data_dir", "must be an absolute path"));
        }
        Ok(())
    }
}
