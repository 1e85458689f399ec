//! Errors that stop the server from starting or an administration command from
//! finishing, each naming the file, address or record involved.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration")]
    Config(#[from] hangar_config::Invalid),
    #[error("TLS certificate or key")]
    Certs(#[source] Box<hangar_certs::CertError>),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the bundle staging area {path}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bundle signing keys of [server] bundle_trust_dir")]
    BundleTrust(#[source] hangar_bundle::KeyError),
    #[error("database")]
    Db(#[source] Box<hangar_db::DbError>),
    #[error("database query")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
    #[error("the database schema is behind this binary: run `hangar migrate` (pending: {pending})")]
    SchemaBehind { pending: String },
    #[error("user {email}: {problem}")]
    User { email: String, problem: String },
}

impl From<hangar_db::DbError> for ServerError {
    fn from(e: hangar_db::DbError) -> Self {
        ServerError::Db(Box::new(e))
    }
}

impl ServerError {
    pub(crate) fn certs(e: hangar_certs::CertError) -> ServerError {
        ServerError::Certs(Box::new(e))
    }
}
