//! One LISTEN connection per server process for `hangar_logs` and
//! `hangar_runs`, fanned out to every live log reader through a broadcast
//! channel. A notification is only a wake-up: readers take the bytes from the
//! object store by number, so one that fell behind (or a reconnect that missed
//! notifications) re-reads instead of losing output.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hangar_db::runs::{RUNS_CHANNEL, RunChange};
use hangar_db::{Database, DbError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{ChunkNotice, LOGS_CHANNEL};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
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
    stop: CancellationToken,
}

impl LogHub {
    /// Starts listening on a dedicated connection (not from the pool: its
    /// notifications queue on that connection) until `stop`.
    pub(crate) fn start(database: Database, stop: CancellationToken) -> LogHub {
        let (tx, _) = broadcast::channel(CAPACITY);
        let hub = LogHub { tx, stop };
        tokio::spawn(run(hub.clone(), database));
        hub
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.tx.subscribe()
    }

    /// Cancelled when the server shuts down: live readers end then.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stop
    }
}

async fn run(hub: LogHub, db: Database) {
    let hub = Arc::new(hub);
    let mut backoff = MIN_BACKOFF;
    loop {
        let outcome = tokio::select! {
            _ = hub.stop.cancelled() => break,
            r = listen(&hub, &db, &mut backoff) => r,
        };
        match outcome {
            Ok(()) => tracing::warn!(database = db.target(), "log LISTEN connection closed; reconnecting"),
            Err(e) => tracing::warn!(
                database = db.target(),
                error = %hangar_db::error_chain(&e),
                retry_in = ?backoff,
                "log LISTEN connection failed"
            ),
        }
        tokio::select! {
            _ = hub.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen(hub: &LogHub, db: &Database, backoff: &mut Duration) -> Result<(), DbError> {
    use diesel_async::RunQueryDsl;
    let mut conn = db.connect().await?;
    diesel::sql_query(format!("LISTEN {LOGS_CHANNEL}")).execute(&mut conn).await?;
    diesel::sql_query(format!("LISTEN {RUNS_CHANNEL}")).execute(&mut conn).await?;
    *backoff = MIN_BACKOFF;
    // Whatever happened while not listening is found by re-reading.
    let _ = hub.tx.send(HubEvent::Resync);
    tracing::info!(database = db.target(), "listening for log chunks");
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n?;
        let event = if n.channel == LOGS_CHANNEL {
            serde_json::from_str::<ChunkNotice>(&n.payload).ok().map(HubEvent::Chunk)
        } else {
            serde_json::from_str::<RunChange>(&n.payload).ok().map(|c| HubEvent::Run(c.run))
        };
        match event {
            // No receivers is not an error: nobody is reading a log right now.
            Some(e) => drop(hub.tx.send(e)),
            None => tracing::warn!(channel = %n.channel, "unreadable notification ignored"),
        }
    }
    Ok(())
}
