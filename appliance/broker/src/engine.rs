//! rumqttd's router, kept for the server's own links: the publisher and a
//! health probe, whose messages go through it to check that it runs. Worker
//! connections do not reach it (see `session`), and notifications to workers
//! do not pass through it (see `registry`).
//!
//! The router runs on its own OS thread and has no stop: after shutdown it holds
//! no connection and sleeps on an empty queue until the process exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish};
use rumqttd::{Notification as RouterNotification, Router, RouterConfig};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::BrokerError;

/// Retention of each topic's in-memory log: rumqttd keeps up to
/// `SEGMENT_COUNT` segments of about `SEGMENT_BYTES` per topic. Only the
/// probe's topic gets messages, so the smallest it allows is enough.
const SEGMENT_BYTES: usize = 1024;
const SEGMENT_COUNT: usize = 2;
/// The router's links: the publisher and the probe, with room to spare.
const LOCAL_LINKS: usize = 8;
/// Only the server's probe link subscribes here; tenants cannot reach it.
const PROBE_TOPIC: &str = "/hangar/probe";
/// Fan-out requests queued for the publisher thread before callers wait.
const FANOUT_QUEUE: usize = 1024;

/// A link the router should accept.
#[derive(Debug, Clone)]
struct LinkSpec {
    client_id: String,
    /// Lets a publish create its topic when nobody subscribed to it yet;
    /// without it the router drops the publishing link.
    dynamic_filters: bool,
}

type LinkParts = (LinkTx, LinkRx, RouterNotification);
/// rumqttd's `LinkError` carries whole router events (~800 bytes); only its text is kept.
type MakeLink = dyn Fn(&LinkSpec) -> Result<LinkParts, String> + Send + Sync;

struct Fanout {
    topics: Vec<String>,
    payload: Bytes,
}

pub(crate) struct Engine {
    fanout: Mutex<Option<mpsc::Sender<Fanout>>>,
    publisher: Mutex<Option<std::thread::JoinHandle<()>>>,
    probe_lock: tokio::sync::Mutex<()>,
    probe_seq: AtomicU64,
    probe_seen: watch::Receiver<u64>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts a router, its publisher thread and its probe (whose reader
    /// runs on `tasks` until `stop`).
    pub(crate) async fn start(tasks: &TaskTracker, stop: CancellationToken) -> Result<Engine, BrokerError> {
        let config = RouterConfig {
            max_connections: LOCAL_LINKS,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let make: Arc<MakeLink> = Arc::new(move |spec: &LinkSpec| {
            LinkBuilder::new(&spec.client_id, router_tx.clone())
                .clean_session(true)
                .dynamic_filters(spec.dynamic_filters)
                .build()
                .map_err(|e| e.to_string())
        });
        let local = |client_id: &str, dynamic_filters| LinkSpec { client_id: client_id.into(), dynamic_filters };
        let refused = |link: &'static str| move |reason: String| BrokerError::Router { link, reason };

        let (pub_tx, pub_rx, _) = link_blocking(&make, local("hangar-server", true)).await.map_err(refused("publisher"))?;
        let (fanout_tx, fanout_rx) = mpsc::channel(FANOUT_QUEUE);
        let publisher = std::thread::Builder::new()
            .name("mqtt-publisher".into())
            .spawn(move || publish_loop(pub_tx, pub_rx, fanout_rx))
            .map_err(|e| BrokerError::Router { link: "publisher", reason: e.to_string() })?;

        let (mut probe_tx, probe_rx, _) = link_blocking(&make, local("hangar-probe", false)).await.map_err(refused("probe"))?;
        tokio::task::spawn_blocking(move || probe_tx.subscribe(PROBE_TOPIC).map(|_| probe_tx).map_err(|e| e.to_string()))
            .await?
            .map_err(refused("probe"))?;
        let (seen_tx, seen_rx) = watch::channel(0u64);
        tasks.spawn(read_probe(probe_rx, seen_tx, stop));

        Ok(Engine {
            fanout: Mutex::new(Some(fanout_tx)),
            publisher: Mutex::new(Some(publisher)),
            probe_lock: tokio::sync::Mutex::new(()),
            probe_seq: AtomicU64::new(0),
            probe_seen: seen_rx,
        })
    }

    /// Publishes `payload` (QoS 0) on each of `topics`, in order, through the router.
    pub(crate) async fn publish(&self, topics: Vec<String>, payload: Bytes) -> Result<(), BrokerError> {
        let tx = self.fanout.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(BrokerError::Stopped)?;
        if topics.is_empty() {
            return Ok(());
        }
        tx.send(Fanout { topics, payload }).await.map_err(|_| BrokerError::Stopped)
    }

    /// Whether the engine still takes messages (`close` was not called).
    pub(crate) fn is_open(&self) -> bool {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether a message goes through the router and comes back within `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration) -> bool {
        let _one_at_a_time = self.probe_lock.lock().await;
        let seq = self.probe_seq.fetch_add(1, Ordering::Relaxed) + 1;
        if self.publish(vec![PROBE_TOPIC.into()], Bytes::from(seq.to_string())).await.is_err() {
            return false;
        }
        let mut seen = self.probe_seen.clone();
        tokio::time::timeout(timeout, seen.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops taking messages and waits for the publisher to hand over the
    /// ones already queued.
    pub(crate) async fn close(&self) {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner()).take();
        let publisher = self.publisher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = publisher {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// `LinkBuilder::build` waits on a blocking channel for the router's answer.
async fn link_blocking(make: &Arc<MakeLink>, spec: LinkSpec) -> Result<LinkParts, String> {
    let make = make.clone();
    tokio::task::spawn_blocking(move || make(&spec)).await.unwrap_or_else(|e| Err(e.to_string()))
}

/// The publisher thread: hands each fan-out to the router as one batch (one
/// wake-up of the router for a whole pool), until the queue closes.
fn publish_loop(mut tx: LinkTx, _rx: LinkRx, mut queue: mpsc::Receiver<Fanout>) {
    while let Some(Fanout { mut topics, payload }) = queue.blocking_recv() {
        let Some(last) = topics.pop() else { continue };
        {
            let mut buffer = tx.buffer();
            for topic in topics {
                buffer.push_back(publish(topic, payload.clone()));
            }
        }
        // Pushes the last one and wakes the router for the whole batch.
        if let Err(e) = futures::executor::block_on(tx.send(publish(last, payload))) {
            error!(error = %e, "the MQTT router is gone; notifications stop");
            return;
        }
    }
    let bye = Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None);
    let _ = futures::executor::block_on(tx.send(bye));
    debug!("publisher stopped");
}

fn publish(topic: String, payload: Bytes) -> Packet {
    Packet::Publish(Publish::new(Bytes::from(topic), payload, false), None)
}

async fn read_probe(mut rx: LinkRx, seen: watch::Sender<u64>, stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.next() => n,
        };
        match next {
            Ok(Some(RouterNotification::Forward(f))) => {
                if let Some(seq) = std::str::from_utf8(&f.publish.payload).ok().and_then(|s| s.parse::<u64>().ok()) {
                    seen.send_if_modified(|s| {
                        let newer = seq > *s;
                        if newer {
                            *s = seq;
                        }
                        newer
                    });
                }
            }
            Ok(Some(RouterNotification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "the MQTT router dropped the probe link");
                return;
            }
        }
    }
}
