//! The worker's HTTPS client for the appliance: the worker API of
//! `hangar_types::worker`, tool downloads and the plan upload. TLS trusts
//! only the appliance CA and presents the worker's client certificate; every
//! call also carries the worker token as a bearer credential.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hangar_types::http::ErrorBody;
use hangar_types::worker::{
    ClaimWait, ClaimWaitReply, Heartbeat, HeartbeatReply, Phase, PlanStored, PlanUpload, RunAssignment, RunStatus,
    StateReport, WorkerRoute,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::identity::Identity;

/// Bound on one request (uploads and downloads have their own, larger one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {reason}")]
    Status {
        url: String,
        status: StatusCode,
        reason: String,
    },
    #[error("{url} answered something unreadable")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the download from {url} has SHA-256 {actual}, the appliance announced {announced}")]
    Announced {
        url: String,
        announced: String,
        actual: String,
    },
    #[error("{url} announced no SHA-256 (x-hangar-sha256) for its download")]
    Unannounced { url: String },
    #[error("{url} stored a plan of {stored}, the worker sent {sent}")]
    Stored {
        url: String,
        sent: String,
        stored: String,
    },
    #[error(
        "{url} is not on the appliance {server}: refusing to send the worker's credentials there"
    )]
    ForeignUrl { url: String, server: String },
    #[error("cannot build an HTTPS client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

impl ApiError {
    /// Worth trying again: the appliance was unreachable or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } => true,
            ApiError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// What the appliance said to a state report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportReply {
    Accepted(RunStatus),
    Refused(RunStatus),
}

/// The appliance's reason for refusing a request, from its body: the message
/// of its error body (`hangar_types::http::ErrorBody`), else the first line of
/// text (a proxy's page, say), bounded.
pub fn server_reason(body: &[u8]) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return bound(&error.message);
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no reason given)");
    bound(line)
}

fn bound(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// An HTTPS client over `tls`, refusing anything but https. reqwest reads
/// `HTTPS_PROXY`/`https_proxy` and `NO_PROXY`/`no_proxy` itself (the system
/// proxies are on unless `no_proxy()` is called): through a proxy the TLS
/// session still runs end to end with the appliance, over a CONNECT tunnel,
/// so only the appliance CA is trusted there too.
pub fn https_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|source| ApiError::Client { source })
}

/// The worker API of one appliance.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Arc<str>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(server_url: &str, identity: &Identity) -> Result<Api, ApiError> {
        Ok(Api {
            http: https_client(identity.tls.as_ref().clone())?,
            base: server_url.trim_end_matches('/').to_string(),
            token: identity.token.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn route(&self, route: WorkerRoute) -> String {
        self.url(&route.path())
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ApiError> {
        req.bearer_auth(&*self.token)
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: url.to_string(),
                source,
            })
    }

    async fn check(resp: reqwest::Response, url: &str) -> Result<reqwest::Response, ApiError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(ApiError::Status {
            url: url.to_string(),
            status,
            reason: server_reason(&body),
        })
    }

    async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        route: WorkerRoute,
        body: &B,
    ) -> Result<R, ApiError> {
        let url = self.route(route);
        let resp = self
            .send(
                self.http.post(&url).timeout(REQUEST_TIMEOUT).json(body),
                &url,
            )
            .await?;
        let resp = Self::check(resp, &url).await?;
        resp.json()
            .await
            .map_err(|source| ApiError::Decode { url, source })
    }

    /// `GET /health`: the server answers.
    pub async fn health(&self) -> Result<(), ApiError> {
        let url = self.url("/health");
        let resp = self
            .send(self.http.get(&url).timeout(Duration::from_secs(5)), &url)
            .await?;
        Self::check(resp, &url).await.map(|_| ())
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, ApiError> {
        self.post_json(WorkerRoute::Heartbeat, hb).await
    }

    /// A READY run of the pool, if there is one this worker won.
    pub async fn claim(&self) -> Result<Option<RunAssignment>, ApiError> {
        let url = self.route(WorkerRoute::Claim);
        let resp = self
            .send(self.http.post(&url).timeout(REQUEST_TIMEOUT), &url)
            .await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let resp = Self::check(resp, &url).await?;
        resp.json()
            .await
            .map(Some)
            .map_err(|source| ApiError::Decode { url, source })
    }

    /// The long poll of the HTTP transport: waits up to `wait` for a run of
    /// the pool (the server may answer sooner, at its own bound).
    pub async fn claim_wait(&self, wait: Duration) -> Result<ClaimWaitReply, ApiError> {
        let url = self.route(WorkerRoute::ClaimWait);
        let body = ClaimWait {
            max_wait_secs: wait.as_secs().max(1),
        };
        // The server answers within the wait; the margin covers the claim
        // that follows a wake-up and a slow proxy.
        let req = self
            .http
            .post(&url)
            .timeout(wait + REQUEST_TIMEOUT)
            .json(&body);
        let resp = self.send(req, &url).await?;
        let resp = Self::check(resp, &url).await?;
        resp.json()
            .await
            .map_err(|source| ApiError::Decode { url, source })
    }

    pub async fn report(&self, run: i64, report: &StateReport) -> Result<ReportReply, ApiError> {
        let url = self.route(WorkerRoute::ReportState { run });
        let resp = self
            .send(
                self.http.post(&url).timeout(REQUEST_TIMEOUT).json(report),
                &url,
            )
            .await?;
        if resp.status() == StatusCode::CONFLICT {
            // A refusal names the run's actual state; an unreadable one is an error.
            return match resp.json::<RunStatus>().await {
                Ok(s) => Ok(ReportReply::Refused(s)),
                Err(source) => Err(ApiError::Decode { url, source }),
            };
        }
        let resp = Self::check(resp, &url).await?;
        resp.json()
            .await
            .map(ReportReply::Accepted)
            .map_err(|source| ApiError::Decode { url, source })
    }

    pub async fn run_status(&self, run: i64) -> Result<RunStatus, ApiError> {
        let url = self.route(WorkerRoute::RunStatus { run });
        let resp = self
            .send(self.http.get(&url).timeout(REQUEST_TIMEOUT), &url)
            .await?;
        let resp = Self::check(resp, &url).await?;
        resp.json()
            .await
            .map_err(|source| ApiError::Decode { url, source })
    }

    pub async fn log_chunk(
        &self,
        run: i64,
        phase: Phase,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), ApiError> {
        let url = self.route(WorkerRoute::LogChunk { run, phase, seq });
        let req = self
            .http
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .header("content-type", "application/octet-stream");
        let resp = self.send(req.body(data), &url).await?;
        Self::check(resp, &url).await.map(|_| ())
    }

    /// Sends the saved plan at `path` to the appliance, which stores it sealed;
    /// what it stored must be what `expected` describes.
    pub async fn upload_plan(
        &self,
        run: i64,
        path: &Path,
        expected: &PlanUpload,
    ) -> Result<(), ApiError> {
        let data = tokio::fs::read(path).await.map_err(|source| ApiError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let url = self.route(WorkerRoute::StorePlan { run });
        let req = self
            .http
            .post(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/octet-stream");
        let resp = self.send(req.body(data), &url).await?;
        let resp = Self::check(resp, &url).await?;
        let stored: PlanStored = resp
            .json()
            .await
            .map_err(|source| ApiError::Decode {
                url: url.clone(),
                source,
            })?;
        if stored.size != expected.size || !stored.sha256.eq_ignore_ascii_case(&expected.sha256) {
            return Err(ApiError::Stored {
                url,
                sent: format!("{} bytes, SHA-256 {}", expected.size, expected.sha256),
                stored: format!("{} bytes, SHA-256 {}", stored.size, stored.sha256),
            });
        }
        Ok(())
    }

    /// Sends the plan's `terraform show -json` output, which the appliance
    /// keeps sealed for its plan policies.
    pub async fn plan_json(&self, run: i64, data: Vec<u8>) -> Result<(), ApiError> {
        let url = self.route(WorkerRoute::StorePlanJson { run });
        let req = self
            .http
            .post(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/json");
        let resp = self.send(req.body(data), &url).await?;
        Self::check(resp, &url).await.map(|_| ())
    }

    pub async fn errored_state(&self, run: i64, data: Vec<u8>) -> Result<(), ApiError> {
        let url = self.route(WorkerRoute::ErroredState { run });
        let req = self
            .http
            .post(&url)
            .timeout(TRANSFER_TIMEOUT)
            .header("content-type", "application/octet-stream");
        let resp = self.send(req.body(data), &url).await?;
        Self::check(resp, &url).await.map(|_| ())
    }

    /// Streams `url` (a tool binary) into `dest`; when the appliance announces
    /// the SHA-256 in `x-hangar-sha256`, the bytes must have it.
    pub async fn download(&self, url: &str, dest: &Path) -> Result<(), ApiError> {
        self.fetch(url, dest).await.map(|_| ())
    }

    /// As [`Api::download`], but the appliance must announce the SHA-256 (and
    /// says which version it served, for `latest`).
    pub async fn fetch_announced(&self, url: &str, dest: &Path) -> Result<Fetched, ApiError> {
        let (announced, version) = self.fetch(url, dest).await?;
        let sha256 = announced.ok_or_else(|| ApiError::Unannounced {
            url: url.to_string(),
        })?;
        Ok(Fetched {
            sha256,
            version: version.unwrap_or_default(),
        })
    }

    /// Streams `url` into `dest`, checking the announced SHA-256; returns it
    /// and the announced version.
    async fn fetch(
        &self,
        url: &str,
        dest: &Path,
    ) -> Result<(Option<String>, Option<String>), ApiError> {
        if !same_origin(&self.base, url) {
            return Err(ApiError::ForeignUrl {
                url: url.to_string(),
                server: self.base.clone(),
            });
        }
        let resp = self
            .send(self.http.get(url).timeout(TRANSFER_TIMEOUT), url)
            .await?;
        let resp = Self::check(resp, url).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let announced = header("x-hangar-sha256").map(|s| s.to_ascii_lowercase());
        let version = header(hangar_types::worker::VERSION_HEADER);
        let io = |source| ApiError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ApiError::Unreachable {
                url: url.to_string(),
                source,
            })?;
            ctx.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let actual = hex::encode(ctx.finish());
        if let Some(announced) = &announced
            && *announced != actual
        {
            return Err(ApiError::Announced {
                url: url.to_string(),
                announced: announced.clone(),
                actual,
            });
        }
        Ok((announced, version))
    }
}

/// A download whose SHA-256 the appliance announced and the bytes have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: String,
    /// The version served (empty when the appliance did not say).
    pub version: String,
}

/// Whether `url` has the scheme, host and port of `base`.
fn same_origin(base: &str, url: &str) -> bool {
    match (url::Url::parse(base), url::Url::parse(url)) {
        (Ok(b), Ok(u)) => b.origin() == u.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_appliance() {
        let base = "https://hangar.example:1983";
        assert!(same_origin(
            base,
            "https://hangar.example:1983/v1/tools/terraform/1.0.3/linux_amd64"
        ));
        assert!(!same_origin(base, "https://hangar.example:1984/v1/tools/x"));
        assert!(!same_origin(base, "https://evil.example:1983/v1/tools/x"));
        assert!(!same_origin(base, "http://hangar.example:1983/v1/tools/x"));
        assert!(!same_origin(
            base,
            "https://hangar.example:1983@evil.example/x"
        ));
        assert!(!same_origin(base, "not a url"));
    }

    #[test]
    fn reasons_come_from_json_or_the_first_line() {
        assert_eq!(
            server_reason(
                br#"{"error":{"code":"UNAUTHENTICATED","message":"join token expired"}}"#
            ),
            "join token expired"
        );
        // Not the appliance's body: its first line, as it is.
        assert_eq!(
            server_reason(br#"{"error":"proxy said no"}"#),
            r#"{"error":"proxy said no"}"#
        );
        assert_eq!(server_reason(b"\n  token refused\nmore"), "token refused");
        assert_eq!(server_reason(b""), "(no reason given)");
        assert_eq!(server_reason("x\u{1b}[31my".as_bytes()), "x[31my");
        assert!(server_reason(&vec![b'a'; 5000]).chars().count() <= 301);
    }
}
