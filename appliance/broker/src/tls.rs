//! The listener's TLS: the broker certificate, client certificates required and
//! verified against every CA in the CA file, files re-read when they change (so a
//! renewed certificate needs no restart), and the identity a verified client
//! certificate carries.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hangar_certs::tls::{ClientAuth, load_certs, load_key, roots_from_pem, server_config};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

use crate::BrokerError;
use crate::wire;

/// How often, at most, the files are checked for changes.
const RECHECK: Duration = Duration::from_secs(2);

/// What identifies a version of a file without reading it.
type Stamp = Vec<Option<(SystemTime, u64)>>;

pub(crate) struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    state: Mutex<State>,
}

struct State {
    stamp: Stamp,
    checked: Instant,
    acceptor: TlsAcceptor,
}

impl TlsFiles {
    /// Loads the files once; a problem here is a startup error.
    pub(crate) fn load(cert: &Path, key: &Path, ca: &Path) -> Result<TlsFiles, BrokerError> {
        let (cert, key, ca) = (cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf());
        let stamp = stamp(&[&cert, &key, &ca]);
        let acceptor = build(&cert, &key, &ca)?;
        Ok(TlsFiles { state: Mutex::new(State { stamp, checked: Instant::now(), acceptor }), cert, key, ca })
    }

    /// The acceptor for a new connection. When a file changed since the last
    /// load it is rebuilt; if the new files are broken, the old configuration
    /// stays in use and the problem is logged (a half-written renewal must not
    /// lock every worker out).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = stamp(&[&self.cert, &self.key, &self.ca]);
            if now != state.stamp {
                state.stamp = now;
                match build(&self.cert, &self.key, &self.ca) {
                    Ok(acceptor) => {
                        info!(cert = %self.cert.display(), "broker certificate files changed; reloaded");
                        state.acceptor = acceptor;
                    }
                    Err(e) => error!(
                        error = %hangar_types::error_chain(&e),
                        "broker certificate files changed but cannot be used; keeping the previous ones"
                    ),
                }
            }
        }
        state.acceptor.clone()
    }
}

fn stamp(paths: &[&PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

fn build(cert: &Path, key: &Path, ca: &Path) -> Result<TlsAcceptor, BrokerError> {
    let tls = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BrokerError::Tls { path, source: Box::new(source) }
    };
    let chain = load_certs(cert).map_err(tls(cert))?;
    let private = load_key(key).map_err(tls(key))?;
    let ca_pem = fs::read(ca).map_err(|source| BrokerError::Tls {
        path: ca.to_path_buf(),
        source: Box::new(hangar_certs::CertError::Read { path: ca.to_path_buf(), source }),
    })?;
    let roots = roots_from_pem(&ca_pem).map_err(tls(ca))?;
    let config = server_config(chain, private, ClientAuth::Required(roots)).map_err(|source| BrokerError::TlsConfig {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCert {
    /// The worker named by the Subject O, when it is a well-formed tenant name.
    pub worker: Option<i64>,
    /// The Subject O as presented (for logs).
    pub organization: String,
    /// The serial number, lowercase hex without leading zero bytes.
    pub serial: String,
}

/// Reads the identity out of a certificate that rustls already verified.
pub(crate) fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let orgs: Vec<&str> = cert
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap_or("<not a string>"))
        .collect();
    // Exactly one O: with several, which one scopes the topics would be a guess.
    let (organization, worker) = match orgs.as_slice() {
        [one] => (one.to_string(), wire::parse_tenant(one)),
        [] => (String::new(), None),
        many => (many.join(","), None),
    };
    Some(PeerCert { worker, organization, serial: normalize_serial(&hex::encode(cert.raw_serial())) })
}

/// Serials are compared as numbers written in lowercase hex: leading zero bytes
/// (DER padding) and separators do not matter.
pub(crate) fn normalize_serial(s: &str) -> String {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect();
    let trimmed = hex.trim_start_matches('0');
    let trimmed = if trimmed.len() % 2 == 1 { format!("0{trimmed}") } else { trimmed.to_string() };
    if trimmed.is_empty() { "00".into() } else { trimmed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_as_numbers() {
        assert_eq!(normalize_serial("00A1:b2"), "a1b2");
        assert_eq!(normalize_serial("0a1b2"), "a1b2");
        assert_eq!(normalize_serial("a1b"), "0a1b");
        assert_eq!(normalize_serial("000000"), "00");
        assert_ne!(normalize_serial("a1b2"), normalize_serial("a1b3"));
    }
}
