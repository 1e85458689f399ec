//! Database errors, each naming the server or file involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        target: String,
        #[source]
        source: diesel::ConnectionError,
    },
    #[error("connection pool for {target}: {reason}")]
    Pool { target: String, reason: String },
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database credentials or CA")]
    Secret(#[source] hangar_certs::CertError),
    #[error("query failed")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("database task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl DbError {
    pub(crate) fn secret(e: hangar_certs::CertError) -> DbError {
        DbError::Secret(e)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for DbError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        DbError::Pool {
            target: "pool".into(),
            reason: hangar_types::error_chain(&e),
        }
    }
}
