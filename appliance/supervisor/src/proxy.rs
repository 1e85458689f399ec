//! `hangar tls-proxy`: terminates TLS (1.2 and 1.3, the appliance certificate)
//! and relays the bytes to a plain-TCP upstream, untouched. Garage serves no TLS;
//! with this in front workers reach the object store only over TLS, and since
//! nothing is rewritten — not even the Host header — S3 signatures and pre-signed
//! URLs made for the proxy's address stay valid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ProxyError;

/// Settings of one proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port` of the plain-TCP service.
    pub upstream: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Connections relayed at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to reach the upstream.
    pub connect_timeout: Duration,
    /// On shutdown, time given to open connections to finish.
    pub drain_timeout: Duration,
}

impl ProxyConfig {
    pub fn new(listen: SocketAddr, upstream: impl Into<String>, cert: PathBuf, key: PathBuf) -> ProxyConfig {
        ProxyConfig {
            listen,
            upstream: upstream.into(),
            cert,
            key,
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Starts proxies (see `start`).
#[derive(Debug)]
pub struct TlsProxy;

/// A running proxy.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    stop: CancellationToken,
    acceptor: Arc<RwLock<TlsAcceptor>>,
    config: ProxyConfig,
    task: JoinHandle<()>,
}

fn load_acceptor(cfg: &ProxyConfig) -> Result<TlsAcceptor, ProxyError> {
    let err = |source| ProxyError::Certificate {
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        source: Box::new(source),
    };
    let chain = hangar_certs::tls::load_certs(&cfg.cert).map_err(err)?;
    let key = hangar_certs::tls::load_key(&cfg.key).map_err(err)?;
    let server = hangar_certs::tls::server_config(chain, key, hangar_certs::tls::ClientAuth::None).map_err(err)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

impl TlsProxy {
    pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        if config.upstream.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(ProxyError::Upstream {
                addr: config.upstream.clone(),
            });
        }
        let acceptor = Arc::new(RwLock::new(load_acceptor(&config)?));
        let listener = TcpListener::bind(config.listen).await.map_err(|source| ProxyError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, acceptor.clone(), config.clone(), stop.clone()));
        tracing::info!(listen = %local_addr, upstream = %config.upstream, "TLS proxy listening");
        Ok(ProxyHandle {
            local_addr,
            stop,
            acceptor,
            config,
            task,
        })
    }
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.config.upstream)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads the certificate and key again (after a renewal); new connections use
    /// them, open ones keep theirs. On error the old ones stay.
    pub fn reload_certificate(&self) -> Result<(), ProxyError> {
        let fresh = load_acceptor(&self.config)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Stops accepting; open connections get `drain_timeout` to finish.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Arc<RwLock<TlsAcceptor>>, cfg: ProxyConfig, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let kill = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
        let cfg = cfg.clone();
        let kill = kill.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = kill.cancelled() => {}
                r = relay(tcp, acceptor, &cfg) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(cfg.drain_timeout, tasks.wait()).await.is_err() {
        kill.cancel();
        tasks.wait().await;
    }
}

async fn relay(tcp: TcpStream, acceptor: TlsAcceptor, cfg: &ProxyConfig) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let mut upstream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&cfg.upstream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream connect timed out"))?
        .inspect_err(|e| tracing::warn!(upstream = %cfg.upstream, error = %e, "cannot reach the upstream"))?;
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, 256 * 1024, 256 * 1024).await?;
    Ok(())
}
