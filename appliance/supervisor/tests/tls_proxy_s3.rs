//! rust-s3 itself, over TLS through `hangar tls-proxy`, against a real Garage:
//! header-signed requests (SigV4 covers Host), a multipart upload of 80 MiB and
//! its download. rust-s3 builds its own HTTP client, which trusts only the
//! system roots, so this test binary points SSL_CERT_FILE at its test CA before
//! anything else runs; it is alone in its binary for that reason.

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_supervisor::{ProxyConfig, TlsProxy};
use hangar_testkit::{Garage, TestDir};
use ring::digest;

#[tokio::test]
async fn rust_s3_works_through_the_proxy_including_a_multipart_upload() {
    let dir = TestDir::new("proxy-s3");
    let store = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost"]), time::Duration::days(1))
        .unwrap();
    set_trusted_ca(&store.ca_cert_path());

    let garage = Garage::start().await;
    let proxy = TlsProxy::start(ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("127.0.0.1:{}", garage.s3_port),
        store.cert_path("objects"),
        store.key_path("objects"),
    ))
    .await
    .unwrap();
    let region = s3::Region::Custom {
        region: hangar_testkit::garage::REGION.into(),
        endpoint: format!("https://localhost:{}", proxy.local_addr().port()),
    };
    let creds = s3::creds::Credentials::new(Some(&garage.access_key), Some(&garage.secret_key), None, None, None).unwrap();
    let bucket = s3::Bucket::new(&garage.bucket, region, creds).unwrap().with_path_style();

    bucket.put_object("small", b"over tls").await.unwrap();
    assert_eq!(bucket.get_object("small").await.unwrap().bytes().as_ref(), b"over tls");
    let (head, code) = bucket.head_object("small").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(head.content_length, Some(8));

    // Above 8 MiB rust-s3 switches to a multipart upload: many signed requests.
    let big: Vec<u8> = (0..80 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut reader = std::io::Cursor::new(big.clone());
    let mut reader = tokio::io::BufReader::new(&mut reader);
    let resp = bucket.put_object_stream(&mut reader, "big.bin").await.unwrap();
    assert_eq!(resp.status_code(), 200);
    let back = bucket.get_object("big.bin").await.unwrap();
    assert_eq!(back.bytes().len(), big.len());
    assert_eq!(
        digest::digest(&digest::SHA256, back.bytes()).as_ref(),
        digest::digest(&digest::SHA256, &big).as_ref()
    );
    let listed = bucket.list("".into(), None).await.unwrap();
    let keys: Vec<&str> = listed.iter().flat_map(|l| l.contents.iter().map(|o| o.key.as_str())).collect();
    assert!(keys.contains(&"big.bin") && keys.contains(&"small"), "{keys:?}");

    // Wrong credentials are refused by Garage, through the proxy.
    let wrong = s3::creds::Credentials::new(Some(&garage.access_key), Some("0000"), None, None, None).unwrap();
    let bad = s3::Bucket::new(&garage.bucket, bucket.region(), wrong).unwrap().with_path_style();
    assert!(bad.get_object("small").await.is_err());

    proxy.shutdown();
    proxy.wait().await;
}

/// rustls-native-certs (under reqwest, under rust-s3) reads SSL_CERT_FILE when
/// the client is built: set before any client exists and before other threads
/// of this test could read the environment.
#[allow(unsafe_code)]
fn set_trusted_ca(path: &std::path::Path) {
    // SAFETY: called first in the only test of this binary, before the test
    // starts anything that reads the environment concurrently.
    unsafe { std::env::set_var("SSL_CERT_FILE", path) };
}
