//! Claims taken together. A worker's claim waits at the desk; a few clerks
//! each take every claim waiting (up to [`MAX_BATCH`]) and answer them with
//! one transaction per pool: one statement hands out the runs, one records
//! them, and each stack's tool and environment are read once for all its
//! runs. Alone, a claim is answered at once; in a burst, the claims that
//! arrive while a clerk writes share its next transaction instead of each
//! paying a transaction of its own.
//!
//! A batch that meets anything unusual (a run that cannot be handed out, a
//! dependency's outputs unreadable now, a database error) is rolled back
//! whole and its claims are taken again one at a time, by the path that
//! knows how to fail a run or retry ([`super::claim::claim_run`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_types::worker::RunAssignment;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::WorkerApiError;
use super::auth::Worker;
use super::claim::{ClaimFailure, Prepared, WORKER_DB_WAIT, claim_run, lease_until};
use crate::App;

/// Claims one transaction answers at most.
const MAX_BATCH: usize = 64;

/// Transactions writing claims at once. More than one, so that a batch being
/// written does not hold up the next; few, so that claims gather.
const CLERKS: usize = 3;

type Answer = Result<Option<RunAssignment>, WorkerApiError>;

/// One worker's claim, waiting for its answer.
struct Ask {
    worker: Worker,
    answer: oneshot::Sender<Answer>,
    asked: Instant,
}

impl Ask {
    /// Whether the claim waited so long that its worker may have stopped
    /// waiting for the answer (see [`WORKER_DB_WAIT`]): it is answered 503
    /// rather than handed a run that nobody would take.
    fn stale(&self) -> bool {
        self.asked.elapsed() >= WORKER_DB_WAIT || self.answer.is_closed()
    }

    fn refuse(self) {
        let _ = self.answer.send(Err(WorkerApiError::Unavailable));
    }
}

/// Where claims wait (kept in the [`App`]).
pub(crate) struct Desk {
    asks: mpsc::UnboundedSender<Ask>,
    waiting: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Ask>>>,
}

impl Desk {
    pub(crate) fn new() -> Desk {
        let (asks, waiting) = mpsc::unbounded_channel();
        Desk { asks, waiting: std::sync::Mutex::new(Some(waiting)) }
    }

    /// Starts the clerks. They end when the app is dropped.
    pub(crate) fn open(app: &Arc<App>) {
        let Some(waiting) = app.claims.waiting.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..CLERKS {
            tokio::spawn(clerk(waiting.clone(), Arc::downgrade(app)));
        }
    }

    /// Claims the oldest READY run of the worker's pool for it, exactly once;
    /// `None` when there is none (the worker is then idle) or it is drained.
    /// `since` is when the worker's request began waiting: one that waited
    /// [`WORKER_DB_WAIT`] is answered 503.
    pub(crate) async fn claim(&self, worker: Worker, since: Instant) -> Answer {
        if worker.drained {
            return Ok(None);
        }
        let (answer, answered) = oneshot::channel();
        // Closed only when the server is going away.
        self.asks.send(Ask { worker, answer, asked: since }).map_err(|_| WorkerApiError::Unavailable)?;
        answered.await.map_err(|_| WorkerApiError::Unavailable)?
    }
}

async fn clerk(waiting: Arc<Mutex<mpsc::UnboundedReceiver<Ask>>>, app: Weak<App>) {
    loop {
        let asks = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else { return };
            let mut asks = vec![first];
            while asks.len() < MAX_BATCH
                && let Ok(more) = waiting.try_recv()
            {
                asks.push(more);
            }
            asks
        };
        let Some(app) = app.upgrade() else { return };
        let mut pools: BTreeMap<i64, Vec<Ask>> = BTreeMap::new();
        for ask in asks {
            pools.entry(ask.worker.pool_id).or_default().push(ask);
        }
        for (pool, asks) in pools {
            serve(&app, pool, asks).await;
        }
    }
}

/// Answers the claims of one pool's workers.
async fn serve(app: &App, pool: i64, asks: Vec<Ask>) {
    let asks = fresh(asks);
    // As long as the latest claim may still wait.
    let Some(wait) = asks.iter().map(|a| WORKER_DB_WAIT.saturating_sub(a.asked.elapsed())).max() else { return };
    let mut conn = match hangar_db::connection_within(&app.db, wait).await {
        Ok(c) => c,
        Err(e) => {
            // Logged with its cause; the workers are answered 503.
            let _ = WorkerApiError::db(&e);
            asks.into_iter().for_each(Ask::refuse);
            return;
        }
    };
    let asks = fresh(asks);
    if asks.is_empty() {
        return;
    }
    let workers: Vec<Worker> = asks.iter().map(|a| a.worker).collect();
    tracing::debug!(pool, claims = workers.len(), "taking claims together");
    match claim_many(app, &mut conn, pool, &workers).await {
        Ok(assignments) => {
            let idle: Vec<i64> = workers.iter().zip(&assignments).filter(|(_, a)| a.is_none()).map(|(w, _)| w.id).collect();
            let marked = mark_idle(&mut conn, &idle).await;
            for ((ask, assignment), worker) in asks.into_iter().zip(assignments).zip(&workers) {
                let answer = match (&assignment, &marked) {
                    (None, Err(e)) => Err(WorkerApiError::db(e)),
                    _ => Ok(assignment),
                };
                if let Ok(Some(a)) = &answer {
                    tracing::info!(run_id = a.run_id, worker = worker.id, stack = %a.stack.slug, "run claimed");
                }
                // A worker gone since the check above never hears of its
                // run: the lease runs out and the run is failed, as when a
                // worker dies holding it.
                let _ = ask.answer.send(answer);
            }
        }
        Err(e) => {
            if matches!(e, ClaimFailure::Db(_) | ClaimFailure::Store(_)) {
                tracing::warn!(pool, claims = asks.len(), "a batch of claims failed on the database; taking them one at a time");
            }
            for ask in asks {
                if ask.stale() {
                    ask.refuse();
                    continue;
                }
                let answer = claim_run(app, &mut conn, ask.worker).await;
                let _ = ask.answer.send(answer);
            }
        }
    }
}

/// The claims still worth answering; the stale ones are refused.
fn fresh(asks: Vec<Ask>) -> Vec<Ask> {
    let (stale, fresh): (Vec<Ask>, Vec<Ask>) = asks.into_iter().partition(Ask::stale);
    stale.into_iter().for_each(Ask::refuse);
    fresh
}

/// Hands READY runs of `pool` to `workers` in one transaction: each gets one
/// or none, in order.
async fn claim_many(app: &App, conn: &mut AsyncPgConnection, pool: i64, workers: &[Worker]) -> Result<Vec<Option<RunAssignment>>, ClaimFailure> {
    let lease = lease_until(app);
    conn.transaction::<_, ClaimFailure, _>(async |c| {
        let tokens: Vec<_> = workers.iter().map(|_| hangar_store::run_tokens::fresh()).collect();
        let claimants: Vec<hangar_db::runs::Claimant> = workers
            .iter()
            .zip(&tokens)
            .map(|(w, t)| hangar_db::runs::Claimant { worker: w.id, token_id: &t.id, token_hash: &t.hash })
            .collect();
        let claimed = hangar_db::runs::claim_ready_many(c, pool, lease, &claimants)
            .await
            .map_err(|e| ClaimFailure::Db(hangar_db::runs::TransitionFailure::Db(e)))?;
        let mut stacks: HashMap<i64, Prepared> = HashMap::new();
        let mut out: Vec<Option<RunAssignment>> = workers.iter().map(|_| None).collect();
        for (i, run) in claimed {
            let prepared = match stacks.entry(run.stack_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Prepared::read(app, c, &run).await?),
            };
            out[i] = Some(prepared.assignment(app, &run, tokens[i].token.expose(), lease));
        }
        Ok(out)
    })
    .await
}

/// Workers that asked and got nothing are idle (as one claim marks its
/// worker), without waiting for the WAL flush.
async fn mark_idle(conn: &mut AsyncPgConnection, workers: &[i64]) -> Result<(), diesel::result::Error> {
    if workers.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         UPDATE workers SET status = 'idle' FROM relaxed WHERE workers.id = ANY($1) AND status NOT IN ('idle', 'drained')",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(workers)
    .execute(conn)
    .await
    .map(drop)
}
