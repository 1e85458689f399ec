//! The broker's errors, each naming the file, address or part involved.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration")]
    Config(#[from] hangar_config::Invalid),
    #[error("broker TLS material")]
    Tls {
        path: PathBuf,
        #[source]
        source: Box<hangar_certs::CertError>,
    },
    #[error("broker TLS configuration from {cert} and {key}")]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<hangar_certs::CertError>,
    },
    #[error("cannot listen for MQTT on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the MQTT router refused the {link} link: {reason}")]
    Router { link: &'static str, reason: String },
    #[error("the broker is stopped")]
    Stopped,
    #[error("broker task failed")]
    Task(#[from] tokio::task::JoinError),
}
