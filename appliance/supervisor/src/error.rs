//! Errors of the supervisor, the control client and the TLS proxy: each names the
//! path, service or address involved; the cause stays in `source`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid configuration: {field}: {problem}")]
    Config { field: String, problem: String },
    #[error("cannot load the configuration")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another supervisor is already listening on {path}")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot become the reaper of orphaned descendants")]
    Subreaper(#[source] nix::Error),
    #[error("cannot start {service} ({command})")]
    Spawn {
        service: String,
        command: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor stopped")]
    Gone,
}

/// What `hangar ctl` reports: one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("supervisor not running: cannot connect to {path}")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not allowed to control the supervisor at {path} (run as root or as a member of the service user's group)")]
    Denied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to the supervisor at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor at {path} sent an answer this ctl cannot read: {detail}")]
    Protocol { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("cannot find the control socket")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate {cert} and key {key}")]
    Certificate {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<hangar_certs::CertError>,
    },
    #[error("invalid upstream address {addr:?}: expected host:port")]
    Upstream { addr: String },
}
