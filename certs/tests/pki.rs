//! The appliance PKI: CA persistence, leaf issuance, hostile CSRs, rotation, and
//! real TLS handshakes with the certificates it issues.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use hangar_certs::tls::{self, ClientAuth};
use hangar_certs::{
    Ca, CaOptions, CertError, CertStore, CsrPolicy, EnsureOutcome, LeafRequest, Usage, inspect_pem,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::ServerName;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn worker_policy() -> CsrPolicy {
    CsrPolicy {
        common_name: "worker-7".into(),
        organization: Some("poolA".into()),
        names: vec![],
        usage: Usage::Client,
        validity: Duration::days(30),
    }
}

#[test]
fn ca_persists_with_a_private_key_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    ca.save(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let info = inspect_pem(ca.cert_pem()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some("Hangar appliance CA"));

    let again = Ca::load(dir.path()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    // The reloaded CA still issues certificates that chain to the saved one.
    let leaf = again.issue(&LeafRequest::server("server", &["localhost"])).unwrap();
    let roots = tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    verify_server_chain(&roots, &leaf.cert_pem, "localhost").unwrap();
}

#[test]
fn ca_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::generate(&CaOptions::default()).unwrap().save(dir.path()).unwrap();
    let key = dir.path().join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, CertError::InsecurePermissions { mode: 0o640, .. }), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn non_ca_certificate_or_foreign_key_is_refused_as_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    ca.save(dir.path()).unwrap();

    // A leaf in place of the CA certificate, with its own key.
    let leaf = ca.issue(&LeafRequest::server("x", &["x"])).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &leaf.cert_pem).unwrap();
    hangar_certs::write_private_file(
        &dir.path().join("ca.key"),
        leaf.key_pem.as_ref().unwrap().as_bytes(),
    )
    .unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    // The right certificate with another CA's key.
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let other = Ca::generate(&CaOptions::default()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    other.save(other_dir.path()).unwrap();
    std::fs::copy(other_dir.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn server_certificates_carry_dns_and_ip_names_and_random_serials() {
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    let req = LeafRequest::server("hangar", &["hangar.example.internal", "127.0.0.1", "::1"]);
    let a = ca.issue(&req).unwrap();
    let b = ca.issue(&req).unwrap();
    let info = inspect_pem(&a.cert_pem).unwrap();
    assert_eq!(
        info.names,
        vec!["hangar.example.internal", "127.0.0.1", "::1"]
    );
    assert!(!info.is_ca);
    assert!(info.server_auth && !info.client_auth);
    assert_eq!(info.serial_hex, a.serial_hex);
    assert_eq!(info.serial_hex.len(), 32, "16-byte serial");
    assert_ne!(a.serial_hex, b.serial_hex, "serials must be random");
    assert!(info.not_after - OffsetDateTime::now_utc() <= Duration::days(365));
    let roots = tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    verify_server_chain(&roots, &a.cert_pem, "hangar.example.internal").unwrap();
    verify_server_chain(&roots, &a.cert_pem, "127.0.0.1").unwrap();
    assert!(verify_server_chain(&roots, &a.cert_pem, "evil.example").is_err());
}

/// A CSR asking for everything it must not choose: CA status, certificate-signing
/// key usage, any EKU, a wildcard name and another subject. (A CSR has no field
/// for validity or serial; those are checked to be the CA's own below.)
fn hostile_csr(attacker_key: &KeyPair) -> String {
    let mut p = CertificateParams::new(vec!["*.evil.example".to_string(), "10.0.0.1".into()])
        .unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "root-of-everything");
    p.distinguished_name.push(DnType::OrganizationName, "poolB");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any, ExtendedKeyUsagePurpose::ServerAuth];
    p.serialize_request(attacker_key).unwrap().pem().unwrap()
}

#[test]
fn hostile_csr_gets_only_what_the_ca_chooses() {
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    let attacker_key = KeyPair::generate().unwrap();
    let issued = ca.sign_csr(&hostile_csr(&attacker_key), &worker_policy()).unwrap();
    assert!(issued.key_pem.is_none());

    let info = inspect_pem(&issued.cert_pem).unwrap();
    assert!(!info.is_ca, "a CSR must never obtain a CA certificate");
    assert!(info.client_auth && !info.server_auth);
    assert!(info.names.is_empty(), "names come from the policy: {:?}", info.names);
    assert_eq!(info.common_name.as_deref(), Some("worker-7"));
    assert_eq!(info.organization.as_deref(), Some("poolA"));
    let lifetime = info.not_after - info.not_before;
    assert!(lifetime <= Duration::days(30) + Duration::minutes(5), "{lifetime}");
    assert!(info.not_before.year() >= 2025);

    // The certificate really is not a CA: a leaf the attacker signs with it does not
    // chain to the appliance CA.
    let mut evil = CertificateParams::new(vec!["hangar.example.internal".to_string()]).unwrap();
    evil.is_ca = IsCa::ExplicitNoCa;
    let evil_key = KeyPair::generate().unwrap();
    let attacker_issuer = rcgen::Issuer::from_ca_cert_pem(&issued.cert_pem, attacker_key).unwrap();
    let evil_cert = evil.signed_by(&evil_key, &attacker_issuer).unwrap();
    let roots = tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    let chain = format!("{}{}", evil_cert.pem(), issued.cert_pem);
    assert!(verify_server_chain(&roots, &chain, "hangar.example.internal").is_err());

    // Signing the same CSR twice gives two serials.
    let again = ca.sign_csr(&hostile_csr(&KeyPair::generate().unwrap()), &worker_policy()).unwrap();
    assert_ne!(again.serial_hex, issued.serial_hex);
}

#[test]
fn broken_csrs_are_refused_with_a_reason() {
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    let err = ca.sign_csr("not a csr", &worker_policy()).unwrap_err();
    assert!(matches!(err, CertError::CsrRefused { .. }), "{err}");

    // Flip a byte inside the signed part: the signature no longer verifies.
    let (_, csr) = hangar_certs::worker_csr("w").unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let mut bad = der.clone();
    let i = bad.len() / 3;
    bad[i] ^= 0x01;
    let bad_pem = pem_encode("CERTIFICATE REQUEST", &bad);
    let err = ca.sign_csr(&bad_pem, &worker_policy()).unwrap_err();
    assert!(err.to_string().starts_with("certificate signing request refused"), "{err}");

    let huge = "A".repeat(100 * 1024);
    let err = ca.sign_csr(&huge, &worker_policy()).unwrap_err();
    assert!(err.to_string().contains("64 KiB"), "{err}");
}

#[test]
fn store_issues_once_then_rotates_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::open_or_create(dir.path(), &CaOptions::default()).unwrap();
    let req = LeafRequest::server("server", &["localhost", "127.0.0.1"]);
    let renew_before = Duration::days(30);
    assert_eq!(store.ensure("server", &req, renew_before).unwrap(), EnsureOutcome::Created);
    let key_mode = std::fs::metadata(store.key_path("server")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let first = std::fs::read_to_string(store.cert_path("server")).unwrap();
    assert_eq!(store.ensure("server", &req, renew_before).unwrap(), EnsureOutcome::Unchanged);

    // 340 days on, the year-long certificate is inside its renewal window.
    let later = OffsetDateTime::now_utc() + Duration::days(340);
    let outcome = store.ensure_at("server", &req, renew_before, later).unwrap();
    assert!(matches!(outcome, EnsureOutcome::Renewed(ref r) if r.contains("expires")), "{outcome:?}");
    let second = std::fs::read_to_string(store.cert_path("server")).unwrap();
    assert_ne!(first, second);

    // A new address for the host: the certificate is re-issued with it.
    let req2 = LeafRequest::server("server", &["localhost", "127.0.0.1", "10.1.2.3"]);
    let outcome = store.ensure("server", &req2, renew_before).unwrap();
    assert!(matches!(outcome, EnsureOutcome::Renewed(ref r) if r.contains("names")), "{outcome:?}");
    let info = inspect_pem(&std::fs::read_to_string(store.cert_path("server")).unwrap()).unwrap();
    assert!(info.names.contains(&"10.1.2.3".to_string()));

    // Reopening keeps the same CA; a replaced CA forces re-issue.
    let reopened = CertStore::open(dir.path()).unwrap();
    assert_eq!(reopened.ensure("server", &req2, renew_before).unwrap(), EnsureOutcome::Unchanged);
    let other = tempfile::tempdir().unwrap();
    let foreign = CertStore::open_or_create(other.path(), &CaOptions::default()).unwrap();
    std::fs::copy(store.cert_path("server"), foreign.cert_path("server")).unwrap();
    std::fs::copy(store.key_path("server"), foreign.key_path("server")).unwrap();
    let outcome = foreign.ensure("server", &req2, renew_before).unwrap();
    assert!(matches!(outcome, EnsureOutcome::Renewed(ref r) if r.contains("current CA")), "{outcome:?}");
}

#[test]
fn half_present_ca_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    CertStore::open_or_create(dir.path(), &CaOptions::default()).unwrap();
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = CertStore::open_or_create(dir.path(), &CaOptions::default()).unwrap_err();
    assert!(err.to_string().contains("only one of"), "{err}");
    assert!(dir.path().join("ca.crt").exists());
}

#[tokio::test]
async fn tls_handshake_with_issued_certificates_and_client_auth() {
    let ca = Ca::generate(&CaOptions::default()).unwrap();
    let server = ca.issue(&LeafRequest::server("server", &["localhost", "127.0.0.1"])).unwrap();
    let roots = tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    let server_cfg = tls::server_config(
        tls::parse_certs(server.cert_pem.as_bytes()).unwrap(),
        private_key(server.key_pem.as_ref().unwrap()),
        ClientAuth::Required(roots.clone()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let peer = s.get_ref().1.peer_certificates().map(|c| c.len()).unwrap_or(0);
                    let _ = s.write_all(format!("hello {peer}").as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });

    // A worker: key and CSR made locally, certificate signed by the CA.
    let (worker_key, csr) = hangar_certs::worker_csr("w1").unwrap();
    let worker = ca.sign_csr(&csr, &worker_policy()).unwrap();
    let identity = (
        tls::parse_certs(worker.cert_pem.as_bytes()).unwrap(),
        private_key(&worker_key),
    );
    let reply = connect(&roots, Some(identity), addr).await.unwrap();
    assert_eq!(reply, "hello 1");

    // Without a client certificate, or with one from another CA: refused.
    assert!(connect(&roots, None, addr).await.is_err());
    let stranger = Ca::generate(&CaOptions::default()).unwrap();
    let (k, csr) = hangar_certs::worker_csr("w2").unwrap();
    let foreign = stranger.sign_csr(&csr, &worker_policy()).unwrap();
    let identity = (tls::parse_certs(foreign.cert_pem.as_bytes()).unwrap(), private_key(&k));
    assert!(connect(&roots, Some(identity), addr).await.is_err());

    // A client trusting another CA refuses the server.
    let other_roots = tls::roots_from_pem(stranger.cert_pem().as_bytes()).unwrap();
    let (k, csr) = hangar_certs::worker_csr("w3").unwrap();
    let ok = ca.sign_csr(&csr, &worker_policy()).unwrap();
    let identity = (tls::parse_certs(ok.cert_pem.as_bytes()).unwrap(), private_key(&k));
    assert!(connect(&other_roots, Some(identity), addr).await.is_err());
}

async fn connect(
    roots: &Arc<rustls::RootCertStore>,
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
    addr: std::net::SocketAddr,
) -> std::io::Result<String> {
    let cfg = tls::client_config(roots.clone(), identity).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let mut s = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    if out.is_empty() {
        return Err(std::io::Error::other("server closed without a greeting"));
    }
    Ok(out)
}

fn private_key(pem: &str) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn verify_server_chain(
    roots: &Arc<rustls::RootCertStore>,
    chain_pem: &str,
    name: &str,
) -> Result<(), rustls::Error> {
    let chain = tls::parse_certs(chain_pem.as_bytes()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        tls::provider(),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
