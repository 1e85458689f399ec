//! What the VCS tests share: GitHub-format deliveries signed as GitHub signs
//! them, `hangar drain` and `hangar scheduler` as processes next to the test
//! appliance, a commit-status receiver speaking GitHub's status API over HTTPS,
//! and reads of the delivery log and the queue.

#![allow(dead_code)]

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_db::schema::{job_keys, jobs, runs, webhook_deliveries};
use hangar_testkit::{ChildProcess, cargo_bin, wait_for};
use serde_json::{Value, json};

use crate::common::Appliance;

pub const CREATE_INTEGRATION: &str = "mutation($i: VcsIntegrationInput!) { createVcsIntegration(input: $i) { id name kind baseUrl hasToken hasWebhookSecret webhookPath } }";
pub const LINK: &str = "mutation($s: String!, $i: String) { linkStackToVcs(stack: $s, integration: $i) { slug } }";
pub const DELIVERIES: &str = "query($i: String!) { webhookDeliveries(integration: $i, limit: 50) { deliveryId event outcome detail runIds error processedAt } }";

/// `sha256=<hex HMAC-SHA256 of the body>`, as GitHub signs.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

/// A GitHub `push` delivery (the fields GitHub sends that Hangar reads).
pub fn github_push(clone_url: &str, full_name: &str, branch: &str, before: &str, after: &str, paths: &[&str]) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": before.bytes().all(|b| b == b'0'),
        "deleted": false,
        "forced": false,
        "repository": { "full_name": full_name, "clone_url": clone_url, "html_url": clone_url.trim_end_matches(".git") },
        "pusher": { "name": "dev", "email": "dev@example.test" },
        "commits": [{ "id": after, "message": "change", "added": [], "removed": [], "modified": paths }],
        "head_commit": { "id": after }
    })
}

/// A GitHub `pull_request` delivery.
pub fn github_pull_request(clone_url: &str, full_name: &str, action: &str, number: u64, head_ref: &str, head_sha: &str, base: &str) -> Value {
    let repo = json!({ "full_name": full_name, "clone_url": clone_url, "html_url": clone_url.trim_end_matches(".git") });
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "title": "Change things",
            "merged": false,
            "user": { "login": "dev" },
            "head": { "ref": head_ref, "sha": head_sha, "repo": repo },
            "base": { "ref": base, "sha": "1".repeat(40), "repo": repo }
        },
        "repository": repo
    })
}

/// POSTs a GitHub delivery signed with `secret` (or unsigned when `None`).
pub async fn post_github(
    app: &Appliance,
    integration: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(&format!("/webhooks/github/{integration}")))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if let Some(s) = secret {
        req = req.header("x-hub-signature-256", github_signature(s, body));
    }
    let resp = req.send().await.expect("POST webhook");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Hex HMAC-SHA256 of `body` under `secret`: what Gitea/Forgejo send bare and
/// Bitbucket Data Center and GitHub after `sha256=`.
pub fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

/// Bitbucket Data Center's headers for a delivery signed with `secret`.
pub fn bitbucket_headers(secret: &str, id: &str, event: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("x-hub-signature".into(), format!("sha256={}", hex_hmac(secret, body))),
        ("x-request-id".into(), id.into()),
        ("x-event-key".into(), event.into()),
    ]
}

/// Gitea's headers (Forgejo's with `forgejo`: it sends both sets, its own
/// first).
pub fn gitea_headers(secret: &str, id: &str, event: &str, body: &[u8], forgejo: bool) -> Vec<(String, String)> {
    let sig = hex_hmac(secret, body);
    let mut h = vec![
        ("x-gitea-signature".into(), sig.clone()),
        ("x-gitea-delivery".into(), id.into()),
        ("x-gitea-event".into(), event.into()),
    ];
    if forgejo {
        h.push(("x-forgejo-signature".into(), sig));
        h.push(("x-forgejo-delivery".into(), id.into()));
        h.push(("x-forgejo-event".into(), event.into()));
    }
    h
}

/// GitLab's headers with a secret token.
pub fn gitlab_token_headers(token: &str, id: &str, event: &str) -> Vec<(String, String)> {
    vec![
        ("x-gitlab-token".into(), token.into()),
        ("idempotency-key".into(), id.into()),
        ("x-gitlab-event-uuid".into(), format!("uuid-{id}")),
        ("x-gitlab-event".into(), event.into()),
    ]
}

/// GitLab's signed headers (the Standard Webhooks scheme): `signing_token` is
/// `whsec_<base64 key>`, the signature `v1,<base64 HMAC-SHA256 of
/// "id.timestamp.body">` under the decoded key.
pub fn gitlab_signed_headers(signing_token: &str, id: &str, timestamp: u64, event: &str, body: &[u8]) -> Vec<(String, String)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(signing_token.strip_prefix("whsec_").unwrap()).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let sig = b64.encode(ring::hmac::sign(&key, &signed).as_ref());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), format!("v1,{sig}")),
        ("x-gitlab-event".into(), event.into()),
    ]
}

/// POSTs `body` to `path` with `headers`; the status and the answer.
pub async fn post_with(app: &Appliance, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Value) {
    let mut req = app.client.post(app.url(path)).header("content-type", "application/json").body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.expect("POST webhook");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A vendor's published example delivery, kept with the parsers' fixtures.
pub fn fixture(path: &str) -> Value {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vcs/tests/fixtures").join(path);
    serde_json::from_slice(&std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))).unwrap()
}

/// Bitbucket Data Center's `repo:refs_changed` example, for repository
/// `clone_url` with one change of `git_ref` (`ADD` when `from` is all zeros).
pub fn bitbucket_push(clone_url: &str, git_ref: &str, from: &str, to: &str) -> Value {
    let mut v = fixture("bitbucket/repo-refs_changed.json");
    // The documented example carries no links; real deliveries do.
    v["repository"]["links"] = json!({ "clone": [{ "href": clone_url, "name": "http" }] });
    let change = &mut v["changes"][0];
    change["ref"]["id"] = json!(git_ref);
    change["ref"]["displayId"] = json!(git_ref.trim_start_matches("refs/heads/"));
    change["refId"] = json!(git_ref);
    change["fromHash"] = json!(from);
    change["toHash"] = json!(to);
    change["type"] = json!(if from.bytes().all(|b| b == b'0') { "ADD" } else { "UPDATE" });
    v
}

/// Sends only the head of a request declaring `content_length` bytes of body
/// and returns the status line the server answers with before any body byte.
pub async fn status_for_declared_length(app: &Appliance, path: &str, headers: &[(&str, &str)], content_length: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pem = std::fs::read(app.ca_path()).unwrap();
    let roots = hangar_certs::tls::roots_from_pem(&pem).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {content_length}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await.expect("an answer before the body").unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

/// `hangar <command>` with the appliance's configuration, as its own process.
pub fn spawn(app: &Appliance, command: &str) -> ChildProcess {
    let mut cmd = Command::new(cargo_bin("hangar"));
    cmd.arg("--config").arg(&app.config).arg(command).env("HANGAR_LOG", "info").stdin(Stdio::null());
    ChildProcess::spawn(cmd, command, app.dir.path())
}

pub async fn runs_of_stack(app: &Appliance, slug: &str) -> Vec<(i64, String, String, String)> {
    let mut c = app.pg.database().connect().await.unwrap();
    runs::table
        .inner_join(hangar_db::schema::stacks::table)
        .filter(hangar_db::schema::stacks::slug.eq(slug))
        .order(runs::id.asc())
        .select((runs::id, runs::kind, runs::state, runs::commit_sha))
        .load(&mut c)
        .await
        .unwrap()
}

pub async fn all_runs(app: &Appliance) -> i64 {
    let mut c = app.pg.database().connect().await.unwrap();
    runs::table.count().get_result(&mut c).await.unwrap()
}

/// Delivery jobs ever enqueued: pending or dead ones, and the uniqueness keys
/// that outlive finished ones.
pub async fn delivery_jobs(app: &Appliance) -> i64 {
    let mut c = app.pg.database().connect().await.unwrap();
    let keys: i64 = job_keys::table.count().get_result(&mut c).await.unwrap();
    let unkeyed: i64 = jobs::table
        .filter(jobs::kind.eq(hangar_db::jobs::JobKind::VcsDelivery.as_str()))
        .filter(jobs::unique_key.is_null())
        .count()
        .get_result(&mut c)
        .await
        .unwrap();
    keys + unkeyed
}

pub async fn delivery_rows(app: &Appliance) -> i64 {
    let mut c = app.pg.database().connect().await.unwrap();
    webhook_deliveries::table.count().get_result(&mut c).await.unwrap()
}

/// Waits until the delivery `id` of `integration` was processed; returns its
/// entry in `webhookDeliveries`.
pub async fn processed(app: &Appliance, token: &str, integration: &str, id: &str) -> Value {
    wait_for(&format!("delivery {id} to be processed"), Duration::from_secs(30), || async {
        let data = app.ok(token, DELIVERIES, json!({ "i": integration })).await;
        data["webhookDeliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["deliveryId"] == id && !d["processedAt"].is_null())
            .cloned()
    })
    .await
}

/// One request the status receiver got.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// An HTTPS server answering GitHub's commit-status API, recording each request.
/// The first `fail_first` requests get 503 (a git server having a bad moment).
pub struct StatusReceiver {
    pub base_url: String,
    pub ca_pem: String,
    pub requests: Arc<Mutex<Vec<StatusRequest>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl StatusReceiver {
    pub async fn start(pki: &std::path::Path, fail_first: usize) -> StatusReceiver {
        let store = CertStore::open_or_create(pki, &CaOptions::default()).unwrap();
        store
            .ensure("status", &LeafRequest::server("status", &["localhost", "127.0.0.1"]), time::Duration::days(1))
            .unwrap();
        let cfg = hangar_certs::tls::server_config(
            hangar_certs::tls::load_certs(&store.cert_path("status")).unwrap(),
            hangar_certs::tls::load_key(&store.key_path("status")).unwrap(),
            hangar_certs::tls::ClientAuth::None,
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<StatusRequest>>> = Arc::default();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, recorded, seen) = (acceptor.clone(), recorded.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (recorded, seen) = (recorded.clone(), seen.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let path = req.uri().path().to_string();
                            let authorization =
                                req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                            let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let status = if n < fail_first {
                                503
                            } else {
                                recorded.lock().unwrap().push(StatusRequest {
                                    path,
                                    authorization,
                                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                                });
                                201
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        StatusReceiver {
            base_url: format!("https://localhost:{port}"),
            ca_pem: std::fs::read_to_string(store.ca_cert_path()).unwrap(),
            requests,
            _task: task,
        }
    }

    /// The `state`s posted for commit `sha`, in order.
    pub fn states_for(&self, sha: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with(&format!("/statuses/{sha}")))
            .map(|r| r.body["state"].as_str().unwrap_or("").to_string())
            .collect()
    }
}
