//! From database changes to broker messages. A dedicated connection LISTENs on
//! `hangar_runs` (every run transition, from whichever process made it) and on
//! `hangar_workers` (a trigger announces revocations, token or certificate
//! changes and pool resets). Run changes become notifications; worker changes
//! end the connections they invalidate at once.
//!
//! Work is announced to as many workers as there are new READY runs, not to
//! the whole pool (see `dispatch`). Notifications are lossy by nature: after
//! every (re)connect the bridge forgets cached admissions, re-checks every
//! connected worker, and announces every READY run again; runs that stay READY
//! for a while are announced again to other workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use hangar_db::listen::{ListenOptions, Listener, Notice, listen};
use hangar_db::runs::{RUNS_CHANNEL, RunChange};
use hangar_db::{Database, DbError};
use hangar_types::RunState;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::wire::Notification;

pub use hangar_db::listen::WORKERS_CHANNEL;

/// How often the bridge looks for runs left READY (and, every few ticks,
/// re-checks connected workers).
const TICK: Duration = Duration::from_secs(2);
/// A safety net under the triggers: connected workers are re-checked every
/// this many ticks (10 s).
const REVALIDATE_TICKS: u32 = 5;
/// A run still READY this long after it was made so is announced again: the
/// worker told of it may have died before claiming.
const ANNOUNCE_AGAIN_AFTER_SECS: i32 = 2;
/// Notifications handled together at most, so a flood cannot starve the re-checks.
const MAX_BATCH: usize = 4096;

/// Who a run change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Pool(i64),
    Worker(i64),
}

/// The notification a run change calls for, if any.
pub(crate) fn notification_for(change: &RunChange) -> Option<(Target, Notification)> {
    match change.to {
        RunState::Ready => change.pool.map(|pool| (Target::Pool(pool), Notification::WorkAvailable { pool })),
        RunState::Confirmed => change.worker.map(|w| (Target::Worker(w), Notification::RunConfirmed { run: change.run })),
        // STOPPED is only reachable from a state a worker holds; CANCELED runs
        // never reached a worker and need no message.
        RunState::Stopped if change.from.is_some_and(RunState::is_on_worker) => {
            change.worker.map(|w| (Target::Worker(w), Notification::RunCanceled { run: change.run }))
        }
        _ => None,
    }
}

/// What the workers trigger announces.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct WorkerChange {
    #[serde(default)]
    worker: Option<i64>,
    #[serde(default)]
    pool: Option<i64>,
}

/// Runs until `stop`, reconnecting with back-off.
pub(crate) async fn run(shared: Arc<Shared>, db: Database, stop: CancellationToken) {
    let mut opts = ListenOptions::new("broker bridge", &[RUNS_CHANNEL, WORKERS_CHANNEL]);
    opts.max_batch = MAX_BATCH;
    opts.tick = Some(TICK);
    listen(&db, &opts, &mut Bridge { shared, ticks: 0 }, &stop).await;
}

struct Bridge {
    shared: Arc<Shared>,
    ticks: u32,
}

impl Listener for Bridge {
    async fn connected(&mut self) -> Result<(), DbError> {
        catch_up(&self.shared).await?;
        self.shared.bridge_up.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The runs made READY in a batch are announced together, per pool, to
    /// as many workers as there are runs.
    async fn notified(&mut self, batch: Vec<Notice>) {
        let mut ready = BTreeMap::new();
        for n in &batch {
            handle(&self.shared, &n.channel, &n.payload, &mut ready).await;
        }
        for (pool, runs) in ready {
            announce(&self.shared, pool, runs).await;
        }
    }

    fn disconnected(&mut self) {
        self.shared.bridge_up.store(false, Ordering::Relaxed);
    }

    async fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        match waiting_runs(&self.shared, Some(ANNOUNCE_AGAIN_AFTER_SECS)).await {
            Ok(pools) => {
                for (pool, runs) in pools {
                    announce(&self.shared, pool, runs).await;
                }
            }
            Err(e) => warn!(error = %hangar_types::error_chain(&e), "cannot look for runs left READY"),
        }
        if self.ticks.is_multiple_of(REVALIDATE_TICKS) {
            let connected = self.shared.registry.workers();
            self.shared.turns.keep_only(&connected);
            if let Err(e) = revalidate(&self.shared, &connected).await {
                warn!(error = %hangar_types::error_chain(&e), "cannot re-check connected workers");
            }
        }
    }
}

/// What was missed while not listening.
async fn catch_up(shared: &Shared) -> Result<(), DbError> {
    shared.auth.forget_all();
    // Announcements made before the break may have been lost with it.
    shared.turns.forget_all();
    revalidate(shared, &shared.registry.workers()).await?;
    for (pool, runs) in waiting_runs(shared, None).await? {
        announce(shared, pool, runs).await;
    }
    Ok(())
}

/// READY runs per pool; with `older_than`, only those READY for at least
/// that many seconds.
async fn waiting_runs(shared: &Shared, older_than: Option<i32>) -> Result<Vec<(i64, usize)>, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = BigInt)]
        pool: i64,
        #[diesel(sql_type = BigInt)]
        runs: i64,
    }
    let mut conn = shared.db.get().await?;
    let rows: Vec<Waiting> = diesel::sql_query(
        "SELECT s.worker_pool_id AS pool, count(*) AS runs FROM runs r JOIN stacks s ON s.id = r.stack_id \
         WHERE r.state = 'READY' AND s.worker_pool_id IS NOT NULL \
         AND ($1::int IS NULL OR r.updated_at < now() - make_interval(secs => $1::int)) \
         GROUP BY s.worker_pool_id",
    )
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Integer>, _>(older_than)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|w| (w.pool, usize::try_from(w.runs).unwrap_or(usize::MAX))).collect())
}

/// Tells up to `runs` available workers of `pool` connected here, each on its
/// own topic. When the database cannot say who is available, every connected
/// worker of the pool is told: more claims, but no run left waiting.
async fn announce(shared: &Shared, pool: i64, runs: usize) {
    let connected = shared.registry.workers_of_pool(pool);
    if connected.is_empty() || runs == 0 {
        return;
    }
    let candidates = match crate::dispatch::available(&shared.db, &connected).await {
        Ok(available) => available,
        Err(e) => {
            warn!(pool, error = %hangar_types::error_chain(&e), "cannot tell which workers are idle; telling every one");
            connected
        }
    };
    let chosen = shared.turns.choose(&candidates, runs, std::time::Instant::now());
    if chosen.is_empty() {
        return debug!(pool, runs, candidates = candidates.len(), "work waits: no worker connected here is available");
    }
    let n = Notification::WorkAvailable { pool };
    match shared.publish_to_workers(&chosen, &n).await {
        Ok(()) => debug!(pool, runs, told = chosen.len(), candidates = candidates.len(), "work announced"),
        Err(e) => warn!(pool, error = %e, "cannot announce work"),
    }
}

/// Handles one notification. READY runs are counted per pool in `ready`, to be
/// announced once the whole batch is read.
async fn handle(shared: &Shared, channel: &str, payload: &str, ready: &mut BTreeMap<i64, usize>) {
    if channel == RUNS_CHANNEL {
        match serde_json::from_str::<RunChange>(payload) {
            Ok(change) => match notification_for(&change) {
                Some((Target::Pool(pool), Notification::WorkAvailable { .. })) => *ready.entry(pool).or_default() += 1,
                Some((target, n)) => deliver(shared, target, n).await,
                None => {}
            },
            Err(e) => warn!(payload, error = %e, "unreadable run change"),
        }
    } else if channel == WORKERS_CHANNEL {
        let change = match serde_json::from_str::<WorkerChange>(payload) {
            Ok(c) => c,
            Err(e) => return warn!(payload, error = %e, "unreadable worker change"),
        };
        let affected: Vec<i64> = match change {
            WorkerChange { worker: Some(w), .. } => {
                shared.auth.forget_worker(w);
                vec![w]
            }
            WorkerChange { pool: Some(p), .. } => {
                shared.auth.forget_pool(p);
                shared.registry.workers_of_pool(p)
            }
            WorkerChange { worker: None, pool: None } => return,
        };
        if let Err(e) = revalidate(shared, &affected).await {
            warn!(error = %hangar_types::error_chain(&e), "cannot re-check changed workers");
        }
    }
}

/// Ends the connections of `workers` that their current records no longer admit.
async fn revalidate(shared: &Shared, workers: &[i64]) -> Result<(), DbError> {
    let online: Vec<i64> = workers.iter().copied().filter(|w| shared.registry.is_online(*w)).collect();
    if online.is_empty() {
        return Ok(());
    }
    let records = shared.auth.lookup(&online).await?;
    let kicked = shared.registry.revalidate(&online, &records);
    if kicked > 0 {
        info!(kicked, "connections ended after worker changes");
    }
    Ok(())
}

async fn deliver(shared: &Shared, target: Target, n: Notification) {
    let sent = match target {
        Target::Pool(pool) => shared.publish_to_pool(pool, &n).await,
        Target::Worker(worker) => shared.publish_to_worker(worker, &n).await,
    };
    match sent {
        Ok(count) => debug!(?target, notification = ?n, connected = count, "notified"),
        Err(e) => warn!(?target, notification = ?n, error = %e, "cannot notify"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    fn change(from: Option<RunState>, to: RunState, worker: Option<i64>) -> RunChange {
        RunChange { run: 11, stack: 2, pool: Some(5), worker, from, to }
    }

    #[test]
    fn transitions_map_to_notifications() {
        assert_eq!(
            notification_for(&change(Some(Queued), Ready, None)),
            Some((Target::Pool(5), Notification::WorkAvailable { pool: 5 }))
        );
        assert_eq!(
            notification_for(&change(Some(Unconfirmed), Confirmed, Some(8))),
            Some((Target::Worker(8), Notification::RunConfirmed { run: 11 }))
        );
        assert_eq!(
            notification_for(&change(Some(Planning), Stopped, Some(8))),
            Some((Target::Worker(8), Notification::RunCanceled { run: 11 }))
        );
        // Nothing to say, or nobody to say it to.
        assert_eq!(notification_for(&RunChange { pool: None, ..change(Some(Queued), Ready, None) }), None);
        assert_eq!(notification_for(&change(Some(Unconfirmed), Confirmed, None)), None);
        assert_eq!(notification_for(&change(Some(Ready), Canceled, None)), None);
        assert_eq!(notification_for(&change(Some(Planning), Stopped, None)), None);
        for to in [Queued, Preparing, Initializing, Planning, Unconfirmed, Applying, Finished, Failed, Discarded] {
            assert_eq!(notification_for(&change(Some(Planning), to, Some(8))), None, "{to}");
        }
    }

    #[test]
    fn worker_changes_parse() {
        assert_eq!(
            serde_json::from_str::<WorkerChange>(r#"{"worker":3}"#).unwrap(),
            WorkerChange { worker: Some(3), pool: None }
        );
        assert_eq!(
            serde_json::from_str::<WorkerChange>(r#"{"pool":4}"#).unwrap(),
            WorkerChange { worker: None, pool: Some(4) }
        );
        assert!(serde_json::from_str::<WorkerChange>(r#"{"worker":"x"}"#).is_err());
    }
}
