//! The worker's identity as `join` left it: its key (0600), its certificate,
//! the appliance CA and its worker token (0600), turned into the one TLS client
//! configuration used for both HTTPS and MQTT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hangar_certs::CertError;

use crate::config::WorkerConfig;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the worker's identity is unusable")]
    Certs {
        #[source]
        source: CertError,
    },
    #[error("cannot read the worker token {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker token {path} is empty")]
    EmptyToken { path: PathBuf },
}

/// What the worker authenticates with.
#[derive(Clone)]
pub struct Identity {
    pub tls: Arc<rustls::ClientConfig>,
    pub token: Arc<str>,
    pub certificate_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    pub fn load(cfg: &WorkerConfig) -> Result<Identity, IdentityError> {
        let certs = |source| IdentityError::Certs { source };
        let ca_pem = std::fs::read(&cfg.paths.ca).map_err(|source| {
            certs(CertError::Read {
                path: cfg.paths.ca.clone(),
                source,
            })
        })?;
        let roots = hangar_certs::tls::roots_from_pem(&ca_pem).map_err(certs)?;
        let chain = hangar_certs::tls::load_certs(&cfg.paths.certificate).map_err(certs)?;
        let key = hangar_certs::tls::load_key(&cfg.paths.key).map_err(certs)?;
        let tls = hangar_certs::tls::client_config(roots, Some((chain, key))).map_err(certs)?;
        let certificate_pem =
            std::fs::read_to_string(&cfg.paths.certificate).map_err(|source| {
                certs(CertError::Read {
                    path: cfg.paths.certificate.clone(),
                    source,
                })
            })?;
        let token = read_token(&cfg.paths.token)?;
        Ok(Identity {
            tls: Arc::new(tls),
            token: token.into(),
            certificate_pem,
        })
    }
}

/// Reads a secret token file, refusing one readable by group or others.
pub fn read_token(path: &Path) -> Result<String, IdentityError> {
    hangar_certs::check_private_file(path).map_err(|source| IdentityError::Certs { source })?;
    let t = std::fs::read_to_string(path).map_err(|source| IdentityError::Token {
        path: path.to_path_buf(),
        source,
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(IdentityError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(t)
}
