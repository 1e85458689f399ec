//! The HTTPS listener and the HTTP layer of the API, from outside: TLS only
//! (no plaintext, nothing below TLS 1.2), client certificates from the
//! appliance CA only, stalled handshakes that stall nobody else, hostile
//! requests, readiness that follows PostgreSQL and the object store, and a
//! graceful stop that lets in-flight requests finish.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
use hangar_testkit::{StopMode, wait_for};
use nix::sys::signal::Signal;
use serde_json::json;

/// A ClientHello offering only TLS 1.1 (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]);
    body.push(0);
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]);
    let mut hs = vec![1u8];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn openssl(app: &Appliance, version_flag: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &app.addr.to_string(), "-servername", "localhost", version_flag])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-CAfile"])
        .arg(app.ca_path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn tls_only_modern_versions_and_client_certificates_from_the_appliance_ca() {
    let app = Appliance::start().await;

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(app.addr).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let answer = read_some(&mut plain);
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    let http = reqwest::Client::new().get(format!("http://{}/health", app.addr)).send().await;
    assert!(http.is_err(), "plaintext HTTP must fail");

    // A TLS 1.1 ClientHello is answered with a fatal alert (protocol_version or
    // handshake_failure) and nothing else: no ServerHello.
    let mut old = TcpStream::connect(app.addr).unwrap();
    old.write_all(&tls11_client_hello()).unwrap();
    let answer = read_some(&mut old);
    assert!(
        answer.len() == 7 && answer[0] == 0x15 && answer[5] == 2 && [70, 40].contains(&answer[6]),
        "expected one fatal alert: {answer:?}"
    );

    // The same through OpenSSL, with TLS 1.2 as the control.
    let v11 = openssl(&app, "-tls1_1");
    let refused = |out: &str| out.contains("Cipher is (NONE)") && (out.contains("handshake failure") || out.contains("protocol version"));
    assert!(refused(&v11), "{v11}");
    let v12 = openssl(&app, "-tls1_2");
    assert!(!refused(&v12) && v12.contains("Protocol  : TLSv1.2") && v12.contains("Verify return code: 0 (ok)"), "{v12}");

    // HTTP/2 is negotiated with ALPN.
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--http2", "--cacert"])
        .arg(app.ca_path())
        .arg(app.url("/health"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "2 200");

    // A client certificate from the appliance CA is accepted; one from another CA
    // is refused during the handshake.
    let store = CertStore::open(&app.pki).unwrap();
    let client_req = LeafRequest {
        common_name: "worker-1".into(),
        names: vec!["worker-1".into()],
        organization: Some("pool1".into()),
        usage: Usage::Client,
        validity: time::Duration::days(1),
    };
    let ours = store.ca().issue(&client_req).unwrap();
    let identity = reqwest::Identity::from_pem(format!("{}{}", ours.cert_pem, ours.key_pem.unwrap()).as_bytes()).unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    let with_cert = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.clone())
        .identity(identity)
        .build()
        .unwrap();
    assert_eq!(with_cert.get(app.url("/health")).send().await.unwrap().status(), 200);

    let foreign_dir = app.dir.path().join("foreign-pki");
    let foreign = CertStore::open_or_create(&foreign_dir, &CaOptions::default()).unwrap();
    let theirs = foreign.ca().issue(&client_req).unwrap();
    let identity = reqwest::Identity::from_pem(format!("{}{}", theirs.cert_pem, theirs.key_pem.unwrap()).as_bytes()).unwrap();
    let impostor =
        reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).identity(identity).build().unwrap();
    assert!(impostor.get(app.url("/health")).send().await.is_err(), "a certificate from another CA must be refused");

    // And a client that does not trust the appliance CA does not talk to it.
    let stranger = reqwest::Client::builder().tls_built_in_root_certs(false).build().unwrap();
    assert!(stranger.get(app.url("/health")).send().await.is_err());
}

#[tokio::test]
async fn stalled_handshakes_stall_nobody_and_are_closed_after_the_timeout() {
    let app = Appliance::start_with(Options { handshake_timeout_secs: 2, ..Options::default() }).await;
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(app.addr).unwrap();
        if i % 2 == 0 {
            // Half a TLS record header, then silence.
            s.write_all(&[0x16, 0x03]).unwrap();
        }
        stalled.push(s);
    }
    for _ in 0..5 {
        assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);
    }
    let admin = app.admin_token().await;
    app.ok(&admin, "{ me { email } }", json!({})).await;
    // The server gives up on each of them: the connection is closed.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => assert_eq!(b[0], 0x15, "only an alert may come back, got {:?}", &b[..n]),
            Err(e) => assert!(
                matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
                "the stalled connection was not closed: {e}"
            ),
        }
    }
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_the_server_stays_up() {
    let app = Appliance::start().await;
    let token = app.admin_token().await;
    let url = app.url("/graphql");
    let post = |body: Vec<u8>, content_type: &str| {
        app.client.post(&url).bearer_auth(&token).header("content-type", content_type.to_string()).body(body).send()
    };
    let code = |v: &serde_json::Value| v["errors"][0]["extensions"]["code"].as_str().unwrap_or("").to_string();

    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("malformed JSON", b"{\"query\": \"{ me { email } }\"".to_vec(), "application/json", 400, "BAD_REQUEST"),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b], "application/json", 400, "BAD_REQUEST"),
        ("empty", Vec::new(), "application/json", 400, "BAD_REQUEST"),
        ("unknown key", br#"{"query":"{ me { email } }","evil":true}"#.to_vec(), "application/json", 400, "BAD_REQUEST"),
        ("batch", br#"[{"query":"{ me { email } }"}]"#.to_vec(), "application/json", 400, "BAD_REQUEST"),
        ("variables not an object", br#"{"query":"{ me { email } }","variables":[1]}"#.to_vec(), "application/json", 400, "BAD_REQUEST"),
        ("form post", b"query=%7B%7D".to_vec(), "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("text", b"{ me { email } }".to_vec(), "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ];
    for (what, body, ct, status, want) in cases {
        let r = post(body, ct).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(code(&v), want, "{what}: {v}");
    }

    // GraphQL-level problems are GraphQL errors.
    let (_, v) = app.gql(Some(&token), "{ stacks { slug ", json!({})).await;
    assert!(v["errors"][0]["message"].as_str().unwrap().to_lowercase().contains("expected"), "{v}");
    let (_, v) = app.gql(Some(&token), "{ stacks { slug password } }", json!({})).await;
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("password"), "{v}");
    let (_, v) = app.gql(Some(&token), "mutation { dropDatabase }", json!({})).await;
    assert!(v["errors"].is_array(), "{v}");

    // Too deep, too complex, too nested for the parser.
    let mut deep = String::from("{ stacks { runs { items { stack { runs { items { stack { runs { items { stack { runs { items { stack { slug } } } } } } } } } } } } } }");
    let (_, v) = app.gql(Some(&token), &deep, json!({})).await;
    assert!(v["errors"][0]["message"].as_str().unwrap().to_lowercase().contains("nested too deep"), "{v}");
    deep = format!("{}{}", "{ me ".repeat(5000), "}".repeat(5000));
    let (status, v) = app.gql(Some(&token), &deep, json!({})).await;
    assert_eq!(status, 200);
    assert!(v["errors"].is_array(), "{v}");
    let wide: String = (0..3000).map(|i| format!("a{i}: me {{ email }} ")).collect();
    let (_, v) = app.gql(Some(&token), &format!("{{ {wide} }}"), json!({})).await;
    assert!(v["errors"][0]["message"].as_str().unwrap().to_lowercase().contains("complex"), "{v}");

    // 10 MB declared: refused from the headers alone, before any body byte.
    let status_line = raw_request(
        &app,
        &format!(
            "POST /graphql HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        ),
    )
    .await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    // Sent in full, declared or streamed without a length: 413, or the server
    // closes while the client is still sending.
    let big = vec![b' '; 10 * 1024 * 1024];
    match post(big.clone(), "application/json").await {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    match streamed {
        Ok(r) => assert_eq!(r.status(), 413),
        // The server may close before the client finished sending.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }

    // Other paths and methods: GraphQL's shape on its own path, the one error
    // body of every other route elsewhere.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(code(&r.json().await.unwrap()), "METHOD_NOT_ALLOWED");
    let r = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "METHOD_NOT_ALLOWED", "{v}");
    let r = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, json!({ "error": { "code": "NOT_FOUND", "message": "not found" } }));
    assert_eq!(app.client.get(app.url("/../../etc/passwd")).send().await.unwrap().status(), 404);

    // Still serving, and nothing above crashed it.
    assert!(app.server.as_ref().unwrap().output().lines().all(|l| !l.contains("panicked")));
    app.ok(&token, "{ me { email } }", json!({})).await;
}

/// Sends `head` over TLS and returns the first line of the answer.
async fn raw_request(app: &Appliance, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn ready_follows_postgres_and_the_object_store() {
    let mut app = Appliance::start().await;
    let (status, body) = app.ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"]["postgres"]["status"], "ok");
    assert_eq!(body["components"]["objects"]["status"], "ok");
    assert_eq!(body["components"]["broker"]["status"], "not configured", "{body}");
    let token = app.admin_token().await;

    app.pg.stop(StopMode::Fast);
    let (status, body) = app.ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unready");
    assert_eq!(body["components"]["postgres"]["status"], "error");
    assert!(body["components"]["postgres"]["error"].as_str().unwrap().contains("127.0.0.1"), "{body}");
    assert_eq!(body["components"]["objects"]["status"], "ok");
    assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200, "health is only about the process");
    let (status, v) = app.gql(Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(status, 503, "{v}");
    let (code, _) = app.err(None, "mutation { login(email: \"a@b.c\", password: \"x\") { token } }", json!({})).await;
    assert_eq!(code, "UNAVAILABLE");

    app.pg.start_again();
    let url = app.url("/ready");
    let client = app.client.clone();
    wait_for("/ready to return to 200", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move { (client.get(&url).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    app.ok(&token, "{ me { email } }", json!({})).await;

    app.garage.kill();
    let (status, body) = app.ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["components"]["objects"]["status"], "error");
    assert_eq!(body["components"]["postgres"]["status"], "ok");
}

/// A git "server" that accepts connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            let _ = tx.try_send(());
        }
    });
    (addr, rx, task)
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_cleanly() {
    let mut app = Appliance::start_with(Options { git_timeout_secs: 4, ..Options::default() }).await;
    let token = app.admin_token().await;
    let (hole, mut accepted, _task) = black_hole().await;
    app.ok(&token, CREATE_STACK, json!({ "i": stack_input("slow", &format!("http://{hole}/slow.git")) })).await;

    let client = app.client.clone();
    let url = app.url("/graphql");
    let t = token.clone();
    let in_flight = tokio::spawn(async move {
        let r = client
            .post(&url)
            .bearer_auth(&t)
            .json(&json!({ "query": "mutation { triggerRun(stack: \"slow\") { id } }" }))
            .send()
            .await
            .expect("the in-flight request is answered, not cut");
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    });
    // The request is inside the server (git has connected) when SIGTERM arrives.
    tokio::time::timeout(Duration::from_secs(20), accepted.recv()).await.expect("git reached the black hole");
    // SIGTERM to the server process itself, as systemd's KillMode=mixed does (its
    // children, git here, are only killed with the group at the deadline).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(app.server().pid() as i32), Signal::SIGTERM).unwrap();

    // New connections are refused while the old request finishes.
    let addr = app.addr;
    wait_for("the listener to close", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("timed out after 4 s") && msg.contains(&hole.to_string()), "{msg}");
    let exit = app.server().wait_timeout(Duration::from_secs(30)).expect("the server exits after draining");
    assert!(exit.success(), "{exit}");
    let log = app.server_log();
    assert!(log.contains("draining connections") && log.contains("server stopped"), "{log}");
}

#[tokio::test]
async fn a_request_outliving_the_grace_period_is_cut_and_the_server_still_exits() {
    let mut app = Appliance::start_with(Options { git_timeout_secs: 60, shutdown_grace_secs: 1, ..Options::default() }).await;
    let token = app.admin_token().await;
    let (hole, mut accepted, _task) = black_hole().await;
    app.ok(&token, CREATE_STACK, json!({ "i": stack_input("stuck", &format!("http://{hole}/stuck.git")) })).await;
    let client = app.client.clone();
    let url = app.url("/graphql");
    let in_flight = tokio::spawn(async move {
        client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({ "query": "mutation { triggerRun(stack: \"stuck\") { id } }" }))
            .send()
            .await
    });
    tokio::time::timeout(Duration::from_secs(20), accepted.recv()).await.expect("git reached the black hole");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(app.server().pid() as i32), Signal::SIGTERM).unwrap();
    let exit = app.server().wait_timeout(Duration::from_secs(30)).expect("the server exits at the deadline");
    assert!(exit.success(), "{exit}");
    assert!(in_flight.await.unwrap().is_err(), "the stuck request was cut at the deadline");
    assert!(app.server_log().contains("shutdown deadline reached"));
}
