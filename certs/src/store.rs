//! A PKI directory (`/etc/hangar/pki`): the CA plus one certificate and key per
//! service, issued when missing and re-issued before they expire.

use std::fs;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::ca::{CA_CERT, CA_KEY};
use crate::files::{write_private_file, write_public_file};
use crate::inspect::{fresh_enough, verify_issued_by};
use crate::{Ca, CaOptions, CertError, LeafRequest, inspect_pem};

/// What `CertStore::ensure` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// The certificate was valid, issued by this CA and for the names asked for.
    Unchanged,
    /// There was no certificate: one was issued.
    Created,
    /// A certificate existed but was replaced; the reason says why.
    Renewed(String),
}

/// The appliance's PKI directory.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    ca: Ca,
}

impl CertStore {
    /// Opens the PKI directory, creating the CA when the directory holds none.
    /// A half-present CA (certificate without key or the reverse) is an error,
    /// never silently replaced: every issued certificate depends on it.
    pub fn open_or_create(dir: &Path, opts: &CaOptions) -> Result<CertStore, CertError> {
        let has_cert = dir.join(CA_CERT).exists();
        let has_key = dir.join(CA_KEY).exists();
        let ca = match (has_cert, has_key) {
            (true, true) => Ca::load(dir)?,
            (false, false) => {
                let ca = Ca::generate(opts)?;
                ca.save(dir)?;
                ca
            }
            (true, false) | (false, true) => {
                return Err(CertError::BadCa {
                    path: dir.to_path_buf(),
                    reason: "only one of ca.crt and ca.key is present".into(),
                });
            }
        };
        Ok(CertStore {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// Opens an existing PKI directory.
    pub fn open(dir: &Path) -> Result<CertStore, CertError> {
        Ok(CertStore {
            dir: dir.to_path_buf(),
            ca: Ca::load(dir)?,
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Makes sure `<name>.crt`/`<name>.key` exist, were issued by this CA, carry the
    /// names of `req`, and stay valid for longer than `renew_before`; issues a new
    /// key and certificate otherwise. The key is replaced before the certificate.
    pub fn ensure(
        &self,
        name: &str,
        req: &LeafRequest,
        renew_before: Duration,
    ) -> Result<EnsureOutcome, CertError> {
        self.ensure_at(name, req, renew_before, OffsetDateTime::now_utc())
    }

    /// `ensure` as if the time were `now` (rotation is tested by moving the clock).
    pub fn ensure_at(
        &self,
        name: &str,
        req: &LeafRequest,
        renew_before: Duration,
        now: OffsetDateTime,
    ) -> Result<EnsureOutcome, CertError> {
        let cert_path = self.cert_path(name);
        let key_path = self.key_path(name);
        let reason = match (fs::read_to_string(&cert_path), key_path.exists()) {
            (Ok(pem), true) => self.renewal_reason(&pem, req, renew_before, now),
            (Ok(_), false) => Some("its key is missing".to_string()),
            (Err(_), _) => None,
        };
        let outcome = match (cert_path.exists() && key_path.exists(), reason) {
            (true, None) => return Ok(EnsureOutcome::Unchanged),
            (true, Some(r)) | (false, Some(r)) => EnsureOutcome::Renewed(r),
            (false, None) => EnsureOutcome::Created,
        };
        let issued = self.ca.issue(req)?;
        let key = issued.key_pem.as_deref().unwrap_or_default();
        write_private_file(&key_path, key.as_bytes())?;
        write_public_file(&cert_path, issued.cert_pem.as_bytes())?;
        Ok(outcome)
    }

    fn renewal_reason(
        &self,
        pem: &str,
        req: &LeafRequest,
        renew_before: Duration,
        now: OffsetDateTime,
    ) -> Option<String> {
        let info = match inspect_pem(pem) {
            Ok(info) => info,
            Err(e) => return Some(format!("the certificate is unreadable ({e})")),
        };
        if !verify_issued_by(pem, self.ca.cert_pem()) {
            return Some("it was not issued by the current CA".into());
        }
        if !fresh_enough(&info, now, renew_before) {
            return Some(format!("it expires at {}", info.not_after));
        }
        let mut have: Vec<String> = info.names.clone();
        let mut want: Vec<String> = req
            .names
            .iter()
            .map(|n| {
                n.parse::<std::net::IpAddr>()
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|_| n.clone())
            })
            .collect();
        have.sort();
        want.sort();
        if have != want {
            return Some(format!(
                "its names changed from [{}] to [{}]",
                have.join(", "),
                want.join(", ")
            ));
        }
        None
    }
}
