//! The one error type of the client: what failed, where, and the server's own
//! words when it answered.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Where the appliance is, or how to authenticate, is missing or wrong.
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error body.
    #[error("{method} {path}: {status} {code}: {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A GraphQL operation answered with an error.
    #[error("{operation}: {code}: {message}")]
    GraphQl {
        operation: String,
        code: String,
        message: String,
    },
    /// A run this command followed ended other than FINISHED.
    #[error("run {id} ended {state}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    RunEnded {
        id: String,
        state: String,
        reason: Option<String>,
    },
    /// Something followed did not end in time.
    #[error("{what} did not end within {secs} s")]
    Timeout { what: String, secs: u64 },
    /// An upgrade this command followed ended other than completed.
    #[error("the upgrade to {version} ended {state}: {message}")]
    UpgradeEnded {
        version: String,
        state: String,
        message: String,
    },
    /// The server answered something this client does not understand.
    #[error("{path}: unexpected answer: {problem}")]
    Protocol { path: String, problem: String },
    /// An upload gave up after its retries.
    #[error("upload {id} stopped at byte {offset} of {size}; run the command again to resume")]
    Stalled {
        id: String,
        offset: u64,
        size: u64,
        #[source]
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// The status the server answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether a usage mistake (exit code 2) rather than a failure (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, ClientError::Config(_))
    }
}
