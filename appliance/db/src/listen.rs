//! The one LISTEN loop: a dedicated connection (not from a pool: notifications
//! queue on the connection that listens) LISTENs on some channels, hands what
//! arrives to a [`Listener`] in batches, and reconnects with back-off when the
//! connection fails. Notifications sent while disconnected are lost, so the
//! listener is told of every (re)connect and catches up then.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Database, DbError};

/// The channel the `worker_credentials` migration's triggers notify on when a
/// worker is revoked, its token or certificate changes, or its pool is reset:
/// `{"worker": id}` or `{"pool": id}`.
pub const WORKERS_CHANNEL: &str = "hangar_workers";

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub channel: String,
    pub payload: String,
}

/// What a LISTEN loop does with what it hears.
pub trait Listener: Send {
    /// After every (re)connect, before any notification: catch up with what
    /// may have been missed. An error drops the connection and retries.
    fn connected(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Notifications that arrived together (at least one, at most the
    /// configured batch), in order.
    fn notified(&mut self, batch: Vec<Notice>) -> impl Future<Output = ()> + Send;

    /// The connection was lost (or never made); a reconnect follows.
    fn disconnected(&mut self) {}

    /// Called every [`ListenOptions::tick`] while connected.
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a LISTEN loop listens.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// For logs: what listens (`"log hub"`, `"broker bridge"`).
    pub name: &'static str,
    pub channels: Vec<&'static str>,
    /// First pause after a failure; it doubles up to `max_backoff` and starts
    /// over once a connection works.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Most notifications handed over at once, so a flood cannot starve ticks.
    pub max_batch: usize,
    pub tick: Option<Duration>,
}

impl ListenOptions {
    pub fn new(name: &'static str, channels: &[&'static str]) -> ListenOptions {
        ListenOptions {
            name,
            channels: channels.to_vec(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_batch: 4096,
            tick: None,
        }
    }
}

/// Listens until `stop`, reconnecting with back-off.
pub async fn listen<L: Listener>(db: &Database, opts: &ListenOptions, listener: &mut L, stop: &CancellationToken) {
    let mut backoff = opts.min_backoff;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = session(db, opts, listener, &mut backoff) => r,
        };
        listener.disconnected();
        match outcome {
            Ok(()) => warn!(database = db.target(), listener = opts.name, "LISTEN connection closed; reconnecting"),
            Err(e) => warn!(
                database = db.target(),
                listener = opts.name,
                error = %hangar_types::error_chain(&e),
                retry_in = ?backoff,
                "LISTEN connection failed"
            ),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
    listener.disconnected();
}

/// One connection's life: LISTEN, catch up, then hand over notifications.
async fn session<L: Listener>(
    db: &Database,
    opts: &ListenOptions,
    listener: &mut L,
    backoff: &mut Duration,
) -> Result<(), DbError> {
    let mut conn = db.connect().await?;
    for channel in &opts.channels {
        diesel::sql_query(format!("LISTEN {channel}")).execute(&mut conn).await?;
    }
    listener.connected().await?;
    *backoff = opts.min_backoff;
    info!(database = db.target(), listener = opts.name, channels = ?opts.channels, "listening");
    let mut stream = std::pin::pin!(conn.notifications_stream());
    let mut tick = opts.tick.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    if let Some(t) = tick.as_mut() {
        // The first tick of an interval is immediate; catching up just happened.
        t.tick().await;
    }
    loop {
        let ticked = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = stream.next() => match n {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(n)) => {
                    // What else has already arrived is handled with it.
                    let mut batch = vec![Notice { channel: n.channel, payload: n.payload }];
                    let mut ended = None;
                    while batch.len() < opts.max_batch.max(1) {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(n))) => batch.push(Notice { channel: n.channel, payload: n.payload }),
                            Some(Some(Err(e))) => {
                                ended = Some(Err(e.into()));
                                break;
                            }
                            Some(None) => {
                                ended = Some(Ok(()));
                                break;
                            }
                            None => break,
                        }
                    }
                    listener.notified(batch).await;
                    if let Some(end) = ended {
                        return end;
                    }
                }
            },
            _ = ticked => listener.tick().await,
        }
    }
}
