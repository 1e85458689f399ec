//! Commit statuses: telling the git server how a run on one of its commits is
//! going, through each vendor's own API.
//!
//! | vendor | request |
//! |---|---|
//! | GitHub Enterprise Server | `POST {base}/api/v3/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer`, `{state, target_url, description, context}` |
//! | GitLab | `POST {base}/api/v4/projects/{url-encoded path}/statuses/{sha}`, `PRIVATE-TOKEN`, `{state, name, target_url, description}` |
//! | Gitea / Forgejo | `POST {base}/api/v1/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token`, `{state, target_url, description, context}` |
//! | Bitbucket Data Center | `POST {base}/rest/build-status/1.0/commits/{sha}`, `Authorization: Bearer`, `{state, key, name, url, description}` |
//!
//! A failure to report never touches the run: the caller logs it and retries
//! when [`StatusError::is_retryable`] says so.

use std::time::Duration;

use hangar_types::RunState;
use serde_json::json;
use url::Url;

use crate::secret::redact;
use crate::{Secret, Vendor};

/// How a commit looks in the git server's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// Waiting: queued, or waiting for a worker.
    Pending,
    /// A worker is on it (GitLab shows it as running, the others as pending).
    Running,
    Success,
    Failure,
    /// Stopped before it could finish: canceled, stopped, or its plan discarded.
    Canceled,
}

/// The commit state and a short description for a run in `state`. Report only
/// when the pair changes: GitLab refuses a status that does not move (see
/// [`Reported::AlreadyInState`]).
pub fn commit_state(state: RunState) -> (CommitState, &'static str) {
    use CommitState::*;
    match state {
        RunState::Queued => (Pending, "queued"),
        RunState::Ready => (Pending, "waiting for a worker"),
        RunState::Preparing => (Running, "preparing"),
        RunState::Initializing => (Running, "initializing"),
        RunState::Planning => (Running, "planning"),
        RunState::Unconfirmed => (Running, "plan ready, waiting for confirmation"),
        RunState::Confirmed => (Running, "confirmed, about to apply"),
        RunState::Applying => (Running, "applying"),
        RunState::Finished => (Success, "finished"),
        RunState::Failed => (Failure, "failed"),
        RunState::Discarded => (Canceled, "plan discarded"),
        RunState::Canceled => (Canceled, "canceled"),
        RunState::Stopped => (Canceled, "stopped"),
    }
}

/// A status to set on a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub state: CommitState,
    /// The status's name on the commit, one per stack (`hangar/network-prod`):
    /// a later status with the same name replaces the earlier one.
    pub context: String,
    /// Shown next to the state; cut to 140 characters (GitHub's limit).
    pub description: String,
    /// Where "Details" leads: the run in Hangar's console.
    pub target_url: String,
}

impl CommitStatus {
    /// The status for a run in `state`, named `context`, linking to `run_url`.
    pub fn for_run(state: RunState, context: &str, run_url: &str) -> CommitStatus {
        let (state, what) = commit_state(state);
        CommitStatus {
            state,
            context: context.to_string(),
            description: format!("Hangar run {what}"),
            target_url: run_url.to_string(),
        }
    }
}

/// How a report went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Reported,
    /// GitLab already had the commit in that state and refused the repeat.
    AlreadyInState,
}

/// Where and how to reach one integration's API.
#[derive(Debug, Clone)]
pub struct StatusClientConfig {
    pub vendor: Vendor,
    /// The git server's web address, as users browse it (`https://git.example.com`,
    /// or with a path prefix `https://example.com/gitlab`). Must be HTTPS: the
    /// token travels with every request.
    pub base_url: String,
    /// An API token allowed to set commit statuses.
    pub token: Secret,
    /// PEM certificates to trust for this server; `None` trusts the system's
    /// roots.
    pub ca_pem: Option<Vec<u8>>,
    /// For the whole request, connection included.
    pub timeout: Duration,
}

/// Why a status could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{vendor} base URL {url:?} is invalid: {problem}")]
    BaseUrl {
        vendor: Vendor,
        url: String,
        problem: &'static str,
    },
    #[error("{vendor} repository {repo:?} cannot take commit statuses: {problem}")]
    Repository {
        vendor: Vendor,
        repo: String,
        problem: &'static str,
    },
    #[error("commit id {sha:?} is not 40 or 64 hexadecimal digits")]
    Commit { sha: String },
    #[error("cannot use the CA certificates given for {vendor} at {url}")]
    Ca {
        vendor: Vendor,
        url: String,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("cannot set up the HTTP client for {vendor} at {url}")]
    Client {
        vendor: Vendor,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot reach {vendor} at {url}")]
    Transport {
        vendor: Vendor,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{vendor} at {url} answered {status}: {message}")]
    Rejected {
        vendor: Vendor,
        url: String,
        status: u16,
        message: String,
    },
}

impl StatusError {
    /// Worth trying again later: the server was unreachable, slow, overloaded
    /// or rate-limiting. A refusal (bad token, unknown commit) will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            StatusError::Transport { .. } => true,
            StatusError::Rejected { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            StatusError::BaseUrl { .. }
            | StatusError::Repository { .. }
            | StatusError::Commit { .. }
            | StatusError::Ca { .. }
            | StatusError::Client { .. } => false,
        }
    }
}

/// Sets commit statuses on one integration's git server. Cheap to clone (the
/// connection pool is shared).
#[derive(Clone)]
pub struct StatusClient {
    vendor: Vendor,
    api: Url,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for StatusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusClient")
            .field("vendor", &self.vendor)
            .field("api", &self.api.as_str())
            .field("token", &self.token)
            .finish()
    }
}

/// The API root under a server's web address.
fn api_root(vendor: Vendor, base: &str) -> Result<Url, StatusError> {
    let bad = |problem| StatusError::BaseUrl { vendor, url: base.to_string(), problem };
    let mut url = Url::parse(base).map_err(|_| bad("not an absolute URL"))?;
    if url.scheme() != "https" {
        return Err(bad("must be https:// (the API token goes with every request)"));
    }
    if url.host_str().is_none() {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials (give the token separately)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if vendor == Vendor::Github && url.host_str() == Some("github.com") {
        return Url::parse("https://api.github.com/").map_err(|_| bad("not an absolute URL"));
    }
    let suffix: &[&str] = match vendor {
        Vendor::Github => &["api", "v3"],
        Vendor::Gitlab => &["api", "v4"],
        Vendor::Gitea => &["api", "v1"],
        Vendor::Bitbucket => &["rest", "build-status", "1.0"],
    };
    {
        let mut segs = url.path_segments_mut().map_err(|_| bad("cannot be a base URL"))?;
        segs.pop_if_empty();
        for s in suffix {
            segs.push(s);
        }
    }
    Ok(url)
}

fn check_sha(sha: &str) -> Result<(), StatusError> {
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StatusError::Commit { sha: sha.chars().take(80).collect() })
    }
}

/// `owner/name` for GitHub and Gitea; a namespace path (`group/sub/project`) or
/// a numeric project id for GitLab.
fn repo_segments(vendor: Vendor, repo: &str) -> Result<Vec<&str>, StatusError> {
    let bad = |problem| StatusError::Repository { vendor, repo: repo.chars().take(200).collect(), problem };
    if repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("contains spaces or control characters"));
    }
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(bad("has an empty, . or .. component"));
    }
    match vendor {
        Vendor::Github | Vendor::Gitea if parts.len() != 2 => Err(bad("is not owner/name")),
        _ => Ok(parts),
    }
}

fn description(text: &str) -> String {
    text.chars().take(140).collect()
}

impl StatusClient {
    pub fn new(cfg: StatusClientConfig) -> Result<StatusClient, StatusError> {
        let vendor = cfg.vendor;
        let api = api_root(vendor, &cfg.base_url)?;
        if cfg.token.is_empty() {
            return Err(StatusError::BaseUrl { vendor, url: cfg.base_url, problem: "has no API token to go with it" });
        }
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // A redirect would carry the token (PRIVATE-TOKEN is not one of the
            // headers reqwest drops) to wherever it points: refuse them.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            let ca = |source| StatusError::Ca { vendor, url: cfg.base_url.clone(), source };
            let roots = hangar_certs::tls::roots_from_pem(pem).map_err(ca)?;
            let tls = hangar_certs::tls::client_config(roots, None).map_err(ca)?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .map_err(|source| StatusError::Client { vendor, url: cfg.base_url.clone(), source })?;
        Ok(StatusClient { vendor, api, token: cfg.token, http })
    }

    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// The URL a status for `sha` in `repo` is posted to.
    pub fn endpoint(&self, repo: &str, sha: &str) -> Result<Url, StatusError> {
        check_sha(sha)?;
        let mut url = self.api.clone();
        {
            let mut segs = url.path_segments_mut().expect("the API root is a base URL");
            match self.vendor {
                Vendor::Github | Vendor::Gitea => {
                    segs.push("repos");
                    segs.extend(repo_segments(self.vendor, repo)?);
                    segs.push("statuses").push(sha);
                }
                Vendor::Gitlab => {
                    repo_segments(self.vendor, repo)?;
                    // The whole namespace path is one segment, its slashes encoded.
                    segs.push("projects").push(repo).push("statuses").push(sha);
                }
                Vendor::Bitbucket => {
                    segs.push("commits").push(sha);
                }
            }
        }
        Ok(url)
    }

    /// The JSON body, as the vendor's API documents it.
    pub fn body(&self, status: &CommitStatus) -> serde_json::Value {
        use CommitState::*;
        let desc = description(&status.description);
        match self.vendor {
            Vendor::Github | Vendor::Gitea => {
                let state = match status.state {
                    Pending | Running => "pending",
                    Success => "success",
                    Failure => "failure",
                    Canceled => "error",
                };
                json!({"state": state, "target_url": status.target_url, "description": desc, "context": status.context})
            }
            Vendor::Gitlab => {
                let state = match status.state {
                    Pending => "pending",
                    Running => "running",
                    Success => "success",
                    Failure => "failed",
                    Canceled => "canceled",
                };
                json!({"state": state, "name": status.context, "target_url": status.target_url, "description": desc})
            }
            Vendor::Bitbucket => {
                // The legacy build-status resource knows only these three.
                let state = match status.state {
                    Pending | Running => "INPROGRESS",
                    Success => "SUCCESSFUL",
                    Failure | Canceled => "FAILED",
                };
                json!({"state": state, "key": status.context, "name": status.context, "url": status.target_url, "description": desc})
            }
        }
    }

    /// Sets `status` on commit `sha` of `repo` (`owner/name`, a GitLab namespace
    /// path, or for Bitbucket any label: its resource is keyed by commit only).
    pub async fn report(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<Reported, StatusError> {
        let url = self.endpoint(repo, sha)?;
        let shown = url.as_str().to_string();
        let request = self.http.post(url).json(&self.body(status));
        let request = match self.vendor {
            Vendor::Github => request
                .bearer_auth(self.token.expose())
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Vendor::Gitlab => request.header("PRIVATE-TOKEN", self.token.expose()),
            Vendor::Gitea => request.header("Authorization", format!("token {}", self.token.expose())),
            Vendor::Bitbucket => request.bearer_auth(self.token.expose()).header("Accept", "application/json"),
        };
        let vendor = self.vendor;
        let response = request
            .send()
            .await
            .map_err(|source| StatusError::Transport { vendor, url: shown.clone(), source: source.without_url() })?;
        let code = response.status();
        if code.is_success() {
            return Ok(Reported::Reported);
        }
        // Read at most a little of the answer: it is only for the message.
        let bytes = response.bytes().await.unwrap_or_default();
        let bytes = &bytes[..bytes.len().min(16 * 1024)];
        let message = redact(&answer_message(bytes), &[self.token.expose()]);
        if vendor == Vendor::Gitlab && code.as_u16() == 400 && message.contains("Cannot transition status") {
            return Ok(Reported::AlreadyInState);
        }
        Err(StatusError::Rejected { vendor, url: shown, status: code.as_u16(), message })
    }
}

/// What the server said, in one line: the JSON `message` (GitHub, GitLab,
/// Gitea) or `errors[].message` (Bitbucket), else the start of the body.
fn answer_message(body: &[u8]) -> String {
    let text = if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let from_errors = v
            .get("errors")
            .and_then(|e| e.as_array())
            .map(|errs| {
                errs.iter()
                    .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|s| !s.is_empty());
        match (v.get("message"), from_errors) {
            (Some(serde_json::Value::String(s)), _) => s.clone(),
            (Some(other), _) => other.to_string(),
            (None, Some(e)) => e,
            (None, None) => v.get("error").map(|e| e.to_string()).unwrap_or_else(|| v.to_string()),
        }
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut cut: String = one_line.chars().take(300).collect();
    if cut.is_empty() {
        cut = "(empty answer)".into();
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_state_maps_and_terminal_states_are_final() {
        for s in RunState::ALL {
            let (state, what) = commit_state(s);
            assert!(!what.is_empty());
            assert_eq!(
                s.is_terminal(),
                matches!(state, CommitState::Success | CommitState::Failure | CommitState::Canceled),
                "{s}"
            );
        }
        assert_eq!(commit_state(RunState::Finished).0, CommitState::Success);
        assert_eq!(commit_state(RunState::Failed).0, CommitState::Failure);
        assert_eq!(commit_state(RunState::Queued).0, CommitState::Pending);
        assert_eq!(commit_state(RunState::Applying).0, CommitState::Running);
    }

    #[test]
    fn api_roots_follow_each_vendor() {
        let root = |v, b| api_root(v, b).map(|u| u.to_string());
        assert_eq!(root(Vendor::Github, "https://ghe.example.com").unwrap(), "https://ghe.example.com/api/v3");
        assert_eq!(root(Vendor::Github, "https://github.com/").unwrap(), "https://api.github.com/");
        assert_eq!(root(Vendor::Gitlab, "https://example.com/gitlab/").unwrap(), "https://example.com/gitlab/api/v4");
        assert_eq!(root(Vendor::Gitea, "https://gitea.example.com:3000").unwrap(), "https://gitea.example.com:3000/api/v1");
        assert_eq!(root(Vendor::Bitbucket, "https://bb.example.com").unwrap(), "https://bb.example.com/rest/build-status/1.0");
        for bad in ["http://ghe.example.com", "ghe.example.com", "https://u:p@ghe.example.com", "https://ghe.example.com/?x=1", ""] {
            let e = root(Vendor::Github, bad).unwrap_err();
            assert!(e.to_string().starts_with("github base URL"), "{e}");
        }
    }

    #[test]
    fn answers_become_one_line() {
        assert_eq!(answer_message(br#"{"message":"Bad credentials","documentation_url":"x"}"#), "Bad credentials");
        assert_eq!(answer_message(br#"{"message":{"state":["is invalid"]}}"#), r#"{"state":["is invalid"]}"#);
        assert_eq!(
            answer_message(br#"{"errors":[{"context":null,"message":"Authentication failed.","exceptionName":"x"}]}"#),
            "Authentication failed."
        );
        assert_eq!(answer_message(b"<html>\n<body>502 Bad\r\nGateway</body>"), "<html> <body>502 Bad Gateway</body>");
        assert_eq!(answer_message(b""), "(empty answer)");
        assert_eq!(answer_message(&[b'x'; 1000]).len(), 300);
    }
}
