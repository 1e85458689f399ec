//! `hangar scheduler`: cron entries that enqueue jobs — the stuck-run reaper,
//! retention cleanup, drift checks, and any entry an operator adds. Any number of
//! schedulers may run; one leads, holding a PostgreSQL advisory lock on a
//! dedicated connection. If the leader dies its connection closes, the lock is
//! released, and a standby (trying every second) takes over.
//!
//! A tick is recorded by moving `scheduler_entries.last_fire_at` forward with a
//! compare-and-set, in the same transaction as the job it enqueues, so even two
//! leaders at once (a network partition) cannot fire one tick twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_config::scheduler::Entry;
use hangar_config::{Invalid, SchedulerConfig};
use hangar_db::queue;
use hangar_db::{Database, DbError, DbPool};
use hangar_runner::{BackgroundWorker, RunnerOptions, Step};
use hangar_store::{StoreError, scheduler as store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::heartbeat::{self, ProcessKind};

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid configuration")]
    Config(#[source] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Runs a scheduler until `shutdown` is cancelled.
pub async fn run_scheduler(db: Database, cfg: &SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let entries = cfg.entries().map_err(SchedulerError::Config)?;
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
