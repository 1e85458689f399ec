//! `hangar-worker join`, `status` and the command line, run as the real binary
//! against an HTTPS join endpoint with real TLS and a CA that signs the
//! worker's CSR. (The endpoint is a stand-in until the appliance serves
//! `/api/v1/workers/join`; the worker's side is exercised in full.)

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hangar_certs::{Ca, CaOptions, CsrPolicy, LeafRequest, Usage};
use hangar_testkit::TestDir;
use hangar_types::http::{ErrorBody, ErrorCode};
use hangar_types::worker::{JoinRequest, JoinResponse, WorkerRoute};
use hangar_worker::config::WorkerConfig;
use hangar_worker::identity::Identity;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

const GOOD_TOKEN: &str = "hjt_good_join_token";
const WORKER_TOKEN: &str = "hwt_7_secret_worker_token";

struct JoinEndpoint {
    addr: SocketAddr,
    ca_path: PathBuf,
    requests: Arc<AtomicU32>,
    last: Arc<Mutex<Option<JoinRequest>>>,
}

/// HTTPS on loopback with a certificate from a fresh CA: `GOOD_TOKEN` joins
/// worker 7 (its CSR signed by the CA), `/health` answers 200, any other token
/// is refused with the reason in a JSON body.
async fn join_endpoint(dir: &Path) -> JoinEndpoint {
    hangar_testkit::init();
    let ca = Arc::new(Ca::generate(&CaOptions::default()).unwrap());
    let ca_path = dir.join("appliance-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let leaf = ca
        .issue(&LeafRequest::server(
            "appliance",
            &["127.0.0.1", "localhost"],
        ))
        .unwrap();
    let chain = hangar_certs::tls::parse_certs(leaf.cert_pem.as_bytes()).unwrap();
    let key = {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_ref().unwrap().as_bytes()).unwrap()
    };
    let roots = hangar_certs::tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    let tls = hangar_certs::tls::server_config(
        chain,
        key,
        hangar_certs::tls::ClientAuth::Optional(roots),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU32::new(0));
    let last: Arc<Mutex<Option<JoinRequest>>> = Arc::default();
    let (req_count, last_req) = (requests.clone(), last.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, ca, count, last) = (
                acceptor.clone(),
                ca.clone(),
                req_count.clone(),
                last_req.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ca, count, last) = (ca.clone(), count.clone(), last.clone());
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, body) = answer(&ca, &path, &body, &last);
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    JoinEndpoint {
        addr,
        ca_path,
        requests,
        last,
    }
}

fn answer(ca: &Ca, path: &str, body: &[u8], last: &Mutex<Option<JoinRequest>>) -> (u16, String) {
    if path == "/health" {
        return (200, "ok".into());
    }
    if path != WorkerRoute::JOIN_PATH {
        return (404, error_body(ErrorCode::NotFound, "not found"));
    }
    let Ok(req) = serde_json::from_slice::<JoinRequest>(body) else {
        return (400, error_body(ErrorCode::BadRequest, "not a join request"));
    };
    *last.lock().unwrap() = Some(req.clone());
    if req.token != GOOD_TOKEN {
        return (403, error_body(ErrorCode::Forbidden, "join token expired"));
    }
    let policy = CsrPolicy {
        common_name: "worker-7".into(),
        organization: Some("w7".into()),
        names: vec![],
        usage: Usage::Client,
        validity: time::Duration::days(30),
    };
    let issued = ca.sign_csr(&req.csr_pem, &policy).unwrap();
    let resp = JoinResponse {
        worker_id: 7,
        pool_id: 3,
        pool_name: "builders".into(),
        certificate_pem: issued.cert_pem,
        ca_pem: ca.cert_pem().to_string(),
        worker_token: WORKER_TOKEN.into(),
        server_url: String::new(),
        broker_url: "mqtts://127.0.0.1:1".into(),
    };
    (200, serde_json::to_string(&resp).unwrap())
}

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hangar-worker"))
}

fn run(args: &[&str]) -> Output {
    worker()
        .args(args)
        .env("HANGAR_LOG", "warn")
        .output()
        .expect("run hangar-worker")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

impl JoinEndpoint {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// `join` with `token` into `dir`, plus `extra` arguments.
    fn join(&self, token: &str, dir: &Path, extra: &[&str]) -> Output {
        let (url, ca, dir) = (
            self.url(),
            self.ca_path.display().to_string(),
            dir.display().to_string(),
        );
        let mut args = vec![
            "join",
            "--server",
            &url,
            "--token",
            token,
            "--ca",
            &ca,
            "--config-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        run(&args)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn join_writes_a_private_identity_and_refuses_to_overwrite_it() {
    let t = TestDir::new("worker-join");
    let ep = join_endpoint(t.path()).await;
    let dir = t.path().join("etc/hangar-worker");
    let out = ep.join(GOOD_TOKEN, &dir, &["--name", "builder-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("joined pool builders as worker 7"));

    for (file, want) in [
        ("worker.key", 0o600),
        ("token", 0o600),
        ("worker.crt", 0o644),
        ("ca.crt", 0o644),
        ("worker.toml", 0o644),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "{file}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("token")).unwrap().trim(),
        WORKER_TOKEN
    );
    let toml = std::fs::read_to_string(dir.join("worker.toml")).unwrap();
    assert!(
        !toml.contains(WORKER_TOKEN) && !toml.contains("PRIVATE KEY"),
        "no secret in worker.toml"
    );
    let cfg = WorkerConfig::load(&dir).unwrap();
    assert_eq!(
        (cfg.worker_id, cfg.pool_id, cfg.name.as_str()),
        (7, 3, "builder-a")
    );
    assert_eq!(
        cfg.server_url,
        ep.url(),
        "the URL joined is kept when the appliance names none"
    );
    assert_eq!(cfg.broker_url.as_deref(), Some("mqtts://127.0.0.1:1"));
    let identity = Identity::load(&cfg).expect("the identity loads as `run` loads it");
    assert!(identity.certificate_pem.contains("BEGIN CERTIFICATE"));
    let sent = ep.last.lock().unwrap().clone().unwrap();
    assert_eq!(sent.name, "builder-a");
    assert!(sent.csr_pem.contains("CERTIFICATE REQUEST"));
    assert_eq!(sent.host.os, "linux");

    // Joining again is refused before anything is sent or written.
    let key_before = std::fs::read(dir.join("worker.key")).unwrap();
    let before = ep.requests.load(Ordering::SeqCst);
    let out = ep.join(GOOD_TOKEN, &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already holds the identity of worker 7 (builder-a)")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        ep.requests.load(Ordering::SeqCst),
        before,
        "the token was not spent"
    );
    assert_eq!(std::fs::read(dir.join("worker.key")).unwrap(), key_before);

    // A key alone (an interrupted join) is an identity too.
    let partial = t.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("worker.key"), "x").unwrap();
    let out = ep.join(GOOD_TOKEN, &partial, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(incomplete)"), "{}", stderr(&out));

    // --force replaces it with a new key.
    let out = ep.join(GOOD_TOKEN, &dir, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(dir.join("worker.key")).unwrap(), key_before);
    assert_eq!(mode(&dir.join("worker.key")), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn join_failures_are_one_line_with_the_cause_and_write_nothing() {
    let t = TestDir::new("worker-join-fail");
    let ep = join_endpoint(t.path()).await;

    // The appliance's reason is shown.
    let dir = t.path().join("refused");
    let out = ep.join("hjt_spent_token", &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("refused to join this worker: join token expired (HTTP 403)"),
        "{err}"
    );
    assert!(!dir.join("worker.key").exists() && !dir.join("worker.toml").exists());

    // A CA that did not sign the server's certificate: TLS fails, nothing is sent.
    let other = Ca::generate(&CaOptions::default()).unwrap();
    let other_ca = t.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert_pem()).unwrap();
    let before = ep.requests.load(Ordering::SeqCst);
    let (url, ca, d) = (
        ep.url(),
        other_ca.display().to_string(),
        dir.display().to_string(),
    );
    let out = run(&[
        "join",
        "--server",
        &url,
        "--token",
        GOOD_TOKEN,
        "--ca",
        &ca,
        "--config-dir",
        &d,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("TLS with the appliance") && err.contains("other-ca.pem"),
        "{err}"
    );
    assert_eq!(ep.requests.load(Ordering::SeqCst), before);

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("https://127.0.0.1:{port}");
    let ca = ep.ca_path.display().to_string();
    let out = run(&[
        "join",
        "--server",
        &url,
        "--token",
        GOOD_TOKEN,
        "--ca",
        &ca,
        "--config-dir",
        &d,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot reach the appliance at {url}")),
        "{}",
        stderr(&out)
    );

    // Plain HTTP, and a CA file that is no certificate.
    let out = run(&[
        "join",
        "--server",
        "http://127.0.0.1:1983",
        "--token",
        "t",
        "--ca",
        &ca,
        "--config-dir",
        &d,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("must start with https://"),
        "{}",
        stderr(&out)
    );
    let junk = t.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let j = junk.display().to_string();
    let out = run(&[
        "join",
        "--server",
        &ep.url(),
        "--token",
        "t",
        "--ca",
        &j,
        "--config-dir",
        &d,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("junk.pem"), "{}", stderr(&out));

    // An unwritable config directory is found before the token is spent.
    let file = t.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let before = ep.requests.load(Ordering::SeqCst);
    let out = ep.join(GOOD_TOKEN, &file.join("dir"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot write to"), "{}", stderr(&out));
    assert_eq!(
        ep.requests.load(Ordering::SeqCst),
        before,
        "the token was not spent"
    );

    // The token can come from a file.
    let token_file = t.path().join("join-token");
    std::fs::write(&token_file, format!("{GOOD_TOKEN}\n")).unwrap();
    let dir = t.path().join("from-file");
    let (url, ca, tf, d) = (
        ep.url(),
        ep.ca_path.display().to_string(),
        token_file.display().to_string(),
        dir.display().to_string(),
    );
    let out = run(&[
        "join",
        "--server",
        &url,
        "--token-file",
        &tf,
        "--ca",
        &ca,
        "--config-dir",
        &d,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_each_end_and_fails_when_one_is_unreachable() {
    let t = TestDir::new("worker-status");
    let ep = join_endpoint(t.path()).await;
    let dir = t.path().join("w");
    assert!(
        ep.join(GOOD_TOKEN, &dir, &["--name", "builder-s"])
            .status
            .success()
    );
    let d = dir.display().to_string();
    let out = run(&["status", "--config-dir", &d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("worker   7 (builder-s) in pool 3 (builders)"),
        "{text}"
    );
    assert!(text.contains("O=w7"), "{text}");
    assert!(
        text.contains(&format!("server   {} reachable", ep.url())),
        "{text}"
    );
    assert!(
        text.contains("broker   mqtts://127.0.0.1:1 unreachable"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1), "the broker is not there");
    assert!(!text.contains(WORKER_TOKEN));

    // A token file others can read is refused.
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["status", "--config-dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("0600"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2_and_every_command_has_help() {
    for args in [
        &["--help"][..],
        &["join", "--help"],
        &["run", "--help"],
        &["status", "--help"],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    for args in [
        &[][..],
        &["join", "--server", "https://h"],
        &["join", "--token", "a", "--token-file", "b"],
        &["frobnicate"],
    ] {
        assert_eq!(run(args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn run_and_status_without_a_configuration_fail_in_one_line() {
    let t = TestDir::new("worker-noconfig");
    let d = t.path().join("nothing").display().to_string();
    for cmd in ["run", "status"] {
        let out = run(&[cmd, "--config-dir", &d]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("cannot read") && err.contains("worker.toml"),
            "{err}"
        );
    }
    // A configuration with an unknown key names the file and the line.
    let dir = t.subdir("bad");
    std::fs::write(dir.join("worker.toml"), "worker_id = 1\nbogus = true\n").unwrap();
    let out = run(&["run", "--config-dir", &dir.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("worker.toml:") && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// The appliance's error body.
fn error_body(code: ErrorCode, message: &str) -> String {
    serde_json::to_string(&ErrorBody::new(code, message)).unwrap()
}
