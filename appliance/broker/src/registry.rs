//! The workers connected right now, each with what it was admitted on: pool
//! fan-out goes to these (an offline worker learns about work when it next
//! polls), and revalidation disconnects those whose admission lapsed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::auth::{Admitted, WorkerRecord};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    admitted: Admitted,
    kick: CancellationToken,
}

impl Registry {
    /// Records a connection; `kick` ends it. Returns its key.
    pub(crate) fn insert(&self, admitted: Admitted, kick: CancellationToken) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, Entry { admitted, kick });
        key
    }

    pub(crate) fn remove(&self, key: u64) {
        self.lock().remove(&key);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Distinct connected workers of `pool`.
    pub(crate) fn workers_of_pool(&self, pool: i64) -> Vec<i64> {
        let set: BTreeSet<i64> =
            self.lock().values().filter(|e| e.admitted.pool == pool).map(|e| e.admitted.worker).collect();
        set.into_iter().collect()
    }

    pub(crate) fn is_online(&self, worker: i64) -> bool {
        self.lock().values().any(|e| e.admitted.worker == worker)
    }

    /// Distinct connected workers.
    pub(crate) fn workers(&self) -> Vec<i64> {
        let set: BTreeSet<i64> = self.lock().values().map(|e| e.admitted.worker).collect();
        set.into_iter().collect()
    }

    /// Ends every connection of `workers` whose admission `records` (the
    /// current rows of those workers) no longer supports. Returns how many.
    pub(crate) fn revalidate(&self, workers: &[i64], records: &[WorkerRecord]) -> usize {
        let by_id: HashMap<i64, &WorkerRecord> = records.iter().map(|r| (r.id, r)).collect();
        let mut kicked = 0;
        for entry in self.lock().values() {
            let worker = entry.admitted.worker;
            if !workers.contains(&worker) {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

