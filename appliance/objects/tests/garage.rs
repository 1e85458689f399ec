//! The object store client against a real Garage: directly over plain HTTP (the
//! development setting) and over HTTPS through a TLS front whose certificate
//! comes from a test CA, trusted through `ca_file` and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_objects::{Engine, ObjectStore, ObjectsConfig};
use hangar_testkit::{Garage, TestDir};
use tokio::net::{TcpListener, TcpStream};

fn write_keys(dir: &Path, access: &str, secret: &str) -> (PathBuf, PathBuf) {
    let (a, s) = (dir.join("objects-access-key"), dir.join("objects-secret-key"));
    hangar_certs::write_private_file(&a, format!("{access}\n").as_bytes()).unwrap();
    hangar_certs::write_private_file(&s, format!("{secret}\n").as_bytes()).unwrap();
    (a, s)
}

fn plain_config(garage: &Garage, dir: &Path) -> ObjectsConfig {
    let (access_key_file, secret_key_file) = write_keys(dir, &garage.access_key, &garage.secret_key);
    ObjectsConfig {
        engine: Engine::Garage,
        endpoint: garage.endpoint(),
        region: None,
        bucket: garage.bucket.clone(),
        access_key_file,
        secret_key_file,
        ca_file: None,
        danger_plain_http: true,
        request_timeout_secs: 10,
    }
}

/// A TLS front for Garage, as the appliance puts one in front of it: TLS from
/// the given PKI, then bytes copied both ways to Garage's plain port.
async fn tls_front(pki: &Path, garage_port: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let store = CertStore::open_or_create(pki, &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost", "127.0.0.1"]), time::Duration::days(1))
        .unwrap();
    let cfg = hangar_certs::tls::server_config(
        hangar_certs::tls::load_certs(&store.cert_path("objects")).unwrap(),
        hangar_certs::tls::load_key(&store.key_path("objects")).unwrap(),
        hangar_certs::tls::ClientAuth::None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", garage_port)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn plain_http_health_put_get_and_presigned_urls() {
    let garage = Garage::start().await;
    let dir = TestDir::new("objects-plain");
    let store = ObjectStore::connect(&plain_config(&garage, dir.path())).await.unwrap();
    store.health().await.unwrap();

    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put("plans/1.tfplan", &body).await.unwrap();
    assert_eq!(store.get("plans/1.tfplan").await.unwrap(), body);

    // A worker holds no credentials: it writes and reads through pre-signed URLs.
    let http = reqwest::Client::new();
    let put_url = store.presign_put("logs/run-7.log", Duration::from_secs(300)).await.unwrap();
    assert!(put_url.starts_with(&garage.endpoint()), "{put_url}");
    let r = http.put(&put_url).body("line 1\nline 2\n").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let get_url = store.presign_get("logs/run-7.log", Duration::from_secs(300)).await.unwrap();
    assert_eq!(http.get(&get_url).send().await.unwrap().text().await.unwrap(), "line 1\nline 2\n");
    assert_eq!(store.get("logs/run-7.log").await.unwrap(), b"line 1\nline 2\n");

    // A tampered URL (other key, same signature) is refused by the store.
    let forged = get_url.replace("run-7", "run-8");
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);

    store.delete("plans/1.tfplan").await.unwrap();
    let missing = hangar_types::error_chain(&store.get("plans/1.tfplan").await.unwrap_err());
    assert!(missing.contains("get \"plans/1.tfplan\"") && missing.contains("404"), "{missing}");
    assert!(store.presign_get("x", Duration::from_secs(8 * 86_400)).await.is_err(), "longer than S3 allows");
    assert!(!format!("{store:?}").contains(&garage.secret_key));
}

#[tokio::test]
async fn health_fails_clearly_on_bad_credentials_missing_bucket_and_a_dead_store() {
    let mut garage = Garage::start().await;
    let dir = TestDir::new("objects-bad");
    let good = plain_config(&garage, dir.path());

    let wrong_dir = dir.subdir("wrong");
    let (a, s) = write_keys(&wrong_dir, &garage.access_key, "0000000000000000000000000000000000000000000000000000000000000000");
    let wrong = ObjectsConfig { access_key_file: a, secret_key_file: s, ..good.clone() };
    let e = hangar_types::error_chain(&ObjectStore::connect(&wrong).await.unwrap().health().await.unwrap_err());
    assert!(e.contains(&garage.endpoint()) && e.contains("403"), "{e}");

    let no_bucket = ObjectsConfig { bucket: "no-such-bucket".into(), ..good.clone() };
    let e = hangar_types::error_chain(&ObjectStore::connect(&no_bucket).await.unwrap().health().await.unwrap_err());
    assert!(e.contains("no-such-bucket") && e.contains("404"), "{e}");

    // A credential file others can read is refused before any request.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&good.secret_key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = hangar_types::error_chain(&ObjectStore::connect(&good).await.unwrap_err());
    assert!(e.contains("objects-secret-key") && e.contains("0600"), "{e}");
    std::fs::set_permissions(&good.secret_key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let store = ObjectStore::connect(&good).await.unwrap();
    store.health().await.unwrap();
    garage.kill();
    let e = hangar_types::error_chain(&store.health().await.unwrap_err());
    assert!(e.contains(&garage.endpoint()), "{e}");
}

#[tokio::test]
async fn https_endpoint_is_trusted_through_ca_file_only() {
    let garage = Garage::start().await;
    let dir = TestDir::new("objects-tls");
    let pki = dir.path().join("pki");
    let (front, _task) = tls_front(&pki, garage.s3_port).await;
    let endpoint = format!("https://localhost:{}", front.port());
    let cfg = ObjectsConfig {
        endpoint: endpoint.clone(),
        ca_file: Some(pki.join("ca.crt")),
        danger_plain_http: false,
        ..plain_config(&garage, dir.path())
    };
    let store = ObjectStore::connect(&cfg).await.unwrap();
    store.health().await.unwrap();
    let body = vec![42u8; 9 * 1024 * 1024];
    store.put("state/big.tfstate", &body).await.unwrap();
    assert_eq!(store.get("state/big.tfstate").await.unwrap(), body);

    // Pre-signed URLs name the https endpoint workers use; a client trusting
    // only the appliance CA follows them.
    let url = store.presign_get("state/big.tfstate", Duration::from_secs(60)).await.unwrap();
    assert!(url.starts_with(&format!("{endpoint}/{}/state/big.tfstate?", garage.bucket)), "{url}");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).unwrap()).unwrap();
    let worker = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).build().unwrap();
    assert_eq!(worker.get(&url).send().await.unwrap().bytes().await.unwrap().len(), body.len());

    // Another CA is not trusted, and neither is the system's store.
    let other_pki = dir.path().join("other-pki");
    CertStore::open_or_create(&other_pki, &CaOptions::default()).unwrap();
    let untrusted = ObjectsConfig { ca_file: Some(other_pki.join("ca.crt")), ..cfg.clone() };
    let e = hangar_types::error_chain(&ObjectStore::connect(&untrusted).await.unwrap().health().await.unwrap_err());
    assert!(e.contains(&endpoint) && e.to_lowercase().contains("certificate"), "{e}");
    let system_roots = ObjectsConfig { ca_file: None, ..cfg };
    let e = hangar_types::error_chain(&ObjectStore::connect(&system_roots).await.unwrap().health().await.unwrap_err());
    assert!(e.contains(&endpoint), "{e}");
}
