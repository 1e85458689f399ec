//! The worker protocol's appliance side (`hangar_types::worker`): joining,
//! worker authentication, heartbeats, claims, state reports, plans, tool
//! downloads and the provider mirror. Requests are matched to a
//! [`WorkerRoute`], whose body limit holds before anything is read.
//!
//! Every failure a worker sees is the appliance's one error body
//! (`hangar_types::http`), its code chosen by one exhaustive match
//! ([`WorkerApiError::code`]).

mod auth;
mod claim;
pub(crate) mod desk;
mod files;
pub(crate) mod join;
mod mirror;
pub(crate) mod plans;
mod tools;
pub(crate) mod wait;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Buf;
use futures::Stream;
use hangar_types::http::ErrorCode;
use hangar_types::worker::{RouteError, WorkerRoute};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::{App, PeerCertificates};

pub use join::{JoinTokenError, NewJoinToken, create_join_token};

/// What the worker endpoints need beyond the rest of the server.
pub(crate) struct WorkerSettings {
    /// Signs joining workers' CSRs.
    pub(crate) ca: hangar_certs::Ca,
    pub(crate) public_url: String,
    pub(crate) broker_url: String,
    pub(crate) tools_dir: Option<PathBuf>,
    pub(crate) mirror_dir: Option<PathBuf>,
    pub(crate) lease: chrono::Duration,
    pub(crate) cert_validity: time::Duration,
    /// Long-poll claims held open (the HTTP worker transport).
    pub(crate) waiters: Arc<wait::Waiters>,
    /// SHA-256 of served files by path, size and modification time: a tool
    /// binary is hashed once, not per claim.
    hashes: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl WorkerSettings {
    pub(crate) fn new(config: &hangar_config::ServerConfig) -> Result<WorkerSettings, crate::ServerError> {
        let ca = hangar_certs::Ca::load_files(&config.ca_file, &config.ca_key_path()).map_err(crate::ServerError::certs)?;
        Ok(WorkerSettings {
            ca,
            public_url: config.public_url.trim_end_matches('/').to_string(),
            broker_url: config.worker_broker_url(),
            tools_dir: config.tools_dir.clone(),
            mirror_dir: config.provider_mirror_dir.clone(),
            lease: chrono::Duration::seconds(config.worker_lease_secs as i64),
            cert_validity: time::Duration::days(i64::from(config.worker_cert_days)),
            waiters: Arc::new(wait::Waiters::new(
                std::time::Duration::from_secs(config.worker_claim_wait_secs),
                config.worker_claim_waiters,
            )),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// Hex SHA-256 of the file at `path`, from the cache while the file is unchanged.
    pub(crate) async fn sha256_of(&self, path: &std::path::Path) -> std::io::Result<String> {
        let meta = tokio::fs::metadata(path).await?;
        let (len, modified) = (meta.len(), meta.modified()?);
        if let Some((l, m, h)) = self.lock().get(path)
            && *l == len
            && *m == modified
        {
            return Ok(h.clone());
        }
        let p = path.to_path_buf();
        let hash = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::io::Read;
            let mut f = std::fs::File::open(&p)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
            }
            Ok(hex::encode(ctx.finish()))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.lock().insert(path.to_path_buf(), (len, modified, hash.clone()));
        Ok(hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (u64, SystemTime, String)>> {
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a worker call was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerApiError {
    #[error("a client certificate from the appliance CA is required")]
    NoCertificate,
    #[error("worker credentials required: Authorization: Bearer <worker token>")]
    NoToken,
    #[error("the worker token does not match the certificate's worker")]
    BadToken,
    #[error("the certificate is not the one recorded for worker {worker}")]
    CertificateMismatch { worker: i64 },
    #[error("worker {worker} is revoked")]
    Revoked { worker: i64 },
    #[error("worker {worker} joined an earlier generation of its pool: join again")]
    PoolReset { worker: i64 },
    #[error("the certificate of worker {worker} has expired")]
    Expired { worker: i64 },
    #[error("the join token is invalid, expired or already used")]
    BadJoinToken,
    #[error("the run token is invalid or its run is over")]
    BadRunToken,
    #[error("run {run} is not held by this worker")]
    NotHolder { run: i64 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Log(crate::logs::LogError),
    #[error("the database cannot be reached")]
    Unavailable,
    #[error("{held} long-poll claims are held already: try again later")]
    Busy { held: usize },
    #[error("internal error")]
    Internal,
}

impl WorkerApiError {
    fn code(&self) -> ErrorCode {
        match self {
            WorkerApiError::NoCertificate
            | WorkerApiError::NoToken
            | WorkerApiError::BadToken
            | WorkerApiError::CertificateMismatch { .. }
            | WorkerApiError::BadJoinToken
            | WorkerApiError::BadRunToken
            | WorkerApiError::Expired { .. } => ErrorCode::Unauthenticated,
            WorkerApiError::Revoked { .. } | WorkerApiError::PoolReset { .. } | WorkerApiError::NotHolder { .. } => {
                ErrorCode::Forbidden
            }
            WorkerApiError::Malformed(_) => ErrorCode::BadRequest,
            WorkerApiError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            WorkerApiError::NotFound(_) => ErrorCode::NotFound,
            WorkerApiError::Route(RouteError::Unknown | RouteError::Method { .. }) => ErrorCode::NotFound,
            WorkerApiError::Route(RouteError::RunId { .. } | RouteError::Phase { .. } | RouteError::Seq { .. }) => {
                ErrorCode::BadRequest
            }
            WorkerApiError::Log(e) => e.code(),
            WorkerApiError::Unavailable | WorkerApiError::Busy { .. } => ErrorCode::Unavailable,
            WorkerApiError::Internal => ErrorCode::Internal,
        }
    }

    pub(crate) fn into_response(self) -> Response {
        crate::http::error_response(self.code(), &self.to_string())
    }

    /// Logs a database failure with its chain; the caller sees only "unavailable".
    pub(crate) fn db(e: impl std::error::Error) -> WorkerApiError {
        tracing::warn!(error = %hangar_types::error_chain(&e), "worker API: database failure");
        WorkerApiError::Unavailable
    }

    /// Logs an unexpected failure with its chain; the caller sees only "internal error".
    pub(crate) fn internal(what: &str, e: impl std::error::Error) -> WorkerApiError {
        tracing::error!(error = %hangar_types::error_chain(&e), "worker API: {what}");
        WorkerApiError::Internal
    }
}

type Reply2 = Result<Response, WorkerApiError>;

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    crate::http::json_response(status, v)
}

impl From<crate::http::HttpError> for WorkerApiError {
    fn from(e: crate::http::HttpError) -> Self {
        match e {
            crate::http::HttpError::BodyTooLarge { limit, .. } => WorkerApiError::TooLarge { limit },
            crate::http::HttpError::Unavailable => WorkerApiError::Unavailable,
            other => WorkerApiError::Malformed(other.to_string()),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WorkerApiError> {
    serde_json::from_slice(body).map_err(|e| WorkerApiError::Malformed(format!("body is not the expected JSON ({e})")))
}

/// What a tool download or provider mirror request carries into its handler
/// (neither takes a body).
pub(crate) struct Request {
    pub(crate) method: warp::http::Method,
    /// The path segments after the route's prefix.
    pub(crate) tail: Vec<String>,
    pub(crate) auth: Option<String>,
    /// The raw query string (empty when there is none).
    pub(crate) query: String,
    pub(crate) peer: Option<PeerCertificates>,
}

/// A filter that gathers a [`Request`] under `prefix` (percent-decoded
/// segments), refusing a body over `limit`.
fn gather(prefix: &'static [&'static str], limit: u64) -> BoxedFilter<(Result<Request, WorkerApiError>,)> {
    let mut f: BoxedFilter<()> = warp::any().boxed();
    for p in prefix {
        f = f.and(warp::path(*p)).boxed();
    }
    f.and(warp::method())
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<PeerCertificates>())
        .and(warp::body::stream())
        .then(move |method, tail: warp::path::Tail, auth, query, peer, body| async move {
            crate::http::read_limited(body, limit).await?;
            let tail = tail
                .as_str()
                .split('/')
                .map(|s| {
                    percent_decode(s).ok_or_else(|| WorkerApiError::Malformed("the path is not valid UTF-8".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Request { method, tail, auth, query, peer })
        })
        .boxed()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `path` is the worker API's: the join call or under its prefix.
fn worker_api_path(path: &str) -> bool {
    path == WorkerRoute::JOIN_PATH
        || path.strip_prefix(WorkerRoute::PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One call of the worker API: matched to its route, its body read up to the
/// route's limit, then handed to the handler.
async fn call<S, B>(
    app: &App,
    method: warp::http::Method,
    path: &str,
    auth: Option<String>,
    peer: Option<PeerCertificates>,
    body: S,
) -> Result<Response, WorkerApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let segments = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s).ok_or_else(|| WorkerApiError::Malformed("the path is not valid UTF-8".into())))
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = WorkerRoute::parse(method.as_str(), &segments)?;
    let body = crate::http::read_limited(body, route.body().max()).await?;
    match route {
        // The one call made without a worker's credentials.
        WorkerRoute::Join => join::join(app, &body).await,
        _ => claim::dispatch(app, route, auth.as_deref(), peer.as_ref(), body).await,
    }
}

/// The worker routes: every [`WorkerRoute`], `/v1/tools/…` and `/v1/providers/…`.
/// Paths outside them are left to the other routes.
pub(crate) fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let a = app.clone();
    let api = warp::method()
        .and(warp::path::full())
        .and_then(|method: warp::http::Method, path: warp::path::FullPath| async move {
            if worker_api_path(path.as_str()) { Ok((method, path)) } else { Err(warp::reject::not_found()) }
        })
        .untuple_one()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<PeerCertificates>())
        .and(warp::body::stream())
        .then(move |method, path: warp::path::FullPath, auth, peer, body| {
            let app = a.clone();
            async move {
                call(&app, method, path.as_str(), auth, peer, body).await.unwrap_or_else(WorkerApiError::into_response)
            }
        });
    let a = app.clone();
    let tools = gather(&["v1", "tools"], 0).then(move |req: Result<Request, WorkerApiError>| {
        let app = a.clone();
        async move {
            let r = match req {
                Ok(req) => tools::serve(&app, req).await,
                Err(e) => Err(e),
            };
            r.unwrap_or_else(WorkerApiError::into_response)
        }
    });
    let a = app;
    let providers = gather(&["v1", "providers"], 0).then(move |req: Result<Request, WorkerApiError>| {
        let app = a.clone();
        async move {
            let r = match req {
                Ok(req) => mirror::serve(&app, req).await,
                Err(e) => Err(e),
            };
            r.unwrap_or_else(WorkerApiError::into_response)
        }
    });
    api.or(tools).unify().or(providers).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_api_owns_its_prefix_only() {
        assert!(worker_api_path("/api/v1/workers/join"));
        assert!(worker_api_path("/api/v1/worker"));
        assert!(worker_api_path("/api/v1/worker/runs/1/plan"));
        assert!(!worker_api_path("/api/v1/workers"));
        assert!(!worker_api_path("/api/v1/workerz/x"));
        assert!(!worker_api_path("/api/v1/runs/1/logs"));
    }

    #[test]
    fn percent_decoding_refuses_what_is_not_utf8() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("..%2f..").as_deref(), Some("../.."));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
