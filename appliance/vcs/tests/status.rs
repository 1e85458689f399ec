//! Commit-status clients against a real HTTPS server written here, with a
//! certificate from a test CA.
//!
//! The vendors' own servers cannot run on this machine (GitHub Enterprise
//! Server, GitLab, Bitbucket Data Center are appliances or JVM/Ruby stacks far
//! beyond a test; no Gitea binary is packaged here). So this is the honest
//! limit: each request is recorded and its method, path, headers and JSON body
//! are checked exactly against what each vendor's API documentation specifies,
//! and the server answers the way those APIs document their errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hangar_types::RunState;
use hangar_vcs::{CommitState, CommitStatus, Reported, Secret, StatusClient, StatusClientConfig, StatusError, Vendor};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
const TOKEN: &str = "glpat-0123456789abcdefghij";

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

/// What the server answers.
#[derive(Clone)]
enum Answer {
    Status(u16, &'static str),
    /// Accept the request and never answer.
    Hang,
    Redirect,
}

struct Server {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    answer: Arc<Mutex<Answer>>,
    _dir: hangar_testkit::TestDir,
}

impl Server {
    async fn start() -> Server {
        hangar_testkit::init();
        let dir = hangar_testkit::TestDir::new("vcs-status");
        let store = hangar_certs::CertStore::open_or_create(&dir.subdir("pki"), &Default::default()).unwrap();
        store
            .ensure("api", &hangar_certs::LeafRequest::server("api", &["localhost", "127.0.0.1"]), time::Duration::days(1))
            .unwrap();
        let cfg = hangar_certs::tls::server_config(
            hangar_certs::tls::load_certs(&store.cert_path("api")).unwrap(),
            hangar_certs::tls::load_key(&store.key_path("api")).unwrap(),
            hangar_certs::tls::ClientAuth::None,
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::Status(201, r#"{"state":"pending"}"#)));
        let (s, a) = (seen.clone(), answer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, seen, answer) = (acceptor.clone(), s.clone(), a.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, answer) = (seen.clone(), answer.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            seen.lock().unwrap().push(Recorded { method, path, headers, body });
                            let answer = answer.lock().unwrap().clone();
                            let resp = match answer {
                                Answer::Status(code, text) => Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(text.as_bytes())))
                                    .unwrap(),
                                Answer::Redirect => Response::builder()
                                    .status(302)
                                    .header("location", "https://127.0.0.1:9/elsewhere")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                                Answer::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    unreachable!()
                                }
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let ca_pem = std::fs::read(store.ca_cert_path()).unwrap();
        Server { addr, ca_pem, seen, answer, _dir: dir }
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn client(&self, vendor: Vendor) -> StatusClient {
        self.client_at(vendor, &self.base())
    }

    fn client_at(&self, vendor: Vendor, base: &str) -> StatusClient {
        StatusClient::new(StatusClientConfig {
            vendor,
            base_url: base.to_string(),
            token: Secret::new(TOKEN),
            ca_pem: Some(self.ca_pem.clone()),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn status(state: RunState) -> CommitStatus {
    CommitStatus::for_run(state, "hangar/network-prod", "https://hangar.example.com/stacks/network-prod/runs/42")
}

#[tokio::test]
async fn github_statuses_as_documented() {
    let srv = Server::start().await;
    let client = srv.client(Vendor::Github);
    assert_eq!(client.report("Codertocat/Hello-World", SHA, &status(RunState::Planning)).await.unwrap(), Reported::Reported);
    client.report("Codertocat/Hello-World", SHA, &status(RunState::Finished)).await.unwrap();
    client.report("Codertocat/Hello-World", SHA, &status(RunState::Failed)).await.unwrap();
    client.report("Codertocat/Hello-World", SHA, &status(RunState::Canceled)).await.unwrap();
    let seen = srv.take();
    assert_eq!(seen.len(), 4);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/api/v3/repos/Codertocat/Hello-World/statuses/{SHA}"));
    assert_eq!(header(r, "authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(header(r, "accept"), Some("application/vnd.github+json"));
    assert_eq!(header(r, "x-github-api-version"), Some("2022-11-28"));
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert!(header(r, "user-agent").unwrap().starts_with("hangar/"));
    assert_eq!(
        r.body,
        json!({
            "state": "pending",
            "target_url": "https://hangar.example.com/stacks/network-prod/runs/42",
            "description": "Hangar run planning",
            "context": "hangar/network-prod"
        })
    );
    let states: Vec<&str> = seen.iter().map(|r| r.body["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "success", "failure", "error"]);
}

#[tokio::test]
async fn gitlab_statuses_as_documented() {
    let srv = Server::start().await;
    // GitLab under a path prefix, a project in a subgroup.
    let client = srv.client_at(Vendor::Gitlab, &format!("{}/gitlab/", srv.base()));
    for s in [RunState::Queued, RunState::Applying, RunState::Finished, RunState::Failed, RunState::Discarded] {
        client.report("infra/platform/network", SHA, &status(s)).await.unwrap();
    }
    let seen = srv.take();
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/gitlab/api/v4/projects/infra%2Fplatform%2Fnetwork/statuses/{SHA}"));
    assert_eq!(header(r, "private-token"), Some(TOKEN));
    assert_eq!(header(r, "authorization"), None);
    assert_eq!(
        r.body,
        json!({
            "state": "pending",
            "name": "hangar/network-prod",
            "target_url": "https://hangar.example.com/stacks/network-prod/runs/42",
            "description": "Hangar run queued"
        })
    );
    let states: Vec<&str> = seen.iter().map(|r| r.body["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "running", "success", "failed", "canceled"]);
    // A numeric project id works too.
    client.report("1234", SHA, &status(RunState::Queued)).await.unwrap();
    assert_eq!(srv.take()[0].path, format!("/gitlab/api/v4/projects/1234/statuses/{SHA}"));
}

#[tokio::test]
async fn gitlab_refusing_a_repeated_state_is_not_an_error() {
    let srv = Server::start().await;
    srv.answer(Answer::Status(400, r#"{"message":"Cannot transition status via :run from :running (Reason(s): Status cannot transition via \"run\")"}"#));
    let client = srv.client(Vendor::Gitlab);
    let r = client.report("infra/network", SHA, &status(RunState::Applying)).await.unwrap();
    assert_eq!(r, Reported::AlreadyInState);
    // Any other 400 is a refusal.
    srv.answer(Answer::Status(400, r#"{"message":"400 Bad request - state does not have a valid value"}"#));
    let e = client.report("infra/network", SHA, &status(RunState::Applying)).await.unwrap_err();
    assert!(matches!(e, StatusError::Rejected { status: 400, .. }), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn gitea_statuses_as_documented() {
    let srv = Server::start().await;
    let client = srv.client(Vendor::Gitea);
    client.report("gitea/webhooks", SHA, &status(RunState::Unconfirmed)).await.unwrap();
    let r = &srv.take()[0];
    assert_eq!(r.path, format!("/api/v1/repos/gitea/webhooks/statuses/{SHA}"));
    assert_eq!(header(r, "authorization"), Some(format!("token {TOKEN}").as_str()));
    assert_eq!(
        r.body,
        json!({
            "state": "pending",
            "target_url": "https://hangar.example.com/stacks/network-prod/runs/42",
            "description": "Hangar run plan ready, waiting for confirmation",
            "context": "hangar/network-prod"
        })
    );
}

#[tokio::test]
async fn bitbucket_build_statuses_as_documented() {
    let srv = Server::start().await;
    srv.answer(Answer::Status(204, ""));
    let client = srv.client(Vendor::Bitbucket);
    for s in [RunState::Planning, RunState::Finished, RunState::Stopped] {
        client.report("PROJ/repository", SHA, &status(s)).await.unwrap();
    }
    let seen = srv.take();
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/rest/build-status/1.0/commits/{SHA}"));
    assert_eq!(header(r, "authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(
        r.body,
        json!({
            "state": "INPROGRESS",
            "key": "hangar/network-prod",
            "name": "hangar/network-prod",
            "url": "https://hangar.example.com/stacks/network-prod/runs/42",
            "description": "Hangar run planning"
        })
    );
    let states: Vec<&str> = seen.iter().map(|r| r.body["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["INPROGRESS", "SUCCESSFUL", "FAILED"]);
}

#[tokio::test]
async fn errors_say_what_the_server_answered_and_whether_to_retry() {
    let srv = Server::start().await;
    let client = srv.client(Vendor::Github);
    let base = srv.base();

    srv.answer(Answer::Status(401, r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest"}"#));
    let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert_eq!(e.to_string(), format!("github at {base}/api/v3/repos/o/r/statuses/{SHA} answered 401: Bad credentials"));
    assert!(!e.is_retryable());

    srv.answer(Answer::Status(422, r#"{"message":"No commit found for SHA: ec26c3e"}"#));
    let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert!(e.to_string().ends_with("answered 422: No commit found for SHA: ec26c3e"), "{e}");

    for code in [500, 502, 503, 429] {
        srv.answer(Answer::Status(code, "<html>\n<h1>busy</h1>\n</html>"));
        let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
        assert!(e.is_retryable(), "{code}: {e}");
        assert!(e.to_string().ends_with("<html> <h1>busy</h1> </html>"), "{e}");
    }

    // Bitbucket's error shape; and a token the server echoes back never reaches a message.
    let bb = srv.client(Vendor::Bitbucket);
    srv.answer(Answer::Status(401, r#"{"errors":[{"context":null,"message":"Authentication failed. Please check your credentials and try again.","exceptionName":"com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"}]}"#));
    let e = bb.report("P/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert!(e.to_string().ends_with("answered 401: Authentication failed. Please check your credentials and try again."), "{e}");
    srv.answer(Answer::Status(403, r#"{"message":"token glpat-0123456789abcdefghij is revoked"}"#));
    let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert!(!e.to_string().contains(TOKEN) && e.to_string().contains("token *** is revoked"), "{e}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let srv = Server::start().await;
    srv.answer(Answer::Redirect);
    let e = srv.client(Vendor::Gitlab).report("g/p", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert!(matches!(e, StatusError::Rejected { status: 302, .. }), "{e}");
    assert_eq!(srv.take().len(), 1, "the token went nowhere else");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retryable() {
    let srv = Server::start().await;
    srv.answer(Answer::Hang);
    let client = StatusClient::new(StatusClientConfig {
        vendor: Vendor::Github,
        base_url: srv.base(),
        token: Secret::new(TOKEN),
        ca_pem: Some(srv.ca_pem.clone()),
        timeout: Duration::from_millis(500),
    })
    .unwrap();
    let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    let StatusError::Transport { source, .. } = &e else { panic!("{e}") };
    assert!(source.is_timeout(), "{source}");
    assert!(e.is_retryable());
    assert!(e.to_string().starts_with("cannot reach github at https://127.0.0.1:"), "{e}");
}

#[tokio::test]
async fn a_server_with_a_certificate_from_another_ca_is_refused() {
    let srv = Server::start().await;
    let other = Server::start().await;
    let client = StatusClient::new(StatusClientConfig {
        vendor: Vendor::Gitea,
        base_url: srv.base(),
        token: Secret::new(TOKEN),
        ca_pem: Some(other.ca_pem.clone()),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let e = client.report("o/r", SHA, &status(RunState::Queued)).await.unwrap_err();
    assert!(matches!(e, StatusError::Transport { .. }), "{e}");
    // The whole chain names the certificate problem.
    let chain = hangar_types::error_chain(&e);
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    assert!(srv.take().is_empty(), "no request reached the server");
    // And with no CA given, the system roots do not know the test CA either.
    let system = StatusClient::new(StatusClientConfig {
        vendor: Vendor::Gitea,
        base_url: srv.base(),
        token: Secret::new(TOKEN),
        ca_pem: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    assert!(matches!(system.report("o/r", SHA, &status(RunState::Queued)).await, Err(StatusError::Transport { .. })));
}

#[tokio::test]
async fn bad_input_is_refused_before_any_request() {
    let srv = Server::start().await;
    let gh = srv.client(Vendor::Github);
    for (repo, sha) in [
        ("o/r", "abc"),
        ("o/r", "../../../admin"),
        ("o", SHA),
        ("o/r/x", SHA),
        ("o/../r", SHA),
        ("o /r", SHA),
    ] {
        let e = gh.report(repo, sha, &status(RunState::Queued)).await.unwrap_err();
        assert!(matches!(e, StatusError::Commit { .. } | StatusError::Repository { .. }), "{repo} {sha}: {e}");
        assert!(!e.is_retryable());
    }
    assert!(srv.take().is_empty());
    let e = StatusClient::new(StatusClientConfig {
        vendor: Vendor::Github,
        base_url: srv.base(),
        token: Secret::new(""),
        ca_pem: None,
        timeout: Duration::from_secs(1),
    })
    .unwrap_err();
    assert!(e.to_string().contains("no API token"), "{e}");
    let e = StatusClient::new(StatusClientConfig {
        vendor: Vendor::Github,
        base_url: srv.base(),
        token: Secret::new(TOKEN),
        ca_pem: Some(b"not a certificate".to_vec()),
        timeout: Duration::from_secs(1),
    })
    .unwrap_err();
    assert!(e.to_string().starts_with("cannot use the CA certificates given for github"), "{e}");
}

#[tokio::test]
async fn descriptions_are_cut_and_tokens_stay_out_of_debug() {
    let srv = Server::start().await;
    let client = srv.client(Vendor::Github);
    let mut s = status(RunState::Failed);
    s.description = "é".repeat(500);
    s.state = CommitState::Failure;
    client.report("o/r", SHA, &s).await.unwrap();
    assert_eq!(srv.take()[0].body["description"].as_str().unwrap().chars().count(), 140);
    let shown = format!("{client:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
}
