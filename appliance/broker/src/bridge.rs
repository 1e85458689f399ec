//! From database changes to broker messages. A dedicated connection LISTENs on
//! `hangar_runs` (every run transition, from whichever process made it) and on
//! `hangar_workers` (a trigger announces revocations, token or certificate
//! changes and pool resets). Run changes become notifications; worker changes
//! end the connections they invalidate at once.
//!
//! Notifications are lossy by nature: after every (re)connect the bridge
//! forgets cached admissions, re-checks every connected worker, and announces
//! work again for each pool that has READY runs.

use std::collections::HashSet;
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

/// The channel the `worker_credentials` migration's triggers notify on.
pub const WORKERS_CHANNEL: &str = "hangar_workers";

/// A safety net under the triggers: connected workers are re-checked this often.
const REVALIDATE_EVERY: Duration = Duration::from_secs(10);
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
    opts.tick = Some(REVALIDATE_EVERY);
    listen(&db, &opts, &mut Bridge(shared), &stop).await;
}

struct Bridge(Arc<Shared>);

impl Listener for Bridge {
    async fn connected(&mut self) -> Result<(), DbError> {
        catch_up(&self.0).await?;
        self.0.bridge_up.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// One commit that makes many runs READY asks for one announcement per
    /// pool, not one per run to every worker.
    async fn notified(&mut self, batch: Vec<Notice>) {
        let mut announced = HashSet::new();
        for n in &batch {
            handle(&self.0, &n.channel, &n.payload, &mut announced).await;
        }
    }

    fn disconnected(&mut self) {
        self.0.bridge_up.store(false, Ordering::Relaxed);
    }

    async fn tick(&mut self) {
        if let Err(e) = revalidate(&self.0, &self.0.registry.workers()).await {
            warn!(error = %hangar_types::error_chain(&e), "cannot re-check connected workers");
        }
    }
}

/// What was missed while not listening.
async fn catch_up(shared: &Shared) -> Result<(), DbError> {
    shared.auth.forget_all();
    revalidate(shared, &shared.registry.workers()).await?;
    #[derive(diesel::QueryableByName)]
    struct Pool {
        #[diesel(sql_type = BigInt)]
        pool: i64,
    }
    let pools: Vec<Pool> = {
        let mut conn = shared.db.get().await?;
        diesel::sql_query(
            "SELECT DISTINCT s.worker_pool_id AS pool FROM runs r JOIN stacks s ON s.id = r.stack_id \
             WHERE r.state = 'READY' AND s.worker_pool_id IS NOT NULL",
        )
        .load(&mut conn)
        .await?
    };
    for Pool { pool } in pools {
        deliver(shared, Target::Pool(pool), Notification::WorkAvailable { pool }).await;
    }
    Ok(())
}

/// Handles one notification; `announced` holds the pools already told of work
/// in this batch, which need not hear it again.
async fn handle(shared: &Shared, channel: &str, payload: &str, announced: &mut HashSet<i64>) {
    if channel == RUNS_CHANNEL {
        match serde_json::from_str::<RunChange>(payload) {
            Ok(change) => match notification_for(&change) {
                // A worker told once claims until nothing is left.
                Some((Target::Pool(pool), Notification::WorkAvailable { .. })) if !announced.insert(pool) => {}
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
