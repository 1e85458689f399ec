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
    let key = hangar_certs::tls::load_key(&t.key_file).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_certs::{Ca, CaOptions, LeafRequest};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            // Keys must be 0600, as the appliance's own.
            let mode = if name.starts_with('k') { 0o600 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    fn setup() -> (Files, Ca, Ca) {
        hangar_certs::tls::install_default_provider();
        let files = Files { dir: tempfile::tempdir().unwrap() };
        (files, Ca::generate(&CaOptions::default()).unwrap(), Ca::generate(&CaOptions::default()).unwrap())
    }

    #[test]
    fn a_certificate_from_the_given_ca_for_the_host_is_accepted() {
        let (f, ca, _) = setup();
        let leaf = ca.issue(&LeafRequest::server("console", &["hangar.example.internal", "10.0.0.5"])).unwrap();
        let t = ProvidedTls {
            cert_file: f.write("c.pem", &leaf.cert_pem),
            key_file: f.write("k.pem", leaf.key_pem.as_deref().unwrap()),
            ca_file: Some(f.write("ca.pem", ca.cert_pem())),
        };
        validate_provided(&t, "hangar.example.internal").unwrap();
        // Self-contained: the chain carries its root.
        let chained = ProvidedTls { cert_file: f.write("chain.pem", &format!("{}{}", leaf.cert_pem, ca.cert_pem())), ca_file: None, ..t };
        validate_provided(&chained, "hangar.example.internal").unwrap();
    }

    #[test]
    fn wrong_names_keys_and_issuers_are_refused() {
        let (f, ca, other) = setup();
        let leaf = ca.issue(&LeafRequest::server("console", &["hangar.example.internal"])).unwrap();
        let stranger = ca.issue(&LeafRequest::server("console", &["hangar.example.internal"])).unwrap();
        let good = ProvidedTls {
            cert_file: f.write("c.pem", &leaf.cert_pem),
            key_file: f.write("k.pem", leaf.key_pem.as_deref().unwrap()),
            ca_file: Some(f.write("ca.pem", ca.cert_pem())),
        };
        let e = validate_provided(&good, "other.example.internal").unwrap_err();
        assert!(e.contains("does not verify for other.example.internal"), "{e}");
        let wrong_key = ProvidedTls { key_file: f.write("k2.pem", stranger.key_pem.as_deref().unwrap()), ..good.clone() };
        let e = validate_provided(&wrong_key, "hangar.example.internal").unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let wrong_ca = ProvidedTls { ca_file: Some(f.write("other.pem", other.cert_pem())), ..good.clone() };
        let e = validate_provided(&wrong_ca, "hangar.example.internal").unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let no_cert = ProvidedTls { cert_file: f.write("empty.pem", "not a certificate\n"), ..good };
        let e = validate_provided(&no_cert, "hangar.example.internal").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
