//! TLS for the installer: checking a certificate the operator brings (chains
//! to the given CA or is self-contained, key matches, names cover the host),
//! and clients that trust only the appliance's CA.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::answers::ProvidedTls;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `Ok` when the chain in `cert_file` leads to `ca_file` (or to its own last
/// certificate), the key is the certificate's, and `hostname` is among its names.
pub fn validate_provided(t: &ProvidedTls, hostname: &str) -> Result<(), String> {
    let chain = hangar_certs::tls::parse_certs(&read(&t.cert_file)?).filter(|c| !c.is_empty()).ok_or("holds no PEM certificate")?;
    let key = hangar_certs::tls::load_key(&t.key_file).map_err(|e| format!("key {}: {e}", t.key_file.display()))?;
    let provider = hangar_certs::tls::provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| format!("key {}: {e}", t.key_file.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| format!("the key {} does not belong to the certificate", t.key_file.display()))?;
    let roots_pem = match &t.ca_file {
        Some(ca) => read(ca)?,
        None => {
            // Self-contained: the chain ends with its own root.
            let last = chain.last().ok_or("empty chain")?;
            pem(last)
        }
    };
    let roots = hangar_certs::tls::roots_from_pem(&roots_pem).map_err(|e| format!("CA: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(hostname.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map_err(|e| format!("does not verify for {hostname}: {e}"))?;
    Ok(())
}

fn pem(der: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}

/// A rustls client configuration trusting only the CA certificates in `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = hangar_certs::tls::roots_from_pem(&read(ca_file)?).map_err(|e| e.to_string())?;
    hangar_certs::tls::client_config(roots, None).map(Arc::new).map_err(|e| e.to_string())
}
