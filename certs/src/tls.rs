//! rustls configurations built from appliance certificates: TLS 1.2 and 1.3 only,
//! ring as the only crypto provider.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertError, check_private_file};

/// The crypto provider every Hangar TLS endpoint uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider. Binaries call this first:
/// libraries that build configurations without a provider would otherwise panic
/// when more than one provider is compiled in.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether and how a server asks for client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    None,
    /// Verified when presented (worker endpoints also accept token logins).
    Optional(Arc<RootCertStore>),
    Required(Arc<RootCertStore>),
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(CertError::read(path))?;
    parse_certs(&bytes).ok_or_else(|| CertError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
    })
}

/// Reads a private key file, refusing one that group or others can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    check_private_file(path)?;
    let bytes = std::fs::read(path).map_err(CertError::read(path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| CertError::BadPem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// Parses every certificate in PEM text; `None` when there is none.
pub fn parse_certs(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// A root store holding the certificates of a PEM text (the appliance CA).
pub fn roots_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, CertError> {
    let certs = parse_certs(pem).ok_or_else(|| CertError::BadCertificate {
        reason: "no PEM certificate found".into(),
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|source| CertError::Tls {
            what: "adding a trusted root",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// A server configuration presenting `chain` with `key`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, CertError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| CertError::Tls {
            what: "protocol versions",
            source,
        })?;
    let verifier = |roots, optional: bool| {
        let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let b = if optional { b.allow_unauthenticated() } else { b };
        b.build().map_err(|source| CertError::TlsVerifier {
            what: "client certificate verifier",
            source,
        })
    };
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(verifier(roots, true)?),
        ClientAuth::Required(roots) => builder.with_client_cert_verifier(verifier(roots, false)?),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|source| CertError::Tls {
            what: "server certificate and key",
            source,
        })
}

/// A client configuration trusting only `roots`, optionally presenting a client
/// certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, CertError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| CertError::Tls {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| CertError::Tls {
                    what: "client certificate and key",
                    source,
                })
        }
    }
}
