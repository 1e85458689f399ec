//! The HTTPS listener. warp 0.4 has no TLS of its own, so connections are
//! accepted here, the TLS handshake is done with tokio-rustls, and each
//! connection is handed to warp through hyper-util (HTTP/1.1 or HTTP/2, as the
//! client negotiated with ALPN). Every request carries the peer's certificate
//! chain (when it presented one) and its address as extensions, for handlers
//! that authenticate workers by certificate. Connections from the load
//! balancers named in `server.proxy_protocol_from` first carry a PROXY
//! protocol header, and the address it names is the request's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// The certificate chain a client presented and the appliance CA verified,
/// leaf first. Absent from requests of clients without a certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// How connections are handled.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub handshake_timeout: Duration,
    /// Time a client gets to send a request's headers (slow clients hold a
    /// connection and a task, nothing more, and only for this long).
    pub header_timeout: Duration,
    /// Balancers whose connections start with a PROXY protocol header (see
    /// `proxy_header`), which is required from them.
    pub proxies: Arc<[IpAddr]>,
}

/// Accepts until `shutdown` is cancelled; then asks every open connection to
/// finish its in-flight requests and close. Connections still open when
/// `hard_stop` is cancelled are dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    routes: BoxedFilter<(Response,)>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (mut tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        let proxied = limits.proxies.contains(&peer.ip().to_canonical());
        let limits = limits.clone();
        // The handshake runs in the connection's own task: a client that stalls
        // it delays nobody else.
        tracker.spawn(async move {
            let addr = if proxied {
                // Within the handshake's time: a balancer sends it at once.
                let header = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_timeout, crate::proxy_header::read(&mut tcp)) => r,
                    _ = shutdown.cancelled() => return,
                };
                match header {
                    Ok(Ok(client)) => client.unwrap_or(peer),
                    Ok(Err(e)) => {
                        tracing::warn!(balancer = %peer, error = %hangar_types::error_chain(&e), "connection from a balancer closed: its PROXY protocol header is refused");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(balancer = %peer, "connection from a balancer closed: no PROXY protocol header in time");
                        return;
                    }
                }
            } else {
                peer
            };
            let tls = tokio::select! {
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %addr, "TLS handshake timed out");
                        return;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| PeerCertificates(Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())));
            let warp_svc = TowerToHyperService::new(warp::service(routes));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                if let Some(p) = &peer {
                    req.extensions_mut().insert(p.clone());
                }
                req.extensions_mut().insert(RemoteAddr(addr));
                // The access log names the path only: no query string, no headers.
                let (method, path, started) = (req.method().clone(), req.uri().path().to_owned(), Instant::now());
                let answer = hyper::service::Service::call(&warp_svc, req);
                async move {
                    let resp = answer.await;
                    if let Ok(r) = &resp {
                        let (status, ms) = (r.status().as_u16(), started.elapsed().as_secs_f64() * 1000.0);
                        if path == "/health" || path == "/ready" {
                            tracing::debug!(peer = %addr, %method, path, status, ms, "request");
                        } else {
                            tracing::info!(peer = %addr, %method, path, status, ms, "request");
                        }
                    }
                    resp
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = hard_stop.cancelled() => {
                    tracing::warn!(peer = %addr, "connection still busy at the shutdown deadline; dropped");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
    use warp::Filter;

    /// A listener answering `leaf CN|client address`, reading PROXY headers from `proxies`.
    async fn start(store: &CertStore, proxies: &[IpAddr]) -> (u16, CancellationToken, tokio::task::JoinHandle<()>) {
        store
            .ensure("server", &LeafRequest::server("hangar", &["localhost"]), time::Duration::days(1))
            .unwrap();
        let roots = hangar_certs::tls::roots_from_pem(store.ca().cert_pem().as_bytes()).unwrap();
        let cfg = hangar_certs::tls::server_config(
            hangar_certs::tls::load_certs(&store.cert_path("server")).unwrap(),
            hangar_certs::tls::load_key(&store.key_path("server")).unwrap(),
            hangar_certs::tls::ClientAuth::Optional(roots),
        )
        .unwrap();
        let route = warp::ext::optional::<PeerCertificates>()
            .and(warp::ext::get::<RemoteAddr>())
            .map(|p: Option<PeerCertificates>, a: RemoteAddr| {
                let leaf = p.map(|p| hangar_certs::inspect_pem(&pem(&p.0[0])).unwrap().common_name.unwrap_or_default()).unwrap_or_default();
                warp::reply::Reply::into_response(format!("{leaf}|{}", a.0.ip()))
            })
            .boxed();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (shutdown, hard) = (CancellationToken::new(), CancellationToken::new());
        let limits = ConnectionLimits {
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            proxies: Arc::from(proxies.to_vec()),
        };
        let task = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(cfg)),
            route,
            limits,
            shutdown.clone(),
            hard,
            TaskTracker::new(),
        ));
        (port, shutdown, task)
    }

    /// Handlers see the verified client chain when there is one, and nothing otherwise.
    #[tokio::test]
    async fn requests_carry_the_peer_certificate_and_address() {
        hangar_testkit::init();
        let dir = hangar_testkit::TestDir::new("listener");
        let store = CertStore::open_or_create(dir.path(), &CaOptions::default()).unwrap();
        let (port, shutdown, task) = start(&store, &[]).await;

        let ca = reqwest::Certificate::from_pem(store.ca().cert_pem().as_bytes()).unwrap();
        let url = format!("https://localhost:{port}/");
        let anonymous = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca.clone()).build().unwrap();
        assert_eq!(anonymous.get(&url).send().await.unwrap().text().await.unwrap(), "|127.0.0.1");

        let worker = store
            .ca()
            .issue(&LeafRequest {
                common_name: "worker-7".into(),
                names: vec!["worker-7".into()],
                organization: None,
                usage: Usage::Client,
                validity: time::Duration::days(1),
            })
            .unwrap();
        let id = reqwest::Identity::from_pem(format!("{}{}", worker.cert_pem, worker.key_pem.unwrap()).as_bytes()).unwrap();
        let client = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).identity(id).build().unwrap();
        assert_eq!(client.get(&url).send().await.unwrap().text().await.unwrap(), "worker-7|127.0.0.1");

        shutdown.cancel();
        task.await.unwrap();
    }

    /// One request over a connection that starts with `header`, as a balancer
    /// passing TLS through sends it; the answer's body.
    async fn request_after(store: &CertStore, port: u16, header: &[u8]) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(header).await?;
        let roots = hangar_certs::tls::roots_from_pem(store.ca().cert_pem().as_bytes()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(hangar_certs::tls::client_config(roots, None).unwrap()));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        Ok(answer.rsplit("\r\n").next().unwrap_or_default().to_string())
    }

    #[tokio::test]
    async fn behind_a_balancer_requests_carry_the_client_its_proxy_header_names() {
        hangar_testkit::init();
        let dir = hangar_testkit::TestDir::new("listener");
        let store = CertStore::open_or_create(dir.path(), &CaOptions::default()).unwrap();
        let server: SocketAddr = "127.0.0.1:1983".parse().unwrap();
        let client: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        let header = crate::proxy_header::encode(client, server);

        // This test's connections come from 127.0.0.1: the balancer's address.
        let (port, shutdown, task) = start(&store, &["127.0.0.1".parse().unwrap()]).await;
        assert_eq!(request_after(&store, port, &header).await.unwrap(), "|203.0.113.7");
        // The balancer's own health checks send LOCAL: its address stands.
        let mut local = header.clone();
        local[12] = 0x20;
        assert_eq!(request_after(&store, port, &local).await.unwrap(), "|127.0.0.1");
        // From a balancer the header is required: a bare TLS connection, or a
        // malformed header, is closed before any request.
        assert!(request_after(&store, port, b"").await.is_err(), "a connection without the header was served");
        let mut bad = header.clone();
        bad[13] = 0x12;
        assert!(request_after(&store, port, &bad).await.is_err(), "a UDP header was accepted");
        let url = format!("https://localhost:{port}/");
        let ca = reqwest::Certificate::from_pem(store.ca().cert_pem().as_bytes()).unwrap();
        let plain = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).build().unwrap();
        assert!(plain.get(&url).send().await.is_err());
        shutdown.cancel();
        task.await.unwrap();

        // From anyone else a header is never read: it cannot name an address.
        let (port, shutdown, task) = start(&store, &[]).await;
        assert!(request_after(&store, port, &header).await.is_err(), "an untrusted peer's header was honoured");
        assert_eq!(request_after(&store, port, b"").await.unwrap(), "|127.0.0.1");
        shutdown.cancel();
        task.await.unwrap();
    }

    fn pem(der: &CertificateDer<'_>) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }
}
