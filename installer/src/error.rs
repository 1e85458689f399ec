//! What can go wrong while installing, each with the path, program or check
//! involved; the cause sits in `source` and is printed after it, on one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("answers file {path}: {problem}")]
    Answers { path: PathBuf, problem: String },
    #[error("cannot read the answers file {path}")]
    AnswersRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Prompt(#[from] crate::answers::PromptError),
    #[error("preflight: {check}: {problem}")]
    Preflight { check: &'static str, problem: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {what} failed ({status}): {output}")]
    Command {
        program: String,
        what: String,
        status: String,
        output: String,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] hangar_bundle::BundleError),
    #[error("trust directory {path}")]
    Trust {
        path: PathBuf,
        #[source]
        source: hangar_bundle::KeyError,
    },
    #[error("certificates in {path}")]
    Certs {
        path: PathBuf,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("TLS certificate {path}: {problem}")]
    ProvidedTls { path: PathBuf, problem: String },
    #[error("database {target}: {problem}")]
    Database { target: String, problem: String },
    #[error("object store {endpoint}: {problem}")]
    Objects { endpoint: String, problem: String },
    #[error("the configuration the installer wrote is invalid")]
    Config(#[source] hangar_config::ConfigError),
    #[error("service user {user}: {problem}")]
    User { user: String, problem: String },
    #[error("health gate: {what} not ready after {secs} s: {detail}")]
    Health {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error(
        "{}: release {installed} is installed from another bundle; refusing a different bundle of version {version} \
         (a replayed one could swap its binaries); for a development build, give --danger-replace-release",
        bundle.display()
    )]
    Replay { bundle: PathBuf, version: String, installed: String },
    #[error("install state {path}: {problem}")]
    State { path: PathBuf, problem: String },
    #[error("refused by the pre-check \"{check}\": {problem}")]
    Refused { check: String, problem: String },
    #[error("the upgrade to {to} failed at {failure}; {after}")]
    UpgradeFailed { to: String, failure: String, after: String },
    #[error("backup {dir}: {problem}")]
    Backup { dir: PathBuf, problem: String },
    #[error("no installation in {prefix}")]
    NotInstalled { prefix: PathBuf },
    #[error("interrupted during {step}; the host is consistent: run the installer again to finish")]
    Interrupted { step: String },
    #[error("{0}")]
    Aborted(String),
}

impl InstallError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> InstallError {
        let path = path.into();
        move |source| InstallError::Io { action, path, source }
    }

    pub fn certs(path: impl Into<PathBuf>) -> impl FnOnce(hangar_certs::CertError) -> InstallError {
        let path = path.into();
        move |source| InstallError::Certs { path, source }
    }
}

