//! The appliance's own certificate authority and every certificate it issues.
//!
//! Every listener of the appliance (HTTPS, MQTT, PostgreSQL, the object store's TLS
//! front) presents a certificate from this CA, and every worker host authenticates
//! with a client certificate the CA signed from its CSR. The CA key never leaves
//! the appliance host and is kept at mode 0600.

mod ca;
mod error;
mod files;
mod inspect;
mod store;
pub mod tls;

pub use ca::{Ca, CaOptions, CsrPolicy, Issued, LeafRequest, Usage};
pub use error::CertError;
pub use files::{check_private_file, write_private_file, write_public_file};
pub use inspect::{CertInfo, fingerprint_sha256, inspect_pem};
pub use store::{CertStore, EnsureOutcome};

/// Generates a private key and a CSR for a worker host, as `hangar-worker join` does.
///
/// The subject and SANs asked for here are only hints: the CA replaces them.
pub fn worker_csr(hint_name: &str) -> Result<(String, String), CertError> {
    let key = rcgen::KeyPair::generate().map_err(CertError::generate("worker key"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(CertError::generate("worker CSR"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hint_name);
    let csr = params
        .serialize_request(&key)
        .map_err(CertError::generate("worker CSR"))?;
    let csr_pem = csr.pem().map_err(CertError::generate("worker CSR"))?;
    Ok((key.serialize_pem(), csr_pem))
}
