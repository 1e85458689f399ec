//! Long-poll claims, the HTTP worker transport: an idle worker's
//! `POST /api/v1/worker/claim/wait` is held open, without a database
//! connection, until a run of its pool becomes READY, then claims with the
//! one claim logic (exactly once, in the database).
//!
//! Waiting requests are woken in memory by the server's one LISTEN connection
//! (the log hub's): a READY run wakes as many waiters of its pool as there are
//! new runs, longest waiting first, never the whole pool. A worker change
//! (revocation, new credentials, pool reset) wakes that worker's waiter so it
//! is refused at once, and a re-made LISTEN connection wakes everyone, since
//! notifications may have been lost. A waiter whose client went away is
//! dropped with its request and passed over. The worker's next poll, which
//! claims before it waits, is the safety net under lost wake-ups.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_db::runs::RunChange;
use hangar_types::RunState;
use tokio::sync::oneshot;

/// Why a waiter was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A run of the pool became READY: claim.
    Work,
    /// Something may have changed (the worker's record, or notifications
    /// were lost): check the worker again and claim.
    Check,
    /// The same worker asked again: this request answers empty.
    Superseded,
}

/// Every long poll held by this server process.
#[derive(Debug)]
pub(crate) struct Waiters {
    inner: Mutex<Inner>,
    /// Longest a poll is held.
    pub(crate) hold: Duration,
    max: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Tickets per pool, longest waiting first (tickets of waiters already
    /// gone are skipped when met, and swept when they outnumber the living).
    pools: HashMap<i64, Queue>,
    waiting: HashMap<u64, Entry>,
    by_worker: HashMap<i64, u64>,
}

#[derive(Debug, Default)]
struct Queue {
    tickets: VecDeque<u64>,
    /// Waiters of the pool still held.
    live: usize,
}

impl Inner {
    /// Forgets ticket `id` (taken out of `waiting` by the caller) in its pool.
    fn forget(&mut self, id: u64, e: &Entry) {
        if self.by_worker.get(&e.worker) == Some(&id) {
            self.by_worker.remove(&e.worker);
        }
        let Some(q) = self.pools.get_mut(&e.pool) else { return };
        q.live = q.live.saturating_sub(1);
        if q.live == 0 {
            self.pools.remove(&e.pool);
        } else if q.tickets.len() > 2 * q.live + 16 {
            let waiting = &self.waiting;
            q.tickets.retain(|t| waiting.contains_key(t));
        }
    }
}

#[derive(Debug)]
struct Entry {
    worker: i64,
    pool: i64,
    wake: oneshot::Sender<Wake>,
}

/// Too many polls are held already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full {
    pub(crate) held: usize,
}

/// A held poll. Dropping it (the answer was given, or the client went away
/// and its request with it) removes it.
#[derive(Debug)]
pub(crate) struct Ticket {
    waiters: Arc<Waiters>,
    id: u64,
    pool: i64,
    pub(crate) woken: oneshot::Receiver<Wake>,
}

impl Ticket {
    /// Passes a wake-up this waiter got but does not need (it claimed a run
    /// before it waited) on to another waiter of the pool.
    pub(crate) fn pass_on(mut self) {
        if matches!(self.woken.try_recv(), Ok(Wake::Work)) {
            let (waiters, pool) = (self.waiters.clone(), self.pool);
            drop(self);
            waiters.work(pool, 1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.waiters.lock();
        if let Some(e) = inner.waiting.remove(&self.id) {
            inner.forget(self.id, &e);
        }
    }
}

impl Waiters {
    pub(crate) fn new(hold: Duration, max: usize) -> Waiters {
        Waiters { inner: Mutex::new(Inner::default()), hold, max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many polls are held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Holds a poll for `worker` of `pool`. A poll the same worker still holds
    /// is answered empty: its client gave up on it, or it is a duplicate.
    pub(crate) fn register(self: &Arc<Self>, worker: i64, pool: i64) -> Result<Ticket, Full> {
        let mut inner = self.lock();
        if let Some(old) = inner.by_worker.get(&worker).copied()
            && let Some(e) = inner.waiting.remove(&old)
        {
            inner.forget(old, &e);
            let _ = e.wake.send(Wake::Superseded);
        }
        if inner.waiting.len() >= self.max {
            return Err(Full { held: inner.waiting.len() });
        }
        inner.next += 1;
        let id = inner.next;
        let (tx, rx) = oneshot::channel();
        inner.waiting.insert(id, Entry { worker, pool, wake: tx });
        inner.by_worker.insert(worker, id);
        let q = inner.pools.entry(pool).or_default();
        q.tickets.push_back(id);
        q.live += 1;
        Ok(Ticket { waiters: self.clone(), id, pool, woken: rx })
    }

    /// Wakes up to `runs` waiters of `pool`, longest waiting first.
    pub(crate) fn work(&self, pool: i64, runs: usize) {
        let mut inner = self.lock();
        let mut woken = 0;
        while woken < runs {
            let Some(id) = inner.pools.get_mut(&pool).and_then(|q| q.tickets.pop_front()) else { break };
            let Some(e) = inner.waiting.remove(&id) else { continue };
            inner.forget(id, &e);
            // A waiter whose request is being dropped right now cannot take it.
            if e.wake.send(Wake::Work).is_ok() {
                woken += 1;
            }
        }
    }

    /// Wakes the waiters matching `which` to check again.
    fn check(&self, which: impl Fn(&Entry) -> bool) {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner.waiting.iter().filter(|(_, e)| which(e)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(e) = inner.waiting.remove(&id) {
                inner.forget(id, &e);
                let _ = e.wake.send(Wake::Check);
            }
        }
    }

    /// Notifications may have been missed: everyone checks again.
    pub(crate) fn resync(&self) {
        self.check(|_| true);
    }

    /// Run changes heard on `hangar_runs`: READY runs wake waiters of their pool.
    pub(crate) fn runs_changed<'a>(&self, changes: impl IntoIterator<Item = &'a RunChange>) {
        let mut ready: HashMap<i64, usize> = HashMap::new();
        for c in changes {
            if c.to == RunState::Ready
                && let Some(pool) = c.pool
            {
                *ready.entry(pool).or_default() += 1;
            }
        }
        for (pool, runs) in ready {
            self.work(pool, runs);
        }
    }

    /// A change heard on `hangar_workers` (`{"worker": id}` or `{"pool": id}`):
    /// the waiters concerned check their worker again.
    pub(crate) fn workers_changed(&self, payload: &str) {
        #[derive(serde::Deserialize)]
        struct Change {
            #[serde(default)]
            worker: Option<i64>,
            #[serde(default)]
            pool: Option<i64>,
        }
        match serde_json::from_str::<Change>(payload) {
            Ok(Change { worker: Some(w), .. }) => self.check(|e| e.worker == w),
            Ok(Change { pool: Some(p), .. }) => self.check(|e| e.pool == p),
            Ok(_) => {}
            Err(e) => tracing::warn!(payload, error = %e, "unreadable worker change"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiters(max: usize) -> Arc<Waiters> {
        Arc::new(Waiters::new(Duration::from_secs(25), max))
    }

    fn change(pool: i64, to: RunState) -> RunChange {
        RunChange { run: 1, stack: 1, pool: Some(pool), worker: None, from: Some(RunState::Queued), to }
    }

    #[test]
    fn a_ready_run_wakes_one_waiter_of_its_pool_longest_waiting_first() {
        let w = waiters(10);
        let mut a = w.register(1, 7).unwrap();
        let mut b = w.register(2, 7).unwrap();
        let mut other = w.register(3, 8).unwrap();
        w.runs_changed(&[change(7, RunState::Ready), change(7, RunState::Planning)]);
        assert_eq!(a.woken.try_recv(), Ok(Wake::Work));
        assert!(b.woken.try_recv().is_err());
        assert!(other.woken.try_recv().is_err());
        assert_eq!(w.held(), 2);
        w.work(7, 5);
        assert_eq!(b.woken.try_recv(), Ok(Wake::Work));
        assert_eq!(w.held(), 1);
    }

    #[test]
    fn a_waiter_that_went_away_is_passed_over_and_forgotten() {
        let w = waiters(10);
        let gone = w.register(1, 7).unwrap();
        let mut next = w.register(2, 7).unwrap();
        drop(gone);
        assert_eq!(w.held(), 1);
        w.work(7, 1);
        assert_eq!(next.woken.try_recv(), Ok(Wake::Work));
        drop(next);
        assert_eq!(w.held(), 0);
        assert!(w.lock().pools.is_empty() && w.lock().by_worker.is_empty());
    }

    #[test]
    fn polls_are_bounded_and_one_per_worker() {
        let w = waiters(2);
        let mut first = w.register(1, 7).unwrap();
        let _second = w.register(2, 7).unwrap();
        assert_eq!(w.register(3, 7).unwrap_err(), Full { held: 2 });
        // The same worker again replaces its own poll, within the bound.
        let _again = w.register(1, 7).unwrap();
        assert_eq!(first.woken.try_recv(), Ok(Wake::Superseded));
        assert_eq!(w.held(), 2);
    }

    #[test]
    fn worker_changes_and_resyncs_wake_whom_they_concern() {
        let w = waiters(10);
        let mut a = w.register(1, 7).unwrap();
        let mut b = w.register(2, 7).unwrap();
        let mut c = w.register(3, 8).unwrap();
        w.workers_changed(r#"{"worker":2}"#);
        assert_eq!(b.woken.try_recv(), Ok(Wake::Check));
        assert!(a.woken.try_recv().is_err());
        w.workers_changed(r#"{"pool":7}"#);
        assert_eq!(a.woken.try_recv(), Ok(Wake::Check));
        w.workers_changed("not json");
        w.resync();
        assert_eq!(c.woken.try_recv(), Ok(Wake::Check));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn an_unneeded_wake_up_is_passed_on() {
        let w = waiters(10);
        let first = w.register(1, 7).unwrap();
        let mut second = w.register(2, 7).unwrap();
        w.work(7, 1);
        first.pass_on();
        assert_eq!(second.woken.try_recv(), Ok(Wake::Work));
    }
}
