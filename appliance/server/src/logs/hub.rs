//! One LISTEN connection per server process for `hangar_logs`,
//! `hangar_runs` and `hangar_workers`, fanned out to every live log reader
//! through a broadcast channel, and to the long-poll claims of workers on the
//! HTTP transport (`crate::workers::wait`). A notification is only a wake-up: readers take the bytes from the
//! object store by number, so one that fell behind (or a reconnect that missed
//! notifications) re-reads instead of losing output.

use std::time::Duration;

use std::sync::Arc;

use hangar_db::listen::{ListenOptions, Listener, Notice, WORKERS_CHANNEL, listen};
use hangar_db::runs::{RUNS_CHANNEL, RunChange};
use hangar_db::{Database, DbError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{ChunkNotice, LOGS_CHANNEL};
use crate::workers::wait::Waiters;

/// Wake-ups buffered per reader before it is told it lagged.
const CAPACITY: usize = 4096;

/// What live readers are woken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubEvent {
    /// A chunk was stored.
    Chunk(ChunkNotice),
    /// A run changed state (it may have ended).
    Run(i64),
    /// Notifications may have been missed (the connection was re-made): re-read.
    Resync,
}

impl HubEvent {
    pub(crate) fn concerns(&self, run: i64) -> bool {
        match self {
            HubEvent::Chunk(n) => n.run == run,
            HubEvent::Run(r) => *r == run,
            HubEvent::Resync => true,
        }
    }
}

/// The fan-out. Cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct LogHub {
    tx: broadcast::Sender<HubEvent>,
    /// Ids of runs that changed state, for the console's live pages.
    runs: broadcast::Sender<i64>,
    stop: CancellationToken,
}

impl LogHub {
    /// Starts listening on a dedicated connection (not from the pool: its
    /// notifications queue on that connection) until `stop`.
    pub(crate) fn start(database: Database, stop: CancellationToken, waiters: Arc<Waiters>) -> LogHub {
        let (tx, _) = broadcast::channel(CAPACITY);
        let (runs, _) = broadcast::channel(CAPACITY);
        let hub = LogHub { tx, runs, stop };
        tokio::spawn(run(hub.clone(), database, waiters));
        hub
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.tx.subscribe()
    }

    /// Run ids as runs change state (`0`: changes may have been missed).
    pub(crate) fn run_changes(&self) -> broadcast::Receiver<i64> {
        self.runs.subscribe()
    }

    /// Cancelled when the server shuts down: live readers end then.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stop
    }
}

async fn run(hub: LogHub, db: Database, waiters: Arc<Waiters>) {
    let mut opts = ListenOptions::new("log hub", &[LOGS_CHANNEL, RUNS_CHANNEL, WORKERS_CHANNEL]);
    opts.min_backoff = Duration::from_millis(200);
    opts.max_backoff = Duration::from_secs(10);
    let stop = hub.stop.clone();
    listen(&db, &opts, &mut HubListener(hub, waiters), &stop).await;
}

struct HubListener(LogHub, Arc<Waiters>);

impl Listener for HubListener {
    async fn connected(&mut self) -> Result<(), DbError> {
        // Whatever happened while not listening is found by re-reading.
        let _ = self.0.tx.send(HubEvent::Resync);
        let _ = self.0.runs.send(0);
        self.1.resync();
        Ok(())
    }

    async fn notified(&mut self, batch: Vec<Notice>) {
        let mut changes = Vec::new();
        for n in batch {
            if n.channel == WORKERS_CHANNEL {
                self.1.workers_changed(&n.payload);
                continue;
            }
            let event = if n.channel == LOGS_CHANNEL {
                serde_json::from_str::<ChunkNotice>(&n.payload).ok().map(HubEvent::Chunk)
            } else {
                serde_json::from_str::<RunChange>(&n.payload).ok().map(|c| {
                    let run = c.run;
                    changes.push(c);
                    HubEvent::Run(run)
                })
            };
            if let Some(HubEvent::Run(run)) = event {
                let _ = self.0.runs.send(run);
            }
            match event {
                // No receivers is not an error: nobody is reading a log right now.
                Some(e) => drop(self.0.tx.send(e)),
                None => tracing::warn!(channel = %n.channel, "unreadable notification ignored"),
            }
        }
        // The runs made READY together wake their pools' waiters together.
        self.1.runs_changed(&changes);
    }
}
