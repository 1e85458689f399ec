//! Hangar's object store: the `[objects]` configuration and the client the
//! appliance uses to reach MinIO, Garage or an external S3 store over TLS with
//! the appliance CA (plans, state files, logs), including pre-signed URLs that
//! let workers read and write objects without credentials.

mod bridge;
mod config;
mod store;

use std::path::PathBuf;

pub use config::{Engine, ObjectsConfig};
pub use store::{MAX_PRESIGN, ObjectStore};

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("{field} {problem}")]
    Config { field: &'static str, problem: String },
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store credentials")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("TLS for object store {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("cannot start the TLS bridge to object store {endpoint}")]
    Bridge {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store client for {endpoint}")]
    Client {
        endpoint: String,
        #[source]
        source: Box<s3::error::S3Error>,
    },
    #[error("object store {endpoint}, bucket {bucket}: {op} {key:?} failed")]
    Request {
        op: &'static str,
        key: String,
        endpoint: String,
        bucket: String,
        #[source]
        source: Box<s3::error::S3Error>,
    },
}

impl ObjectsError {
    fn client(endpoint: &str, source: s3::error::S3Error) -> ObjectsError {
        ObjectsError::Client { endpoint: endpoint.to_string(), source: Box::new(source) }
    }
}
