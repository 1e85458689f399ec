//! Errors of the certificate authority, each naming the file or request involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
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
    #[error("{path} is readable by group or others (mode {mode:o}); it must be 0600")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a valid PEM {what}")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("certificate signing request refused: {reason}")]
    CsrRefused { reason: String },
    #[error("certificate is not valid X.509: {reason}")]
    BadCertificate { reason: String },
    #[error("invalid name {name:?} for a certificate")]
    BadName { name: String },
    #[error("TLS configuration: {what}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {what}")]
    TlsVerifier {
        what: &'static str,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

impl CertError {
    pub(crate) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
        move |source| CertError::Generate { what, source }
    }
    pub(crate) fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.into();
        move |source| CertError::Read { path, source }
    }
    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.into();
        move |source| CertError::Write { path, source }
    }
}
