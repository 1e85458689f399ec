//! The consuming side of the queue: claims batches, runs each job's handler (by
//! kind) concurrently, acknowledges in batches, keeps leases alive while handlers
//! run, and sleeps on LISTEN/NOTIFY when there is nothing due.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use hangar_runner::{BackgroundWorker, RunnerOptions, Step};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ClaimedJob, FailOutcome, JobToken, NOTIFY_CHANNEL, RetryPolicy};
use crate::{Database, DbError, DbPool};

/// Why a handler did not finish its job.
#[derive(Debug, Clone)]
pub struct JobError {
    pub message: String,
    /// A permanent failure is not retried (a malformed payload, say).
    pub permanent: bool,
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            permanent: false,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            permanent: true,
        }
    }
    /// A retryable failure carrying an error and its whole cause chain.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        JobError::retry(hangar_types::error_chain(e))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Handles the jobs of one kind. Handlers must be idempotent: a job can be
/// delivered again after a crash.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>>;
}

struct FnHandler<F>(F);

impl<F, Fut> JobHandler for FnHandler<F>
where
    F: Fn(ClaimedJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn handle(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> {
        (self.0)(job).boxed()
    }
}

/// Wraps an async closure as a handler.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn JobHandler>
where
    F: Fn(ClaimedJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Handlers by job kind.
#[derive(Default, Clone)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn JobHandler>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<_> = self.by_kind.keys().collect();
        kinds.sort();
        f.debug_struct("Handlers").field("kinds", &kinds).finish()
    }
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, kind: impl Into<String>, handler: Arc<dyn JobHandler>) -> &mut Self {
        self.by_kind.insert(kind.into(), handler);
        self
    }
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<_> = self.by_kind.keys().cloned().collect();
        k.sort();
        k
    }
}

/// How a consumer works.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub queue: String,
    /// Recorded in `locked_by`; unique per process.
    pub consumer_id: String,
    /// Jobs claimed per query.
    pub batch_size: i64,
    /// Jobs running at once in this process.
    pub concurrency: usize,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// Longest sleep without a notification (a safety net, not the wake-up path).
    pub idle_poll: Duration,
    /// How long a shutdown waits for running handlers before giving their jobs back.
    pub shutdown_deadline: Duration,
}

impl ConsumerConfig {
    pub fn new(queue: &str, consumer_id: &str) -> Self {
        ConsumerConfig {
            queue: queue.into(),
            consumer_id: consumer_id.into(),
            batch_size: 100,
            concurrency: 64,
            lease: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            idle_poll: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// Counters a running consumer keeps (for logs, health and benchmarks).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub claimed: AtomicU64,
    pub completed: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub claim_queries: AtomicU64,
    pub wakeups: AtomicU64,
}

struct Outcome {
    token: JobToken,
    kind: String,
    result: Result<(), JobError>,
}

/// A queue consumer. `run` returns after `shutdown` is cancelled and in-flight
/// jobs were finished (or given back at the deadline).
pub struct Consumer {
    db: Database,
    pool: DbPool,
    cfg: ConsumerConfig,
    handlers: Arc<Handlers>,
    stats: Arc<ConsumerStats>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("cfg", &self.cfg)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn new(db: Database, pool: DbPool, cfg: ConsumerConfig, handlers: Handlers) -> Self {
        Consumer {
            db,
            pool,
            cfg,
            handlers: Arc::new(handlers),
            stats: Arc::new(ConsumerStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` is cancelled, then lets running handlers finish
    /// (until the shutdown deadline) and flushes their outcomes.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DbError> {
        let span = info_span!("consumer", queue = %self.cfg.queue, consumer = %self.cfg.consumer_id);
        let deadline = self.cfg.shutdown_deadline;
        async move {
            let worker = ConsumerLoop::start(self);
            hangar_runner::run(worker, shutdown, RunnerOptions { exit_deadline: deadline, ..Default::default() }).await;
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// The consumer as a background worker: a unit claims one batch and starts its
/// handlers; it is idle when fewer jobs were due than it asked for.
struct ConsumerLoop {
    cfg: Arc<ConsumerConfig>,
    pool: DbPool,
    handlers: Arc<Handlers>,
    stats: Arc<ConsumerStats>,
    inflight: Arc<Mutex<HashMap<i64, JobToken>>>,
    permits: Arc<Semaphore>,
    wake_rx: watch::Receiver<u64>,
    out_tx: Option<mpsc::UnboundedSender<Outcome>>,
    background: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acker: Option<tokio::task::JoinHandle<()>>,
    /// The last unit found every permit taken: wait for one, not for jobs.
    full: bool,
}

impl ConsumerLoop {
    fn start(c: Consumer) -> ConsumerLoop {
        let cfg = Arc::new(c.cfg.clone());
        let inflight: Arc<Mutex<HashMap<i64, JobToken>>> = Arc::default();
        let (wake_tx, wake_rx) = watch::channel(0u64);
        let wake_tx = Arc::new(wake_tx);
        let background = CancellationToken::new();
        let listener = tokio::spawn(listen(c.db.clone(), cfg.queue.clone(), wake_tx.clone(), background.clone()));
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outcome>();
        let acker = tokio::spawn(acknowledge(
            c.pool.clone(),
            cfg.clone(),
            out_rx,
            inflight.clone(),
            c.stats.clone(),
            wake_tx,
        ));
        let renewer = tokio::spawn(renew_leases(c.pool.clone(), cfg.clone(), inflight.clone(), background.clone()));
        info!(kinds = ?c.handlers.kinds(), "consumer started");
        ConsumerLoop {
            permits: Arc::new(Semaphore::new(cfg.concurrency)),
            cfg,
            pool: c.pool,
            handlers: c.handlers,
            stats: c.stats,
            inflight,
            wake_rx,
            out_tx: Some(out_tx),
            background,
            tasks: vec![listener, renewer],
            acker: Some(acker),
            full: false,
        }
    }

    fn dispatch(&self, job: ClaimedJob, permit: tokio::sync::OwnedSemaphorePermit) {
        let Some(tx) = self.out_tx.clone() else { return };
        if job.attempt > job.max_attempts {
            // Its consumers died on every attempt: do not risk another.
            let msg = format!(
                "abandoned: the lease expired on each of {} attempts (consumer lost)",
                job.max_attempts
            );
            let _ = tx.send(Outcome { token: job.token(), kind: job.kind.clone(), result: Err(JobError::permanent(msg)) });
            return;
        }
        self.inflight.lock().expect("inflight lock").insert(job.id, job.token());
        let handler = self.handlers.by_kind.get(&job.kind).cloned();
        tokio::spawn(async move {
            let token = job.token();
            let kind = job.kind.clone();
            let span = info_span!("job", job = job.id, kind = %kind, attempt = job.attempt);
            let result = match handler {
                None => Err(JobError::retry(format!("no handler for job kind {kind:?}"))),
                Some(h) => match AssertUnwindSafe(h.handle(job)).catch_unwind().instrument(span).await {
                    Ok(r) => r,
                    Err(panic) => Err(JobError::retry(format!("handler panicked: {}", panic_message(&panic)))),
                },
            };
            let _ = tx.send(Outcome { token, kind, result });
            drop(permit);
        });
    }
}

impl BackgroundWorker for ConsumerLoop {
    fn name(&self) -> String {
        format!("consumer {} of queue {}", self.cfg.consumer_id, self.cfg.queue)
    }

    async fn work(&mut self) -> Result<Step, String> {
        let room = self.permits.available_permits();
        if room == 0 {
            self.full = true;
            return Ok(Step::Idle);
        }
        self.full = false;
        let want = (room as i64).min(self.cfg.batch_size).max(1);
        // Mark notifications seen *before* claiming, so one that arrives during
        // the claim wakes the next wait instead of being lost.
        self.wake_rx.borrow_and_update();
        let mut conn = self.pool.get().await.map_err(|e| hangar_types::error_chain(&e))?;
        self.stats.claim_queries.fetch_add(1, Ordering::Relaxed);
        let claimed = super::claim(&mut conn, &self.cfg.queue, &self.cfg.consumer_id, want, self.cfg.lease)
            .await
            .map_err(|e| format!("claim failed: {}", hangar_types::error_chain(&e)))?;
        drop(conn);
        let got = claimed.len() as i64;
        self.stats.claimed.fetch_add(got as u64, Ordering::Relaxed);
        for job in claimed {
            let permit = self.permits.clone().try_acquire_owned().expect("a permit per claimed job");
            self.dispatch(job, permit);
        }
        Ok(if got >= want { Step::Busy } else { Step::Idle })
    }

    async fn wait_for_work(&mut self) {
        if self.full {
            let _ = self.permits.clone().acquire_owned().await;
            return;
        }
        // Sleep until a notification, the next due time, or the safety-net poll.
        let next_due = match self.pool.get().await {
            Ok(mut conn) => super::next_due(&mut conn, &self.cfg.queue).await.ok().flatten(),
            Err(_) => None,
        };
        let sleep_for = match next_due {
            Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.cfg.idle_poll),
            None => self.cfg.idle_poll,
        };
        if sleep_for.is_zero() {
            return;
        }
        tokio::select! {
            r = self.wake_rx.changed() => {
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            }
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }

    async fn finish(&mut self) {
        info!("consumer stopping");
        let all = self.cfg.concurrency as u32;
        let finished = tokio::time::timeout(self.cfg.shutdown_deadline, self.permits.acquire_many(all)).await;
        self.out_tx = None;
        if let Some(acker) = self.acker.take() {
            // Handlers still running past the deadline keep the channel open; do
            // not wait for them beyond a short flush.
            let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
        }
        self.background.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if finished.is_err() {
            let left: Vec<JobToken> = self.inflight.lock().expect("inflight lock").values().copied().collect();
            warn!(jobs = left.len(), "shutdown deadline passed; giving running jobs back");
            if let Ok(mut conn) = self.pool.get().await {
                let _ = super::release(&mut conn, &left).await;
            }
        }
        info!("consumer stopped");
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".into()
    }
}

/// Writes outcomes back: completions in batches (whatever has arrived since the
/// last write), failures one by one. Keeps retrying while the database is away.
async fn acknowledge(
    pool: DbPool,
    cfg: Arc<ConsumerConfig>,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    inflight: Arc<Mutex<HashMap<i64, JobToken>>>,
    stats: Arc<ConsumerStats>,
    wake: Arc<watch::Sender<u64>>,
) {
    let mut done: Vec<JobToken> = Vec::new();
    let mut failed: Vec<Outcome> = Vec::new();
    loop {
        if done.is_empty() && failed.is_empty() {
            match rx.recv().await {
                Some(o) => sort(o, &mut done, &mut failed),
                None => return,
            }
        }
        while done.len() + failed.len() < 1000 {
            match rx.try_recv() {
                Ok(o) => sort(o, &mut done, &mut failed),
                Err(_) => break,
            }
        }
        let mut conn = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %hangar_types::error_chain(&e), pending = done.len() + failed.len(), "cannot acknowledge yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !done.is_empty() {
            match super::complete(&mut conn, &done).await {
                Ok(n) => {
                    stats.completed.fetch_add(done.len() as u64, Ordering::Relaxed);
                    if (n as usize) < done.len() {
                        debug!(stale = done.len() - n as usize, "some claims had passed to another consumer");
                    }
                    let mut map = inflight.lock().expect("inflight lock");
                    for t in done.drain(..) {
                        map.remove(&t.id);
                    }
                }
                Err(e) => {
                    warn!(error = %hangar_types::error_chain(&e), "acknowledgement failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        while let Some(o) = failed.pop() {
            let err = o.result.as_ref().err().cloned().unwrap_or_else(|| JobError::retry(""));
            match super::fail(&mut conn, o.token, &err.message, &cfg.retry, err.permanent).await {
                Ok(outcome) => {
                    match outcome {
                        FailOutcome::Dead => {
                            stats.dead.fetch_add(1, Ordering::Relaxed);
                            warn!(job = o.token.id, kind = %o.kind, attempt = o.token.attempt, error = %err.message, "job is dead");
                        }
                        FailOutcome::Retry { at } => {
                            stats.retried.fetch_add(1, Ordering::Relaxed);
                            // The main loop may have gone to sleep before this retry
                            // existed; let it recompute when the next job is due.
                            wake.send_modify(|n| *n += 1);
                            info!(job = o.token.id, kind = %o.kind, attempt = o.token.attempt, error = %err.message, retry_at = %at, "job failed; will retry");
                        }
                        FailOutcome::Stale => {
                            debug!(job = o.token.id, "failure of a claim that had passed on");
                        }
                    }
                    inflight.lock().expect("inflight lock").remove(&o.token.id);
                }
                Err(e) => {
                    warn!(error = %hangar_types::error_chain(&e), "recording a failure failed; retrying");
                    failed.push(o);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

fn sort(o: Outcome, done: &mut Vec<JobToken>, failed: &mut Vec<Outcome>) {
    if o.result.is_ok() {
        done.push(o.token);
    } else {
        failed.push(o);
    }
}

/// Renews the leases of running jobs every third of the lease.
async fn renew_leases(
    pool: DbPool,
    cfg: Arc<ConsumerConfig>,
    inflight: Arc<Mutex<HashMap<i64, JobToken>>>,
    stop: CancellationToken,
) {
    let every = cfg.lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let tokens: Vec<JobToken> = inflight.lock().expect("inflight lock").values().copied().collect();
        if tokens.is_empty() {
            continue;
        }
        match pool.get().await {
            Ok(mut conn) => match super::extend(&mut conn, &tokens, cfg.lease).await {
                Ok(held) if held.len() < tokens.len() => {
                    warn!(lost = tokens.len() - held.len(), "some leases were lost before renewal");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %hangar_types::error_chain(&e), "lease renewal failed"),
            },
            Err(e) => warn!(error = %hangar_types::error_chain(&e), "lease renewal failed"),
        }
    }
}

/// Bumps `wake` for every notification about `queue`, and after every
/// (re)connect and disconnect: notifications sent while disconnected are lost,
/// so the consumer polls then.
struct QueueListener {
    queue: String,
    wake: Arc<watch::Sender<u64>>,
}

impl crate::listen::Listener for QueueListener {
    async fn connected(&mut self) -> Result<(), DbError> {
        self.wake.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn notified(&mut self, batch: Vec<crate::listen::Notice>) {
        if batch.iter().any(|n| n.payload == self.queue) {
            self.wake.send_modify(|c| *c += 1);
        }
    }

    fn disconnected(&mut self) {
        self.wake.send_modify(|n| *n += 1);
    }
}

async fn listen(db: Database, queue: String, wake: Arc<watch::Sender<u64>>, stop: CancellationToken) {
    let opts = crate::listen::ListenOptions::new("job queue", &[NOTIFY_CHANNEL]);
    crate::listen::listen(&db, &opts, &mut QueueListener { queue, wake }, &stop).await;
}
