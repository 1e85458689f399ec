//! The workers connected right now, each with what it was admitted on and the
//! queue its connection takes notifications from: notifications go to these
//! (an offline worker learns about work when it next polls), and revalidation
//! disconnects those whose admission lapsed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::{Admitted, WorkerRecord};

/// Lookups by worker are constant-time and a pool's members are found in one
/// pass: with thousands of workers, every announcement and re-check asks.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<u64, Entry>,
    /// Connected workers: their pool and how many connections each has
    /// (a reconnect may briefly overlap the connection it replaces).
    online: HashMap<i64, (i64, usize)>,
}

#[derive(Debug)]
struct Entry {
    admitted: Admitted,
    kick: CancellationToken,
    /// Cancelled when the same worker connects again.
    replaced: CancellationToken,
    deliveries: mpsc::Sender<Delivery>,
}

/// Which of a worker's two topics a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    Pool,
    Worker,
}

/// A notification on its way to one connection, which writes it if its
/// client subscribed to `topic`.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub topic: Topic,
    pub payload: Bytes,
}

/// Offers `d` to a connection without waiting: a connection that has fallen
/// this far behind (its queue is full) misses it, as notifications are hints
/// and the worker polls anyway.
fn offer(entry: &Entry, d: Delivery) {
    if let Err(mpsc::error::TrySendError::Full(_)) = entry.deliveries.try_send(d) {
        debug!(worker = entry.admitted.worker, "notification dropped: the connection is behind");
    }
}

impl Registry {
    /// Records a connection; `kick` ends it, `deliveries` feeds it
    /// notifications. Earlier connections of the same worker are told they
    /// were `replaced` (a worker that reconnects before its old connection
    /// timed out has one session, the newest). Returns its key.
    pub(crate) fn insert(
        &self,
        admitted: Admitted,
        kick: CancellationToken,
        replaced: CancellationToken,
        deliveries: mpsc::Sender<Delivery>,
    ) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let (worker, pool) = (admitted.worker, admitted.pool);
        if inner.online.contains_key(&worker) {
            for e in inner.sessions.values().filter(|e| e.admitted.worker == worker) {
                e.replaced.cancel();
            }
        }
        inner.sessions.insert(key, Entry { admitted, kick, replaced, deliveries });
        let slot = inner.online.entry(worker).or_insert((pool, 0));
        *slot = (pool, slot.1 + 1);
        key
    }

    pub(crate) fn remove(&self, key: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.sessions.remove(&key)
            && let Some(slot) = inner.online.get_mut(&e.admitted.worker)
        {
            slot.1 -= 1;
            if slot.1 == 0 {
                inner.online.remove(&e.admitted.worker);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Distinct connected workers of `pool`, in ascending order.
    pub(crate) fn workers_of_pool(&self, pool: i64) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().online.iter().filter(|(_, (p, _))| *p == pool).map(|(w, _)| *w).collect();
        v.sort_unstable();
        v
    }

    /// Offers `payload` on the pool topic to every connection of `pool`'s
    /// workers. Returns how many distinct workers it went to.
    pub(crate) fn deliver_to_pool(&self, pool: i64, payload: &Bytes) -> usize {
        let inner = self.lock();
        let mut reached = HashSet::new();
        for entry in inner.sessions.values().filter(|e| e.admitted.pool == pool) {
            offer(entry, Delivery { topic: Topic::Pool, payload: payload.clone() });
            reached.insert(entry.admitted.worker);
        }
        reached.len()
    }

    /// Offers `payload` on their own topic to every connection of `workers`.
    /// Returns how many distinct workers it went to.
    pub(crate) fn deliver_to_workers(&self, workers: &[i64], payload: &Bytes) -> usize {
        let wanted: HashSet<i64> = workers.iter().copied().collect();
        let inner = self.lock();
        let mut reached = HashSet::new();
        for entry in inner.sessions.values().filter(|e| wanted.contains(&e.admitted.worker)) {
            offer(entry, Delivery { topic: Topic::Worker, payload: payload.clone() });
            reached.insert(entry.admitted.worker);
        }
        reached.len()
    }

    pub(crate) fn is_online(&self, worker: i64) -> bool {
        self.lock().online.contains_key(&worker)
    }

    /// Distinct connected workers, in ascending order.
    pub(crate) fn workers(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().online.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Ends every connection of `workers` whose admission `records` (the
    /// current rows of those workers) no longer supports. Returns how many.
    pub(crate) fn revalidate(&self, workers: &[i64], records: &[WorkerRecord]) -> usize {
        let by_id: HashMap<i64, &WorkerRecord> = records.iter().map(|r| (r.id, r)).collect();
        let asked: HashSet<i64> = workers.iter().copied().collect();
        let mut kicked = 0;
        for entry in self.lock().sessions.values() {
            let worker = entry.admitted.worker;
            if !asked.contains(&worker) {
                continue;
            }
            if let Some(why) = entry.admitted.revoked_by(by_id.get(&worker).copied())
                && !entry.kick.is_cancelled()
            {
                warn!(worker, reason = %why, "disconnecting a worker whose admission lapsed");
                entry.kick.cancel();
                kicked += 1;
            }
        }
        kicked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

