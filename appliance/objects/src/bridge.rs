//! A loopback forward proxy, private to this process, that carries rust-s3's
//! requests to an https object store while trusting only the configured CA.
//!
//! Why it exists: rust-s3 0.38 builds its reqwest client itself
//! (`request/tokio_backend.rs::client`) and exposes no way to hand it a TLS
//! configuration or extra root certificates — only `set_dangerous_config`
//! (turn verification off) and `set_proxy`. Trusting the appliance CA through
//! reqwest's native roots would mean `SSL_CERT_FILE` for the whole process,
//! changing what every other TLS client in it trusts. So the client we give
//! rust-s3 speaks plain HTTP to the store's own `host:port` through this proxy
//! (`set_proxy`), and the proxy opens the TLS connection with a rustls
//! configuration whose only root is the appliance CA. The Host header, and so
//! the SigV4 signature, is unchanged. The proxy listens on 127.0.0.1 only,
//! forwards to that one store only, and answers only requests carrying a random
//! per-process `Proxy-Authorization` value, so no other local user can borrow it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The running proxy; stops when dropped.
#[derive(Debug)]
pub(crate) struct TlsBridge {
    addr: SocketAddr,
    credential: HeaderValue,
    task: JoinHandle<()>,
}

struct Shared {
    /// `host[:port]` of the store, the only place requests may go.
    authority: String,
    expected: HeaderValue,
    client: reqwest::Client,
}

impl TlsBridge {
    /// Starts the proxy towards `https://<authority>` with `tls` as the only
    /// TLS configuration.
    pub(crate) async fn start(authority: &str, tls: rustls::ClientConfig) -> std::io::Result<TlsBridge> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // The proxy is itself the end of the line: never chain to HTTP(S)_PROXY.
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let mut secret = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| std::io::Error::other("system random source"))?;
        let credential = HeaderValue::from_str(&format!("Bearer {}", hex::encode(secret))).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { authority: authority.to_string(), expected: credential.clone(), client });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(TlsBridge { addr, credential, task })
    }

    /// The proxy as reqwest should be told about it.
    pub(crate) fn proxy(&self) -> Result<reqwest::Proxy, reqwest::Error> {
        let mut credential = self.credential.clone();
        credential.set_sensitive(true);
        Ok(reqwest::Proxy::http(format!("http://{}", self.addr))?.custom_http_auth(credential))
    }
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "object store bridge: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(forward(req, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(msg)).map_err(|never| match never {}).boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization" | "proxy-authenticate" | "te"
            | "trailer" | "transfer-encoding" | "upgrade"
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn forward(req: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let authorized = req
        .headers()
        .get(hyper::header::PROXY_AUTHORIZATION)
        .is_some_and(|v| constant_time_eq(v.as_bytes(), shared.expected.as_bytes()));
    if !authorized {
        return text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy authentication required".into());
    }
    let uri = req.uri();
    if uri.scheme_str() != Some("http") || uri.authority().map(|a| a.as_str()) != Some(shared.authority.as_str()) {
        return text(StatusCode::FORBIDDEN, format!("this proxy only forwards to {}", shared.authority));
    }
    let target = format!(
        "https://{}{}",
        shared.authority,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let method = req.method().clone();
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers() {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = reqwest::Body::wrap_stream(BodyDataStream::new(req.into_body()));
    let sent = shared.client.request(method, &target).headers(headers).body(body).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("object store {}: {}", shared.authority, hangar_types::error_chain(&e));
            tracing::warn!(store = %shared.authority, error = %msg, "object store request failed");
            return text(StatusCode::BAD_GATEWAY, msg);
        }
    };
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    let stream = resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    out.body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|e| text(StatusCode::BAD_GATEWAY, format!("bad response from object store: {e}")))
}
