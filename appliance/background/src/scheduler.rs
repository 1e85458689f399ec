//! `hangar scheduler`: cron entries that enqueue jobs — the stuck-run reaper,
//! retention cleanup, drift checks, and any entry an operator adds. Any number of
//! schedulers may run; one leads, holding a PostgreSQL advisory lock on a
//! dedicated connection. If the leader dies its connection closes, the lock is
//! released, and a standby (trying every second) takes over.
//!
//! A tick is recorded by moving `scheduler_entries.last_fire_at` forward with a
//! compare-and-set, in the same transaction as the job it enqueues, so even two
//! leaders at once (a network partition) cannot fire one tick twice.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_db::jobs::{Job, NoPayload, Retention, Window};
use hangar_db::queue;
use hangar_db::{Database, DbError, DbPool};
use hangar_store::{StoreError, scheduler as store};
use hangar_runner::{BackgroundWorker, RunnerOptions, Step};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::heartbeat::{self, ProcessKind};

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
enum Fires {
    /// The same job every time.
    Job(Job),
    /// A drift check of the window since the previous tick.
    DriftWindow,
}

impl Fires {
    /// The job of the tick at `at`, the previous one having been at `last`.
    fn job(&self, last: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Job {
        match self {
            Fires::Job(job) => job.clone(),
            Fires::DriftWindow => Job::DriftCheck(Window { from: last.unwrap_or(at), to: at }),
        }
    }
}

/// An entry ready to fire.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    cron: Cron,
    fires: Fires,
}

impl SchedulerConfig {
    /// Every entry, built-in ones first; an invalid schedule is an error naming it.
    fn entries(&self) -> Result<Vec<Entry>, (String, String)> {
        let mut out = Vec::new();
        let mut add = |name: &str, schedule: &str, fires: Fires| {
            let cron = Cron::from_str(schedule).map_err(|e| (format!("scheduler.{name}"), format!("invalid schedule {schedule:?}: {e}")))?;
            out.push(Entry { name: name.into(), cron, fires });
            Ok::<(), (String, String)>(())
        };
        add("reaper", &self.reaper, Fires::Job(Job::Reap(NoPayload {})))?;
        add("retention", &self.retention, Fires::Job(Job::Retention(Retention { days: i64::from(self.retention_days) })))?;
        add("drift", &self.drift, Fires::DriftWindow)?;
        add("vcs_poll", &self.vcs_poll, Fires::Job(Job::VcsPoll(NoPayload {})))?;
        for e in &self.entries {
            if ["reaper", "retention", "drift", "vcs_poll"].contains(&e.name.as_str()) || e.name.is_empty() {
                return Err(("scheduler.entry.name".into(), format!("{:?} is empty or reserved", e.name)));
            }
            let job = Job::parse(&e.kind, &e.payload)
                .map_err(|err| (format!("scheduler.entry {:?}", e.name), hangar_types::error_chain(&err)))?;
            add(&e.name, &e.schedule, Fires::Job(job))?;
        }
        Ok(out)
    }

    /// Problems with the values, as (field, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.retention_days == 0 {
            return Err(("scheduler.retention_days".into(), "must be at least 1".into()));
        }
        self.entries().map(|_| ())
    }
}

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid configuration: {field}: {problem}")]
    Config { field: String, problem: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Runs a scheduler until `shutdown` is cancelled.
pub async fn run_scheduler(db: Database, cfg: &SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let entries = cfg.entries().map_err(|(field, problem)| SchedulerError::Config { field, problem })?;
    let pool = db.pool(Some(3))?;
    let leading = Arc::new(AtomicBool::new(false));
    let beats = CancellationToken::new();
    let l = leading.clone();
    let beat = tokio::spawn(heartbeat::beat(pool.clone(), ProcessKind::Scheduler, move || AtomicBool::load(&l, Ordering::Relaxed), beats.clone()));
    let me = heartbeat::process_id(ProcessKind::Scheduler);
    info!(entries = entries.len(), "scheduler started");
    let worker = Scheduler { db, pool, me, entries, lock_conn: None, leading, next: None };
    hangar_runner::run(worker, shutdown, RunnerOptions::default()).await;
    beats.cancel();
    let _ = beat.await;
    info!("scheduler stopped");
    Ok(())
}

struct Scheduler {
    db: Database,
    pool: DbPool,
    me: String,
    entries: Vec<Entry>,
    /// The connection holding the leader lock, while leading.
    lock_conn: Option<AsyncPgConnection>,
    leading: Arc<AtomicBool>,
    /// When the next entry is due (while leading).
    next: Option<DateTime<Utc>>,
}

impl Scheduler {
    /// Makes sure we lead, or finds out we do not. Returns whether we lead.
    async fn ensure_leadership(&mut self) -> Result<bool, String> {
        if let Some(conn) = self.lock_conn.as_mut() {
            // Still connected means still holding the lock.
            match store::still_connected(conn).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    warn!(error = %e, "lost the leader connection; leadership is gone");
                    self.lock_conn = None;
                    self.leading.store(false, Ordering::Relaxed);
                }
            }
        }
        let mut conn = self.db.connect().await.map_err(|e| hangar_types::error_chain(&e))?;
        let locked = store::try_lead(&mut conn).await.map_err(|e| hangar_types::error_chain(&e))?;
        if locked {
            info!(scheduler = %self.me, "became the scheduler leader");
            self.lock_conn = Some(conn);
            self.leading.store(true, Ordering::Relaxed);
        }
        Ok(locked)
    }

    /// Fires every entry due now; returns when the next one is due.
    async fn fire_due(&mut self) -> Result<DateTime<Utc>, String> {
        let mut conn = self.pool.get().await.map_err(|e| hangar_types::error_chain(&e))?;
        let now = Utc::now();
        let mut next = now + chrono::Duration::hours(1);
        for entry in &self.entries {
            let last = store::last_fire(&mut conn, &entry.name).await.map_err(|e| hangar_types::error_chain(&e))?.flatten();
            // The latest occurrence not after now.
            let due = entry.cron.find_previous_occurrence(&now, true).ok();
            if let Some(at) = due {
                // First run of an entry: start counting from now, fire nothing old.
                let fire = match last {
                    None => false,
                    Some(l) => at > l,
                };
                if last.is_none() {
                    store::record_start(&mut conn, &entry.name, entry.cron.pattern.as_str(), at)
                        .await
                        .map_err(|e| hangar_types::error_chain(&e))?;
                } else if fire {
                    fire_once(&mut conn, entry, last, at, &self.me).await.map_err(|e| hangar_types::error_chain(&e))?;
                }
            }
            if let Ok(n) = entry.cron.find_next_occurrence(&now, false) {
                next = next.min(n);
            }
        }
        Ok(next)
    }
}

/// Moves `last_fire_at` from `last` to `at` and enqueues the entry's job, in one
/// transaction; does nothing when another scheduler moved it first.
async fn fire_once(
    conn: &mut AsyncPgConnection,
    entry: &Entry,
    last: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    me: &str,
) -> Result<bool, StoreError> {
    let entry = entry.clone();
    let me = me.to_string();
    conn.transaction::<_, StoreError, _>(async move |c| {
        if !store::advance(c, &entry.name, entry.cron.pattern.as_str(), last, at, &me).await? {
            return Ok(false);
        }
        let job = entry.fires.job(last, at).to_new().unique_key(format!("cron:{}:{}", entry.name, at.to_rfc3339()));
        queue::enqueue(c, &job).await?;
        info!(entry = %entry.name, at = %at, "fired");
        Ok(true)
    })
    .await
}

impl BackgroundWorker for Scheduler {
    fn name(&self) -> String {
        format!("scheduler {}", self.me)
    }

    async fn work(&mut self) -> Result<Step, String> {
        if !self.ensure_leadership().await? {
            self.next = None;
            return Ok(Step::Idle);
        }
        self.next = Some(self.fire_due().await?);
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        // A standby retries for leadership every second; a leader sleeps until
        // the next entry is due, checking its lock connection at least as often.
        let pause = match self.next {
            None => Duration::from_secs(1),
            // A little past the tick, so that the tick is in the past on waking.
            Some(at) => ((at - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(5))
                .min(Duration::from_secs(1)),
        };
        tokio::time::sleep(pause).await;
    }

    async fn finish(&mut self) {
        if self.lock_conn.take().is_some() {
            info!("leadership released");
        }
        self.leading.store(false, Ordering::Relaxed);
    }
}
