//! One client connection, from TCP accept to close: TLS with a verified client
//! certificate, a CONNECT within the time limit, admission, then the worker's
//! packets answered here — the worker may only subscribe to its own two
//! topics and never publishes. Notifications come from the connection's own
//! queue (see `registry`), written when the client subscribed to their topic.
//!
//! This replaces rumqttd's own listener, which completes each TLS handshake
//! inline in its accept loop without a time limit (one silent client stops
//! every other from connecting), cannot show the client certificate to its
//! authentication hook, closes refused clients without a CONNACK, and has no
//! way to stop. Worker connections do not reach rumqttd's router at all:
//! what a worker may send (SUBSCRIBE and UNSUBSCRIBE of its own topics,
//! pings, DISCONNECT) is answered here, so a connection costs only its
//! socket, its TLS state, its buffer and its queue, not the router's
//! per-link buffers and per-filter logs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Packet, PingResp, Protocol, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::auth::{Admitted, Hello, Refusal};
use crate::registry::{Delivery, Topic};
use crate::tls::{PeerCert, peer_cert};
use crate::wire;

/// How long one write to a client may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Notifications waiting for one connection's socket; more are dropped.
const DELIVERY_QUEUE: usize = 32;

type Tls = TlsStream<TcpStream>;

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr, stop: CancellationToken) {
    let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
        debug!(%addr, "too many connections being set up; closed at once");
        return;
    };
    let limit = shared.config.connect_timeout();
    let opened = tokio::select! {
        _ = stop.cancelled() => return,
        r = tokio::time::timeout(limit, open(&shared, tcp, addr)) => r,
    };
    drop(pending);
    let mut conn = match opened {
        Ok(Some(conn)) => conn,
        Ok(None) => return,
        Err(_) => {
            info!(%addr, timeout = ?limit, "no TLS handshake and CONNECT in time; closed");
            return;
        }
    };
    let worker = conn.admitted.worker;
    let kick = stop.child_token();
    let replaced = CancellationToken::new();
    let (deliveries_tx, mut deliveries) = mpsc::channel(DELIVERY_QUEUE);
    let _registered = Registered::new(&shared, conn.admitted.clone(), kick.clone(), replaced.clone(), deliveries_tx);
    info!(worker, pool = conn.admitted.pool, %addr, "worker connected");
    let end = pump(&mut conn, &mut deliveries, shared.config.limits.max_packet_size, &kick, &replaced).await;
    match &end {
        End::ClientDisconnected | End::Closed => info!(worker, %addr, "worker disconnected"),
        End::Kicked => info!(worker, %addr, "worker disconnected by the broker"),
        End::Replaced => info!(worker, %addr, "worker connection replaced by a newer one"),
        End::KeepAlive => info!(worker, %addr, "worker disconnected: keep-alive expired"),
        End::Network(e) => info!(worker, %addr, error = %e, "worker connection lost"),
        End::Malformed(e) => warn!(worker, %addr, error = %e, "worker sent a malformed packet; disconnected"),
        End::Violation(what) => warn!(worker, %addr, violation = %what, "worker broke the broker's rules; disconnected"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.tls.shutdown()).await;
}

/// An admitted connection.
struct Conn {
    tls: Tls,
    /// Bytes read after the CONNECT.
    buf: BytesMut,
    admitted: Admitted,
    keep_alive: Duration,
    _slot: OwnedSemaphorePermit,
}

/// Keeps a connection in the registry for as long as it is served, even if
/// serving it panics.
struct Registered<'a> {
    shared: &'a Shared,
    key: u64,
}

impl<'a> Registered<'a> {
    fn new(
        shared: &'a Shared,
        admitted: Admitted,
        kick: CancellationToken,
        replaced: CancellationToken,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Self {
        Registered { shared, key: shared.registry.insert(admitted, kick, replaced, deliveries) }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.registry.remove(self.key);
    }
}

/// Says no to a client: one log line with what it presented, and a CONNACK
/// carrying the MQTT return code.
struct Refuse<'a> {
    addr: SocketAddr,
    peer: &'a PeerCert,
    username: &'a str,
}

impl Refuse<'_> {
    async fn send(&self, tls: &mut Tls, why: Refusal) {
        warn!(
            addr = %self.addr,
            certificate_o = %self.peer.organization,
            username = self.username,
            reason = %why,
            "MQTT client refused"
        );
        let _ = write(tls, connack(why.code())).await;
    }
}

/// TLS, CONNECT, admission, CONNACK. `None` when the client was
/// refused or went away (logged here).
async fn open(shared: &Shared, tcp: TcpStream, addr: SocketAddr) -> Option<Conn> {
    let mut tls = match shared.tls.acceptor().accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            info!(%addr, error = %e, "TLS handshake failed");
            return None;
        }
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| peer_cert(der));
    let Some(peer) = peer else {
        // rustls requires and verifies a certificate; this is only a parse failure.
        warn!(%addr, "client certificate cannot be read; closed");
        return None;
    };
    let max = shared.config.limits.max_packet_size;
    let mut buf = BytesMut::with_capacity(1024);
    let first = match read_packet(&mut tls, &mut buf, max).await {
        Ok(p) => p,
        Err(ReadError::Protocol(protocol::Error::InvalidProtocolLevel(level))) => {
            info!(%addr, level, "client speaks an MQTT version other than 3.1.1; refused");
            let _ = write(&mut tls, connack(ConnectReturnCode::RefusedProtocolVersion)).await;
            return None;
        }
        Err(e) => {
            info!(%addr, error = %e, "no valid CONNECT; closed");
            return None;
        }
    };
    let Packet::Connect(connect, _, _will, _, login) = first else {
        info!(%addr, "first packet is not CONNECT; closed");
        return None;
    };
    // A will is ignored: it could only be published inside the worker's own
    // tenant, where nobody but the worker listens.
    let hello = Hello {
        client_id: &connect.client_id,
        keep_alive: connect.keep_alive,
        login: login.as_ref().map(|l| (l.username.as_str(), l.password.as_str())),
    };
    let username = login.as_ref().map(|l| l.username.as_str()).unwrap_or("");
    let refuse = Refuse { addr, peer: &peer, username };
    let admitted = match shared.auth.admit(&peer, &hello).await {
        Ok(a) => a,
        Err(why) => {
            refuse.send(&mut tls, why).await;
            return None;
        }
    };
    let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
        refuse.send(&mut tls, Refusal::Full).await;
        return None;
    };
    // A clean session every time: nothing is kept between connections (the
    // worker subscribes again, and polls for what it missed).
    if let Err(e) = write(&mut tls, connack(ConnectReturnCode::Success)).await {
        info!(%addr, error = %e, "connection lost before CONNACK");
        return None;
    }
    Some(Conn {
        tls,
        buf,
        admitted,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
        _slot: slot,
    })
}

/// Why a session ended.
enum End {
    ClientDisconnected,
    Closed,
    Kicked,
    /// The same worker connected again.
    Replaced,
    KeepAlive,
    Network(io::Error),
    Malformed(protocol::Error),
    Violation(String),
}

/// The filters a client subscribed to, as what follows its tenant prefix:
/// `pool`, `worker`, `#` or `+` (`allowed` lets no other through).
#[derive(Debug, Default)]
struct Subscriptions(Vec<String>);

impl Subscriptions {
    /// Follows a SUBSCRIBE or UNSUBSCRIBE the client sent.
    fn follow(&mut self, p: &Packet, prefix: &str) {
        match p {
            Packet::Subscribe(s, _) => {
                for f in &s.filters {
                    if let Some(rest) = f.path.strip_prefix(prefix)
                        && !self.0.iter().any(|have| have == rest)
                    {
                        self.0.push(rest.to_string());
                    }
                }
            }
            Packet::Unsubscribe(u, _) => {
                for f in &u.filters {
                    if let Some(rest) = f.strip_prefix(prefix) {
                        self.0.retain(|have| have != rest);
                    }
                }
            }
            _ => {}
        }
    }

    fn wants(&self, topic: Topic) -> bool {
        let name = match topic {
            Topic::Pool => "pool",
            Topic::Worker => "worker",
        };
        self.0.iter().any(|f| f == name || f == "#" || f == "+")
    }
}

async fn pump(
    c: &mut Conn,
    deliveries: &mut mpsc::Receiver<Delivery>,
    max_packet: usize,
    kick: &CancellationToken,
    replaced: &CancellationToken,
) -> End {
    // MQTT: the server may close a connection silent for 1.5 keep-alive periods.
    let grace = c.keep_alive + c.keep_alive / 2;
    // One timer for the whole session, moved on each read (not one per message).
    let silence = tokio::time::sleep(grace);
    tokio::pin!(silence);
    let prefix = wire::tenant_prefix(c.admitted.worker);
    let pool_topic = Bytes::from(wire::pool_topic(c.admitted.worker));
    let worker_topic = Bytes::from(wire::worker_topic(c.admitted.worker));
    let mut subscriptions = Subscriptions::default();
    loop {
        tokio::select! {
            _ = replaced.cancelled() => return End::Replaced,
            _ = kick.cancelled() => return End::Kicked,
            _ = &mut silence => return End::KeepAlive,
            r = c.tls.read_buf(&mut c.buf) => {
                match r {
                    Ok(0) => return End::Closed,
                    Ok(_) => {}
                    Err(e) => return End::Network(e),
                }
                silence.as_mut().reset(Instant::now() + grace);
                let mut answers = Vec::new();
                let mut goodbye = false;
                loop {
                    match V4.read_mut(&mut c.buf, max_packet) {
                        Ok(p) => {
                            if let Err(v) = allowed(&p, &prefix) {
                                return End::Violation(v);
                            }
                            subscriptions.follow(&p, &prefix);
                            if matches!(p, Packet::Disconnect(..)) {
                                goodbye = true;
                                break;
                            }
                            answers.extend(answer(p));
                        }
                        Err(protocol::Error::InsufficientBytes(_)) => break,
                        Err(e) => return End::Malformed(e),
                    }
                }
                for a in answers {
                    if let Err(e) = write(&mut c.tls, a).await {
                        return End::Network(e);
                    }
                }
                if goodbye {
                    return End::ClientDisconnected;
                }
            }
            Some(d) = deliveries.recv() => {
                if subscriptions.wants(d.topic) {
                    let topic = match d.topic {
                        Topic::Pool => pool_topic.clone(),
                        Topic::Worker => worker_topic.clone(),
                    };
                    if let Err(e) = write(&mut c.tls, Packet::Publish(Publish::new(topic, d.payload, false), None)).await {
                        return End::Network(e);
                    }
                }
            }
        }
    }
}

/// The broker's answer to what a worker sent (`allowed` let through): a
/// SUBACK granting each filter the QoS asked for (notifications are sent
/// at QoS 0 whatever was granted), an UNSUBACK, a ping's response. Acks of
/// publishes need none: the broker sends only QoS 0.
fn answer(p: Packet) -> Option<Packet> {
    match p {
        Packet::Subscribe(s, _) => {
            let return_codes = s
                .filters
                .iter()
                .map(|f| match f.qos {
                    QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                    QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
                    QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
                })
                .collect();
            Some(Packet::SubAck(SubAck { pkid: s.pkid, return_codes }, None))
        }
        Packet::Unsubscribe(u, _) => {
            let reasons = u.filters.iter().map(|_| UnsubAckReason::Success).collect();
            Some(Packet::UnsubAck(UnsubAck { pkid: u.pkid, reasons }, None))
        }
        Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
        _ => None,
    }
}

/// What a worker may send once connected. Workers only listen: they subscribe
/// to their own topics and never publish, so they cannot forge notifications.
fn allowed(p: &Packet, prefix: &str) -> Result<(), String> {
    match p {
        Packet::Subscribe(s, _) => {
            for f in &s.filters {
                let own = f.path.strip_prefix(prefix).is_some_and(|rest| matches!(rest, "pool" | "worker" | "#" | "+"));
                if !own {
                    return Err(format!("subscribe to {:?}", f.path));
                }
            }
            Ok(())
        }
        Packet::Publish(p, _) => Err(format!("publish to {:?}", String::from_utf8_lossy(&p.topic))),
        Packet::Unsubscribe(..)
        | Packet::PingReq(_)
        | Packet::PubAck(..)
        | Packet::PubRec(..)
        | Packet::PubRel(..)
        | Packet::PubComp(..)
        | Packet::Disconnect(..) => Ok(()),
        Packet::Connect(..) => Err("a second CONNECT".into()),
        Packet::ConnAck(..) | Packet::SubAck(..) | Packet::UnsubAck(..) | Packet::PingResp(_) => {
            Err("a packet only a server sends".into())
        }
    }
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck { session_present: false, code }, None)
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(protocol::Error),
}

async fn read_packet(tls: &mut Tls, buf: &mut BytesMut, max: usize) -> Result<Packet, ReadError> {
    loop {
        match V4.read_mut(buf, max) {
            Ok(p) => return Ok(p),
            Err(protocol::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(ReadError::Protocol(e)),
        }
        if tls.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

async fn write(tls: &mut Tls, packet: Packet) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(64);
    V4.write(packet, &mut out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let send = async {
        tls.write_all(&out).await?;
        tls.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, send)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "client does not read")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Filter, RetainForwardRule, Subscribe};

    fn subscribe(paths: &[&str]) -> Packet {
        let filters = paths
            .iter()
            .map(|p| Filter {
                path: p.to_string(),
                qos: protocol::QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            })
            .collect();
        Packet::Subscribe(Subscribe { pkid: 1, filters }, None)
    }

    #[test]
    fn subscriptions_follow_subscribe_and_unsubscribe() {
        let own = wire::tenant_prefix(7);
        let mut subs = Subscriptions::default();
        assert!(!subs.wants(Topic::Pool) && !subs.wants(Topic::Worker));
        subs.follow(&subscribe(&["/tenants/w7/worker"]), &own);
        assert!(!subs.wants(Topic::Pool) && subs.wants(Topic::Worker));
        for wildcard in ["/tenants/w7/#", "/tenants/w7/+"] {
            let mut subs = Subscriptions::default();
            subs.follow(&subscribe(&[wildcard]), &own);
            assert!(subs.wants(Topic::Pool) && subs.wants(Topic::Worker), "{wildcard}");
        }
        subs.follow(&subscribe(&["/tenants/w7/pool", "/tenants/w7/pool"]), &own);
        let unsubscribe = |paths: &[&str]| {
            Packet::Unsubscribe(
                protocol::Unsubscribe { pkid: 2, filters: paths.iter().map(|p| p.to_string()).collect() },
                None,
            )
        };
        subs.follow(&unsubscribe(&["/tenants/w7/worker"]), &own);
        assert!(subs.wants(Topic::Pool) && !subs.wants(Topic::Worker));
        // Subscribed twice, it is gone after one UNSUBSCRIBE, as MQTT has it.
        subs.follow(&unsubscribe(&["/tenants/w7/pool"]), &own);
        assert!(!subs.wants(Topic::Pool));
    }

    #[test]
    fn workers_subscribe_to_their_own_topics_only() {
        let own = wire::tenant_prefix(7);
        for ok in [&["/tenants/w7/pool", "/tenants/w7/worker"][..], &["/tenants/w7/#"], &["/tenants/w7/+"]] {
            assert!(allowed(&subscribe(ok), &own).is_ok(), "{ok:?}");
        }
        for bad in [
            "#",
            "+/+/+",
            "/tenants/#",
            "/tenants/+/pool",
            "/tenants/w70/pool",
            "/tenants/w7",
            "/tenants/w7/pool/extra",
            "/tenants/w7/other",
            "$share/g/tenants/w7/pool",
            "$SYS/#",
            "/hangar/probe",
        ] {
            assert!(allowed(&subscribe(&["/tenants/w7/pool", bad]), &own).is_err(), "{bad:?}");
        }
    }
}
