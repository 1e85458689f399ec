//! `hangar tls-proxy` in front of a real Garage: bytes pass untouched (so S3
//! signatures over the Host header hold, pre-signed GET and PUT work, a 64 MiB
//! object round-trips), only TLS 1.2+ with the appliance certificate is spoken,
//! and hostile or broken peers do not disturb other connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_supervisor::{ProxyConfig, ProxyHandle, TlsProxy};
use hangar_testkit::{Garage, TestDir};
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    store: CertStore,
    _dir: TestDir,
}

fn new_pki(label: &str) -> Pki {
    let dir = TestDir::new(label);
    let store = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost", "127.0.0.1"]), time::Duration::days(1))
        .unwrap();
    Pki { store, _dir: dir }
}

impl Pki {
    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.store.ca_cert_path()).unwrap()
    }
    fn client(&self) -> reqwest::Client {
        https_client(&self.ca_pem())
    }
}

fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    let roots = hangar_certs::tls::roots_from_pem(ca_pem).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(cfg).build().unwrap()
}

async fn proxy_to(pki: &Pki, upstream: &str) -> ProxyHandle {
    hangar_testkit::init();
    TlsProxy::start(ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        upstream,
        pki.store.cert_path("objects"),
        pki.store.key_path("objects"),
    ))
    .await
    .unwrap()
}

/// The bucket as clients of the appliance see it: through the proxy, by name.
fn bucket_via(garage: &Garage, endpoint: String) -> Box<s3::Bucket> {
    let region = s3::Region::Custom {
        region: hangar_testkit::garage::REGION.into(),
        endpoint,
    };
    let creds = s3::creds::Credentials::new(Some(&garage.access_key), Some(&garage.secret_key), None, None, None).unwrap();
    s3::Bucket::new(&garage.bucket, region, creds).unwrap().with_path_style()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

#[tokio::test]
async fn presigned_get_and_put_and_a_large_object_pass_through_untouched() {
    let garage = Garage::start().await;
    let pki = new_pki("proxy-presign");
    let proxy = proxy_to(&pki, &format!("127.0.0.1:{}", garage.s3_port)).await;
    let endpoint = format!("https://localhost:{}", proxy.local_addr().port());
    let bucket = bucket_via(&garage, endpoint.clone());
    let client = pki.client();

    // Pre-signed PUT then GET, both through TLS; the signature covers Host = localhost:<proxy>.
    let put = bucket.presign_put("plans/run-7.tfplan", 600, None, None).await.unwrap();
    assert!(put.starts_with(&endpoint), "{put}");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let r = client.put(&put).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let get = bucket.presign_get("plans/run-7.tfplan", 600, None).await.unwrap();
    let r = client.get(&get).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());

    // The same object read directly from Garage is what went through the proxy.
    let direct = garage.bucket().get_object("plans/run-7.tfplan").await.unwrap();
    assert_eq!(direct.bytes().as_ref(), body.as_slice());

    // A URL signed for another host (Garage's own address) fails through the
    // proxy: the Host header reaches Garage as the client sent it.
    let other = garage.bucket().presign_get("plans/run-7.tfplan", 600, None).await.unwrap();
    let through = other.replacen(&garage.endpoint(), &endpoint, 1);
    assert_eq!(client.get(&through).send().await.unwrap().status(), 403);
    // A tampered signature is refused by Garage through the proxy too.
    let tampered = get.replace("X-Amz-Signature=", "X-Amz-Signature=00");
    assert_eq!(client.get(&tampered).send().await.unwrap().status(), 403);

    // 64 MiB up and down through pre-signed URLs, checked by hash.
    let big: Vec<u8> = {
        let mut v = vec![0u8; 64 * 1024 * 1024];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for chunk in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        v
    };
    let put = bucket.presign_put("states/big.tfstate", 600, None, None).await.unwrap();
    let r = client.put(&put).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let get = bucket.presign_get("states/big.tfstate", 600, None).await.unwrap();
    let got = client.get(&get).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(sha256(&got), sha256(&big));

    proxy.shutdown();
    proxy.wait().await;
}

#[tokio::test]
async fn plaintext_clients_and_foreign_certificates_get_nothing() {
    let garage = Garage::start().await;
    let pki = new_pki("proxy-hostile");
    let proxy = proxy_to(&pki, &format!("127.0.0.1:{}", garage.s3_port)).await;
    let addr = proxy.local_addr();

    // Plain HTTP to the TLS port: no HTTP answer, nothing relayed.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", garage.bucket).as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "{answer:?}");

    // A client that trusts another CA refuses the proxy.
    let other = new_pki("proxy-other-ca");
    let err = https_client(&other.ca_pem())
        .get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await
        .unwrap_err();
    let chain = hangar_types::error_chain(&err);
    assert!(chain.contains("certificate") || chain.contains("UnknownIssuer"), "{chain}");

    // Several clients that connect and never handshake do not block a real one.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let r = pki
        .client()
        .get(format!("https://localhost:{}/{}", addr.port(), garage.bucket))
        .send()
        .await
        .unwrap();
    // Unsigned: Garage itself answers (403), through TLS.
    assert_eq!(r.status(), 403);
    drop(idle);
    proxy.shutdown();
    proxy.wait().await;
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_client_and_the_proxy_keeps_serving() {
    let mut garage = Garage::start().await;
    let pki = new_pki("proxy-upstream");
    let proxy = proxy_to(&pki, &format!("127.0.0.1:{}", garage.s3_port)).await;
    let url = format!("https://127.0.0.1:{}/{}", proxy.local_addr().port(), garage.bucket);
    let client = pki.client();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 403);
    garage.kill();
    let err = client.get(&url).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // The proxy is still up: TLS handshakes still complete.
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr()).await.unwrap();
    let roots = hangar_certs::tls::roots_from_pem(&pki.ca_pem()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert!(matches!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3) | Some(rustls::ProtocolVersion::TLSv1_2)
    ));
    proxy.shutdown();
    proxy.wait().await;
}

#[tokio::test]
async fn a_reloaded_certificate_is_used_for_new_connections() {
    let garage = Garage::start().await;
    let pki = new_pki("proxy-reload");
    let proxy = proxy_to(&pki, &format!("127.0.0.1:{}", garage.s3_port)).await;
    let port = proxy.local_addr().port();
    let fingerprint = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let roots = hangar_certs::tls::roots_from_pem(&pki.ca_pem()).unwrap();
        let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        sha256(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref())
    };
    let before = fingerprint().await;
    // Renewed: a new key and certificate under the same names.
    let cert = pki.store.cert_path("objects");
    std::fs::remove_file(&cert).unwrap();
    pki.store
        .ensure("objects", &LeafRequest::server("objects", &["localhost", "127.0.0.1"]), time::Duration::days(1))
        .unwrap();
    proxy.reload_certificate().unwrap();
    assert_ne!(fingerprint().await, before);
    // A broken key file is refused and the working certificate stays.
    std::fs::write(pki.store.key_path("objects"), "not a key").unwrap();
    assert!(proxy.reload_certificate().is_err());
    let _ = fingerprint().await;
    proxy.shutdown();
    proxy.wait().await;
}

fn hangar() -> std::process::Command {
    std::process::Command::new(hangar_testkit::cargo_bin("hangar"))
}

fn proxy_args(cmd: &mut std::process::Command, listen: &str, to: &str, cert: &Path, key: &Path) {
    cmd.args(["tls-proxy", "--listen", listen, "--to", to, "--cert"]).arg(cert).arg("--key").arg(key);
}

#[tokio::test]
async fn the_tls_proxy_command_serves_until_sigterm_and_reports_bad_input_in_one_line() {
    let garage = Garage::start().await;
    let pki = new_pki("proxy-cmd");
    let dir = TestDir::new("proxy-cmd-run");
    let port = hangar_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = hangar();
    proxy_args(
        &mut cmd,
        &listen,
        &format!("127.0.0.1:{}", garage.s3_port),
        &pki.store.cert_path("objects"),
        &pki.store.key_path("objects"),
    );
    let mut child = hangar_testkit::ChildProcess::spawn(cmd, "tls-proxy", dir.path());
    let client = pki.client();
    let url = format!("https://localhost:{port}/{}", garage.bucket);
    let status = hangar_testkit::wait_for("the proxy", Duration::from_secs(30), || async {
        client.get(&url).send().await.ok().map(|r| r.status())
    })
    .await;
    assert_eq!(status, 403);
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = child.wait_timeout(Duration::from_secs(30)).expect("exits on SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", child.output_tail());

    // A key readable by others is refused, with the file named.
    let loose: PathBuf = dir.path().join("loose.key");
    std::fs::copy(pki.store.key_path("objects"), &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = hangar();
    proxy_args(&mut cmd, "127.0.0.1:0", "127.0.0.1:1", &pki.store.cert_path("objects"), &loose);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("loose.key"), "{err}");

    // Usage errors exit 2; --help exits 0.
    let mut cmd = hangar();
    cmd.args(["tls-proxy", "--listen", "not-an-address", "--to", "x:1", "--cert", "/c", "--key", "/k"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));
    let mut cmd = hangar();
    cmd.args(["tls-proxy", "--help"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(0));
    // An upstream without a port is refused.
    let mut cmd = hangar();
    proxy_args(&mut cmd, "127.0.0.1:0", "garage", &pki.store.cert_path("objects"), &pki.store.key_path("objects"));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid upstream address"));
}
