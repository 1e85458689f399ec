//! The `[scheduler]` section of `hangar.toml`: the built-in cron entries
//! (reaper, retention, drift checks, plain-git polling) and any an operator
//! adds, each turned into the job it enqueues when it fires.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use hangar_db::jobs::{Job, NoPayload, Retention, Window};
use serde::Deserialize;

use crate::Invalid;

/// An operator-defined entry: `schedule` (cron, seconds optional) enqueues a job
/// of `kind` with `payload`, which must be one of the drain's jobs
/// ([`hangar_db::jobs::Job`]): checked when the configuration is loaded.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    pub name: String,
    pub schedule: String,
    pub kind: String,
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// The `[scheduler]` section of `hangar.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// When the stuck-run reaper looks for runs whose worker lease expired.
    pub reaper: String,
    /// When retention cleanup runs.
    pub retention: String,
    /// How long dead jobs and deduplication keys are kept.
    pub retention_days: u32,
    /// How often stacks' drift schedules are checked.
    pub drift: String,
    /// How often plain-git integrations are considered for polling; each
    /// repository is listed once per `[vcs] poll_interval_secs`.
    pub vcs_poll: String,
    #[serde(rename = "entry")]
    pub entries: Vec<EntryConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            reaper: "*/10 * * * * *".into(),
            retention: "17 * * * *".into(),
            retention_days: 30,
            drift: "* * * * *".into(),
            vcs_poll: "*/10 * * * * *".into(),
            entries: vec![],
        }
    }
}

/// What an entry enqueues when it fires.
#[derive(Debug, Clone)]
pub enum Fires {
    /// The same job every time.
    Job(Job),
    /// A drift check of the window since the previous tick.
    DriftWindow,
}

impl Fires {
    /// The job of the tick at `at`, the previous one having been at `last`.
    pub fn job(&self, last: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Job {
        match self {
            Fires::Job(job) => job.clone(),
            Fires::DriftWindow => Job::DriftCheck(Window { from: last.unwrap_or(at), to: at }),
        }
    }
}

/// An entry ready to fire.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub cron: Cron,
    pub fires: Fires,
}

impl SchedulerConfig {
    /// Every entry, built-in ones first; an invalid schedule or job is an
    /// error naming its entry.
    pub fn entries(&self) -> Result<Vec<Entry>, Invalid> {
        let mut out = Vec::new();
        let mut add = |name: &str, schedule: &str, fires: Fires| {
            let cron = Cron::from_str(schedule)
                .map_err(|e| Invalid::new(format!("scheduler.{name}"), format!("invalid schedule {schedule:?}: {e}")))?;
            out.push(Entry { name: name.into(), cron, fires });
            Ok::<(), Invalid>(())
        };
        add("reaper", &self.reaper, Fires::Job(Job::Reap(NoPayload {})))?;
        add("retention", &self.retention, Fires::Job(Job::Retention(Retention { days: i64::from(self.retention_days) })))?;
        add("drift", &self.drift, Fires::DriftWindow)?;
        add("vcs_poll", &self.vcs_poll, Fires::Job(Job::VcsPoll(NoPayload {})))?;
        for e in &self.entries {
            if ["reaper", "retention", "drift", "vcs_poll"].contains(&e.name.as_str()) || e.name.is_empty() {
                return Err(Invalid::new("scheduler.entry.name", format!("{:?} is empty or reserved", e.name)));
            }
            let job = Job::parse(&e.kind, &e.payload)
                .map_err(|err| Invalid::new(format!("scheduler.entry {:?}", e.name), hangar_types::error_chain(&err)))?;
            add(&e.name, &e.schedule, Fires::Job(job))?;
        }
        Ok(out)
    }

    /// Checks the values, every schedule and every entry's job.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.retention_days == 0 {
            return Err(Invalid::new("scheduler.retention_days", "must be at least 1"));
        }
        self.entries().map(|_| ())
    }
}
