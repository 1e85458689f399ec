//! The worker protocol against `hangar server` as its own process, on real
//! PostgreSQL and Garage, with real TLS: workers join with CSRs made by
//! `hangar_certs::worker_csr`, then call with the certificate the appliance CA
//! signed and their `hwt_` token. Runs are created and scheduled in the
//! database as the API and the drain do.

mod common;

use std::sync::Arc;

use common::{Appliance, CREATE_STACK, Options, stack_input};
use diesel_async::RunQueryDsl;
use hangar_db::runs::{NewRun, RunRow};
use hangar_testkit::TestDir;
use hangar_types::worker::{
    Changes, Heartbeat, HeartbeatReply, HostInfo, JoinRequest, JoinResponse, PlanStored, RunAssignment, RunStatus,
    StateReport, WorkerStatus,
};
use hangar_types::http::{ErrorBody, ErrorCode};
use hangar_types::{RunKind, RunState};
use serde_json::{Value, json};

const TOOL_BYTES: &[u8] = b"#!/bin/sh\necho 'a stand-in tool binary: only its bytes matter here'\n";
const ZIP_BYTES: &[u8] = b"PK\x03\x04 a tiny provider archive, served as data";

/// An appliance with a tools directory and a provider mirror, a pool
/// `builders` and a stack `net` in it.
struct Env {
    app: Appliance,
    admin: String,
    files: TestDir,
    db: hangar_db::DbPool,
    stack_id: i64,
}

impl Env {
    async fn start() -> Env {
        let files = TestDir::new("worker-files");
        let tools = files.subdir("tools");
        let bin = tools.join("terraform/1.0.3");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("terraform"), TOOL_BYTES).unwrap();
        std::fs::create_dir_all(tools.join("terraform/1.0.4/linux_arm64")).unwrap();
        std::fs::write(tools.join("terraform/1.0.4/linux_arm64/terraform"), b"arm").unwrap();
        std::fs::write(files.path().join("outside"), b"not a tool").unwrap();
        std::fs::create_dir_all(tools.join("terraform/6.6.6")).unwrap();
        std::os::unix::fs::symlink(files.path().join("outside"), tools.join("terraform/6.6.6/terraform")).unwrap();
        let mirror = files.subdir("mirror");
        let provider = mirror.join("registry.terraform.io/hashicorp/null");
        std::fs::create_dir_all(&provider).unwrap();
        std::fs::write(provider.join("terraform-provider-null_3.2.1_linux_amd64.zip"), ZIP_BYTES).unwrap();
        std::fs::write(provider.join("terraform-provider-null_3.2.1_darwin_arm64.zip"), b"PK other").unwrap();
        std::fs::write(provider.join("index.json"), br#"{"versions":{"9.9.9":{}}}"#).unwrap();
        let extra = format!(
            "tools_dir = \"{}\"\nprovider_mirror_dir = \"{}\"\nworker_lease_secs = 60\n",
            tools.display(),
            mirror.display()
        );
        let app = Appliance::start_with(Options { server_extra: extra, ..Options::default() }).await;
        let admin = app.admin_token().await;
        app.ok(&admin, "mutation { createWorkerPool(name: \"builders\") { id } }", json!({})).await;
        app.ok(&admin, "mutation { createWorkerPool(name: \"others\") { id } }", json!({})).await;
        let mut input = stack_input("net", "https://git.invalid/net.git");
        input["tool"] = json!("TERRAFORM");
        input["toolVersion"] = json!("1.0.3");
        input["workerPool"] = json!("builders");
        input["projectRoot"] = json!("infra");
        let stack = app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
        let stack_id: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();
        let db = app.pg.database().pool(Some(8)).unwrap();
        Env { app, admin, files, db, stack_id }
    }

    async fn join_token(&self, pool: &str) -> String {
        let d = self
            .app
            .ok(
                &self.admin,
                "mutation($p: String!) { createJoinToken(pool: $p) { token pool expiresAt } }",
                json!({ "p": pool }),
            )
            .await;
        d["createJoinToken"]["token"].as_str().unwrap().to_string()
    }

    async fn post_join(&self, body: &Value) -> (u16, Value) {
        let r = self.app.client.post(self.app.url("/api/v1/workers/join")).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Joins `pool` as `name`; the worker's key stays here.
    async fn join(&self, pool: &str, name: &str) -> Worker {
        let token = self.join_token(pool).await;
        let (key_pem, csr_pem) = hangar_certs::worker_csr(name).unwrap();
        let (status, body) = self.post_join(&join_body(&token, name, &csr_pem)).await;
        assert_eq!(status, 200, "{body}");
        let resp: JoinResponse = serde_json::from_value(body).unwrap();
        Worker::new(&self.app, resp, &key_pem)
    }

    async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = self.db.get().await.unwrap();
        diesel::sql_query(sql).get_result::<N>(&mut c).await.unwrap().n
    }

    async fn exec(&self, sql: &str) {
        let mut c = self.db.get().await.unwrap();
        diesel::sql_query(sql).execute(&mut c).await.unwrap();
    }

    /// A READY run of `kind` on stack `net`.
    async fn ready_run(&self, kind: RunKind) -> i64 {
        self.ready_run_on(self.stack_id, kind).await
    }

    /// A READY run of `kind` on the stack `stack_id`.
    async fn ready_run_on(&self, stack_id: i64, kind: RunKind) -> i64 {
        let mut c = self.db.get().await.unwrap();
        let run = hangar_db::runs::create(
            &mut c,
            &NewRun {
                stack_id,
                kind,
                commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
                branch: "main".into(),
                command: None,
                triggered_by: "test".into(),
            },
            "test",
        )
        .await
        .unwrap();
        hangar_db::runs::schedule_stack(&mut c, stack_id, "test").await.unwrap();
        let now = hangar_db::runs::get(&mut c, run.id).await.unwrap().unwrap();
        assert_eq!(now.state(), RunState::Ready, "run {} was not scheduled", run.id);
        run.id
    }

    /// Each (worker, run) pair's run is PREPARING and held by that worker.
    async fn held_by(&self, claimed: &[(i64, i64)]) {
        for &(w, r) in claimed {
            let row = self.run(r).await;
            assert_eq!((row.worker_id, row.state()), (Some(w), RunState::Preparing));
        }
    }

    async fn run(&self, id: i64) -> RunRow {
        let mut c = self.db.get().await.unwrap();
        hangar_db::runs::get(&mut c, id).await.unwrap().unwrap()
    }
}

fn join_body(token: &str, name: &str, csr_pem: &str) -> Value {
    serde_json::to_value(JoinRequest {
        token: token.into(),
        name: name.into(),
        csr_pem: csr_pem.into(),
        host: HostInfo { hostname: name.into(), os: "linux".into(), arch: "amd64".into(), version: "test".into() },
    })
    .unwrap()
}

/// A joined worker: an HTTPS client presenting its certificate, and its token.
#[derive(Clone)]
struct Worker {
    id: i64,
    token: String,
    http: reqwest::Client,
    base: String,
    resp: Arc<JoinResponse>,
}

impl Worker {
    fn new(app: &Appliance, resp: JoinResponse, key_pem: &str) -> Worker {
        let id = reqwest::Identity::from_pem(format!("{}{}", resp.certificate_pem, key_pem).as_bytes()).unwrap();
        Worker {
            id: resp.worker_id,
            token: resp.worker_token.clone(),
            http: client(app, Some(id)),
            base: app.url(""),
            resp: Arc::new(resp),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn heartbeat(&self, status: WorkerStatus, run: Option<i64>) -> HeartbeatReply {
        let (s, body) = self.post("/api/v1/worker/heartbeat", serde_json::to_value(Heartbeat { status, run }).unwrap()).await;
        assert_eq!(s, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn claim(&self) -> Option<RunAssignment> {
        let r = self
            .http
            .post(format!("{}/api/v1/worker/claim", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            204 => None,
            200 => Some(r.json().await.unwrap()),
            other => panic!("claim answered {other}: {}", r.text().await.unwrap()),
        }
    }

    async fn report(&self, run: i64, to: RunState, note: &str, changes: Option<Changes>) -> (u16, RunStatus) {
        let body = serde_json::to_value(StateReport { to, note: note.into(), changes, commit_message: None }).unwrap();
        let (s, b) = self.post(&format!("/api/v1/worker/runs/{run}/state"), body).await;
        (s, serde_json::from_value(b.clone()).unwrap_or_else(|_| panic!("{s}: {b}")))
    }
}

fn client(app: &Appliance, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).https_only(true);
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The message of the appliance's error body, whose code must match its status.
fn error_of(body: &Value) -> String {
    let parsed: ErrorBody = serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("not the error body ({e}): {body}"));
    parsed.error.message
}

#[tokio::test]
async fn a_worker_joins_and_calls_with_its_certificate_and_token() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let resp = &w.resp;
    assert_eq!(resp.pool_name, "builders");
    assert!(resp.worker_token.starts_with("hwt_"));
    assert_eq!(resp.ca_pem, std::fs::read_to_string(env.app.ca_path()).unwrap());
    assert_eq!(resp.server_url, env.app.url(""));
    assert!(resp.broker_url.starts_with("mqtts://localhost:"), "{}", resp.broker_url);
    // The CA chose the subject: the worker's tenant, whatever the CSR hinted.
    let info = hangar_certs::inspect_pem(&resp.certificate_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some(format!("worker w{}", w.id).as_str()));
    assert!(!format!("{resp:?}").contains(&resp.worker_token), "the token stays out of Debug");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) AS n FROM workers WHERE id = {} AND token_hash IS NOT NULL AND cert_not_after > now()",
            w.id
        ))
        .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) AS n FROM audit_events WHERE action = 'join_token.create'").await, 1);

    let reply = w.heartbeat(WorkerStatus::Idle, None).await;
    assert_eq!(reply, HeartbeatReply { lease_expires_at: None, run_state: None, drain: false });
    let workers = env.app.ok(&env.admin, "{ workers(pool: \"builders\") { id status } }", json!({})).await;
    assert_eq!(workers["workers"][0]["status"], "idle");
    assert_eq!(w.claim().await.map(|a| a.run_id), None, "nothing is READY yet");
}

#[tokio::test]
async fn joins_are_refused_with_bad_tokens_and_bad_requests_and_create_nothing() {
    let env = Env::start().await;
    let (_, csr) = hangar_certs::worker_csr("host").unwrap();
    let workers = || env.count("SELECT count(*) AS n FROM workers");

    // Garbage and unknown tokens.
    for token in ["", "hjt_nope", "hwt_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "hjt_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let (s, body) = env.post_join(&join_body(token, "host", &csr)).await;
        assert_eq!(s, 401, "{token}: {body}");
        assert!(error_of(&body).contains("join token"), "{body}");
    }
    // Not the protocol's JSON.
    let (s, _) = env.post_join(&json!({ "token": "x" })).await;
    assert_eq!(s, 400);
    let r = env.app.client.post(env.app.url("/api/v1/workers/join")).body("{{{{").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // A garbage CSR and a CSR asking to be a CA are refused, and the token survives them.
    let token = env.join_token("builders").await;
    let (s, body) = env.post_join(&join_body(&token, "host", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")).await;
    assert_eq!(s, 400, "{body}");
    assert!(error_of(&body).contains("CSR"), "{body}");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (s, body) = env.post_join(&join_body(&token, "host", &ca_csr)).await;
    if s == 200 {
        // Signed: then only as the CA's own choice, a client leaf.
        let resp: JoinResponse = serde_json::from_value(body).unwrap();
        let info = hangar_certs::inspect_pem(&resp.certificate_pem).unwrap();
        panic!("a CSR asking for CA status was signed: {info:?}");
    }
    assert_eq!(s, 400, "{body}");
    assert_eq!(workers().await, 0, "a refused join records no worker");
    let (s, body) = env.post_join(&join_body(&token, "host", &csr)).await;
    assert_eq!(s, 200, "the token was not used up by refused joins: {body}");

    // Used.
    let (s, body) = env.post_join(&join_body(&token, "again", &csr)).await;
    assert_eq!(s, 401, "{body}");
    // Expired.
    let expired = env.join_token("builders").await;
    env.exec("UPDATE join_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL").await;
    let (s, _) = env.post_join(&join_body(&expired, "host", &csr)).await;
    assert_eq!(s, 401);
    assert_eq!(workers().await, 1);

    // Two joins with one token: exactly one wins.
    let contested = env.join_token("builders").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url, body) =
            (env.app.client.clone(), env.app.url("/api/v1/workers/join"), join_body(&contested, &format!("racer-{i}"), &csr));
        tasks.push(tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 401, 401, 401, 401, 401, 401, 401]);
    assert_eq!(workers().await, 2);

    // Bad lifetimes and pools for the token itself; only admins make them.
    let (code, _) = env.app.err(Some(&env.admin), "mutation { createJoinToken(pool: \"nope\") { token } }", json!({})).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) =
        env.app.err(Some(&env.admin), "mutation { createJoinToken(pool: \"builders\", ttlMinutes: 0) { token } }", json!({})).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let writer = env.app.user_token(&env.admin, "w@hangar.test", "WRITER").await;
    let (code, _) = env.app.err(Some(&writer), "mutation { createJoinToken(pool: \"builders\") { token } }", json!({})).await;
    assert_eq!(code, "FORBIDDEN");
}

#[tokio::test]
async fn worker_calls_need_the_right_certificate_and_token_of_a_live_worker() {
    let env = Env::start().await;
    let a = env.join("builders", "host-a").await;
    let b = env.join("builders", "host-b").await;
    let hb = json!({ "status": "idle", "run": null });
    let url = env.app.url("/api/v1/worker/heartbeat");

    // No certificate.
    let anonymous = client(&env.app, None);
    let r = anonymous.post(&url).bearer_auth(&a.token).json(&hb).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("client certificate"));
    // No token, a wrong token, another worker's token.
    let r = a.http.post(&url).json(&hb).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for token in ["hwt_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "not-a-token", b.token.as_str()] {
        let r = a.http.post(&url).bearer_auth(token).json(&hb).send().await.unwrap();
        assert_eq!(r.status(), 401, "{token}");
    }
    // A certificate from another CA never gets past TLS.
    let other = TestDir::new("other-ca");
    let foreign = hangar_certs::CertStore::open_or_create(other.path(), &hangar_certs::CaOptions::default()).unwrap();
    let leaf = foreign
        .ca()
        .issue(&hangar_certs::LeafRequest {
            common_name: format!("worker w{}", a.id),
            names: vec![],
            organization: Some(format!("w{}", a.id)),
            usage: hangar_certs::Usage::Client,
            validity: time::Duration::days(1),
        })
        .unwrap();
    let id = reqwest::Identity::from_pem(format!("{}{}", leaf.cert_pem, leaf.key_pem.unwrap()).as_bytes()).unwrap();
    let forged = client(&env.app, Some(id));
    match forged.post(&url).bearer_auth(&a.token).json(&hb).send().await {
        Err(_) => {}
        Ok(r) => assert_eq!(r.status(), 401, "a foreign certificate was accepted"),
    }
    // A certificate of this CA whose serial is not the worker's.
    let pki = hangar_certs::CertStore::open(&env.app.pki).unwrap();
    let twin = pki
        .ca()
        .issue(&hangar_certs::LeafRequest {
            common_name: format!("worker w{}", a.id),
            names: vec![],
            organization: Some(format!("w{}", a.id)),
            usage: hangar_certs::Usage::Client,
            validity: time::Duration::days(1),
        })
        .unwrap();
    let id = reqwest::Identity::from_pem(format!("{}{}", twin.cert_pem, twin.key_pem.unwrap()).as_bytes()).unwrap();
    let r = client(&env.app, Some(id)).post(&url).bearer_auth(&a.token).json(&hb).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not the one recorded"));

    // Revoked.
    assert_eq!(a.post("/api/v1/worker/heartbeat", hb.clone()).await.0, 200);
    env.app.ok(&env.admin, "mutation($id: ID!) { revokeWorker(id: $id) { id } }", json!({ "id": a.id.to_string() })).await;
    let (s, body) = a.post("/api/v1/worker/heartbeat", hb.clone()).await;
    assert_eq!(s, 403);
    assert!(error_of(&body).contains("revoked"));
    // Pool reset.
    assert_eq!(b.post("/api/v1/worker/heartbeat", hb.clone()).await.0, 200);
    env.app.ok(&env.admin, "mutation { resetWorkerPool(name: \"builders\") { generation } }", json!({})).await;
    let (s, body) = b.post("/api/v1/worker/heartbeat", hb.clone()).await;
    assert_eq!(s, 403);
    assert!(error_of(&body).contains("join again"));
    // A certificate past its end (its record says so; TLS checks the certificate itself).
    let c = env.join("builders", "host-c").await;
    assert_eq!(c.post("/api/v1/worker/heartbeat", hb.clone()).await.0, 200);
    env.exec(&format!("UPDATE workers SET cert_not_after = now() - interval '1 minute' WHERE id = {}", c.id)).await;
    let (s, body) = c.post("/api/v1/worker/heartbeat", hb.clone()).await;
    assert_eq!(s, 401);
    assert!(error_of(&body).contains("expired"));
    // Unknown calls under the prefix.
    let d = env.join("builders", "host-d").await;
    let (s, body) = d.call(reqwest::Method::GET, "/api/v1/worker/nothing", None).await;
    assert_eq!(s, 404);
    assert_eq!(serde_json::from_value::<ErrorBody>(body.clone()).unwrap().error.code, ErrorCode::NotFound, "{body}");
    assert_eq!(d.call(reqwest::Method::GET, "/api/v1/worker/claim", None).await.0, 404);
}

#[tokio::test]
async fn a_claim_hands_over_everything_the_run_needs() {
    let env = Env::start().await;
    let q = "mutation($c: String!, $n: String!, $v: String!, $s: Boolean) { setContextVariable(context: $c, name: $n, value: $v, secret: $s) { name } }";
    env.app.ok(&env.admin, "mutation { createContext(slug: \"shared\", name: \"Shared\") { slug } }", json!({})).await;
    env.app.ok(&env.admin, q, json!({ "c": "shared", "n": "TF_VAR_region", "v": "north", "s": false })).await;
    env.app.ok(&env.admin, q, json!({ "c": "shared", "n": "TF_VAR_password", "v": "s3cret-ctx", "s": true })).await;
    env.app.ok(&env.admin, q, json!({ "c": "shared", "n": "TF_VAR_greeting", "v": "from context", "s": false })).await;
    env.app
        .ok(&env.admin, "mutation { attachContext(stack: \"net\", context: \"shared\") { slug } }", json!({}))
        .await;
    env.app
        .ok(
            &env.admin,
            "mutation { setStackVariable(stack: \"net\", name: \"TF_VAR_greeting\", value: \"from stack\") { name } }",
            json!({}),
        )
        .await;
    let w = env.join("builders", "host-a").await;
    let other = env.join("others", "host-o").await;
    let run = env.ready_run(RunKind::Tracked).await;
    assert!(other.claim().await.is_none(), "a worker of another pool takes nothing");
    let a = w.claim().await.expect("the READY run");
    assert_eq!(a.run_id, run);
    assert_eq!(a.kind, RunKind::Tracked);
    assert_eq!((a.stack.slug.as_str(), a.stack.project_root.as_str()), ("net", "infra"));
    assert_eq!(a.stack.repository, "https://git.invalid/net.git");
    assert_eq!(a.commit_sha, "0123456789abcdef0123456789abcdef01234567");
    let base = env.app.url("");
    assert_eq!(a.state_url, format!("{base}/state/v1/net"));
    assert_eq!(a.provider_mirror_url, format!("{base}/v1/providers/"));
    assert_eq!(a.tool.url, format!("{base}/v1/tools/terraform/1.0.3/linux_amd64"));
    assert_eq!(a.tool.sha256, sha256_hex(TOOL_BYTES));
    assert!(a.run_token.starts_with("hrt_"));
    assert!(!a.autodeploy);
    let env_vars: Vec<(String, String, bool)> = a.env.iter().map(|e| (e.name.clone(), e.value.clone(), e.secret)).collect();
    assert_eq!(
        env_vars,
        vec![
            ("TF_VAR_greeting".into(), "from stack".into(), false),
            ("TF_VAR_password".into(), "s3cret-ctx".into(), true),
            ("TF_VAR_region".into(), "north".into(), false),
        ]
    );
    assert!(!format!("{a:?}").contains("s3cret-ctx") && !format!("{a:?}").contains(&a.run_token));

    let row = env.run(run).await;
    assert_eq!(row.state(), RunState::Preparing);
    assert_eq!(row.worker_id, Some(w.id));
    assert!(row.lease_expires_at.is_some());
    // The broker tells only workers not marked busy of new work: a claim that
    // hands over a run marks its worker busy, one that finds nothing idle.
    let busy = |id: i64| format!("SELECT count(*) AS n FROM workers WHERE id = {id} AND status = 'busy'");
    assert_eq!(env.count(&busy(w.id)).await, 1, "the claimer is busy");
    assert_eq!(env.count(&busy(other.id)).await, 0, "the worker that got nothing is not");
    assert!(w.claim().await.is_none(), "nothing else is READY");
    assert_eq!(env.count(&format!("SELECT count(*) AS n FROM workers WHERE id = {} AND status = 'idle'", w.id)).await, 1);

    // A stack whose tool is not on the appliance: its run fails with the reason.
    env.app
        .ok(&env.admin, "mutation { updateStack(slug: \"net\", input: { toolVersion: \"9.9.9\" }) { slug } }", json!({}))
        .await;
    let (s, _) = w.report(run, RunState::Failed, "stopping here", None).await;
    assert_eq!(s, 200);
    let doomed = env.ready_run(RunKind::Proposed).await;
    assert!(w.claim().await.is_none());
    let row = env.run(doomed).await;
    assert_eq!(row.state(), RunState::Failed);
    assert!(row.failure_reason.unwrap().contains("terraform 9.9.9"), "the reason names the tool");
}

#[tokio::test]
async fn heartbeats_renew_the_lease_and_carry_the_drain_flag() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let run = env.ready_run(RunKind::Tracked).await;
    let a = w.claim().await.unwrap();
    let first = env.run(run).await.lease_expires_at.unwrap();
    env.exec(&format!("UPDATE runs SET lease_expires_at = now() + interval '5 seconds' WHERE id = {run}")).await;
    let reply = w.heartbeat(WorkerStatus::Busy, Some(a.run_id)).await;
    assert_eq!(reply.run_state, Some(RunState::Preparing));
    let renewed = env.run(run).await.lease_expires_at.unwrap();
    assert!(renewed >= first, "the lease was renewed: {renewed} < {first}");
    assert_eq!(reply.lease_expires_at.as_deref().map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap()), Some(renewed.into()));
    let busy = env.app.ok(&env.admin, "{ workers(pool: \"builders\") { status } }", json!({})).await;
    assert_eq!(busy["workers"][0]["status"], "busy");

    // Another worker's run is not renewed, nor shown.
    let o = env.join("builders", "host-o").await;
    let reply = o.heartbeat(WorkerStatus::Idle, Some(run)).await;
    assert_eq!((reply.lease_expires_at, reply.run_state), (None, None));

    // A run that ended (canceled, reaped) is shown as such, with no lease.
    env.exec(&format!("UPDATE runs SET state = 'FAILED', lease_expires_at = NULL WHERE id = {run}")).await;
    let reply = w.heartbeat(WorkerStatus::Busy, Some(run)).await;
    assert_eq!((reply.lease_expires_at, reply.run_state), (None, Some(RunState::Failed)));

    // Drained by the operator: the flag, the status, and no claims.
    let wid = w.id.to_string();
    let d = env.app.ok(&env.admin, "mutation($id: ID!) { drainWorker(id: $id) { status } }", json!({ "id": wid })).await;
    assert_eq!(d["drainWorker"]["status"], "drained");
    let next = env.ready_run(RunKind::Proposed).await;
    let reply = w.heartbeat(WorkerStatus::Idle, None).await;
    assert!(reply.drain);
    let status = env.app.ok(&env.admin, "{ workers(pool: \"builders\") { id status } }", json!({})).await;
    let mine = status["workers"].as_array().unwrap().iter().find(|x| x["id"] == wid.as_str()).unwrap().clone();
    assert_eq!(mine["status"], "drained");
    assert!(w.claim().await.is_none(), "a drained worker claims nothing");
    env.app.ok(&env.admin, "mutation($id: ID!) { undrainWorker(id: $id) { status } }", json!({ "id": wid })).await;
    assert!(!w.heartbeat(WorkerStatus::Idle, None).await.drain);
    assert_eq!(w.claim().await.map(|a| a.run_id), Some(next));
}

/// Every worker claims at once, each again until it gets nothing; the
/// (worker, run) pairs handed out.
async fn race(workers: Vec<Worker>) -> Vec<(i64, i64)> {
    let mut tasks = Vec::new();
    for w in workers {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(a) = w.claim().await {
                got.push((w.id, a.run_id));
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed
}

#[tokio::test]
async fn concurrent_claimers_each_get_a_different_run() {
    let env = Env::start().await;
    let mut workers = Vec::new();
    for i in 0..20 {
        workers.push(env.join("builders", &format!("racer-{i}")).await);
    }
    // Proposed runs: all READY at once (they do not hold the stack).
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(env.ready_run(RunKind::Proposed).await);
    }
    let claimed = race(workers).await;
    let mut ids: Vec<i64> = claimed.iter().map(|(_, r)| *r).collect();
    ids.sort();
    assert_eq!(ids, runs, "each run claimed exactly once: {claimed:?}");
    env.held_by(&claimed).await;
    assert_eq!(
        env.count("SELECT count(*) AS n FROM run_events WHERE to_state = 'PREPARING'").await,
        5,
        "one PREPARING event per run"
    );
}

/// Several workers' claims taken together (what the server's claim desk
/// does in a burst): the oldest READY runs go to the first claimants, one
/// each, skipping a run another transaction is claiming; the claimants left
/// over get none. Each run is written with its worker, lease and token, its
/// worker is busy, and it has one event naming the worker.
#[tokio::test]
async fn a_batch_of_claimants_takes_the_oldest_runs_once_each() {
    use diesel_async::AsyncConnection;
    let env = Env::start().await;
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(env.join("builders", &format!("batch-{i}")).await);
    }
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(env.ready_run(RunKind::Proposed).await);
    }
    let pool: i64 = env.count(&format!("SELECT worker_pool_id AS n FROM stacks WHERE id = {}", env.stack_id)).await;
    let lease = chrono::Utc::now() + chrono::Duration::minutes(5);
    let tokens: Vec<_> = workers.iter().map(|_| hangar_store::run_tokens::fresh()).collect();
    let claimants: Vec<hangar_db::runs::Claimant> = workers
        .iter()
        .zip(&tokens)
        .map(|(w, t)| hangar_db::runs::Claimant { worker: w.id, token_id: &t.id, token_hash: &t.hash })
        .collect();

    // Another claimer holds the oldest run.
    let mut other = env.db.get().await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut other).await.unwrap();
    diesel::sql_query(format!("SELECT id FROM runs WHERE id = {} FOR UPDATE", runs[0])).execute(&mut other).await.unwrap();

    let mut c = env.db.get().await.unwrap();
    let claimed = c
        .transaction::<_, hangar_db::DbError, _>(async |c| hangar_db::runs::claim_ready_many(c, pool, lease, &claimants).await)
        .await
        .unwrap();
    let got: Vec<(usize, i64)> = claimed.iter().map(|(i, r)| (*i, r.id)).collect();
    assert_eq!(got, vec![(0, runs[1]), (1, runs[2])], "the two runs not held, oldest first, to the first two claimants");
    for (i, run) in &claimed {
        assert_eq!((run.state(), run.worker_id), (RunState::Preparing, Some(workers[*i].id)));
        assert_eq!(run.lease_expires_at.map(|l| l.timestamp()), Some(lease.timestamp()));
        let token = hangar_store::run_tokens::holder(&mut c, tokens[*i].token.expose()).await.unwrap().expect("the token opens its run");
        assert_eq!(token.run_id, run.id);
        let events = format!(
            "SELECT count(*) AS n FROM run_events WHERE run_id = {} AND from_state = 'READY' AND to_state = 'PREPARING' \
             AND cause = 'claimed by worker {w}' AND actor = 'worker:{w}'",
            run.id,
            w = workers[*i].id
        );
        assert_eq!(env.count(&events).await, 1);
    }
    let busy: Vec<i64> = workers.iter().map(|w| w.id).collect();
    assert_eq!(
        env.count(&format!("SELECT count(*) AS n FROM workers WHERE status = 'busy' AND id IN ({}, {})", busy[0], busy[1])).await,
        2
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) AS n FROM workers WHERE status = 'busy' AND id IN ({}, {})", busy[2], busy[3])).await,
        0,
        "the claimants that got nothing are not busy"
    );

    // Let go, the oldest run goes to the next batch; then there is nothing.
    diesel::sql_query("COMMIT").execute(&mut other).await.unwrap();
    let rest = c
        .transaction::<_, hangar_db::DbError, _>(async |c| hangar_db::runs::claim_ready_many(c, pool, lease, &claimants[2..]).await)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|(i, r)| (*i, r.id)).collect::<Vec<_>>(), vec![(0, runs[0])]);
    assert_eq!(env.run(runs[0]).await.worker_id, Some(workers[2].id));
    let none = c
        .transaction::<_, hangar_db::DbError, _>(async |c| hangar_db::runs::claim_ready_many(c, pool, lease, &claimants[3..]).await)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(env.count("SELECT count(*) AS n FROM run_events WHERE to_state = 'PREPARING'").await, 3);
}

/// A burst of claims in which one run cannot be handed out (its stack's tool
/// is not on the appliance): that run is failed with the reason, and every
/// other run is still claimed exactly once.
#[tokio::test]
async fn a_burst_of_claims_with_an_unrunnable_run_fails_only_that_run() {
    let env = Env::start().await;
    let mut input = stack_input("doomed", "https://git.invalid/doomed.git");
    input["tool"] = json!("TERRAFORM");
    input["toolVersion"] = json!("9.9.9");
    input["workerPool"] = json!("builders");
    let stack = env.app.ok(&env.admin, CREATE_STACK, json!({ "i": input })).await;
    let doomed_stack: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();
    let mut workers = Vec::new();
    for i in 0..12 {
        workers.push(env.join("builders", &format!("burst-{i}")).await);
    }
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(env.ready_run(RunKind::Proposed).await);
    }
    let doomed = env.ready_run_on(doomed_stack, RunKind::Proposed).await;
    for _ in 0..4 {
        runs.push(env.ready_run(RunKind::Proposed).await);
    }
    let claimed = race(workers).await;
    let mut ids: Vec<i64> = claimed.iter().map(|(_, r)| *r).collect();
    ids.sort();
    assert_eq!(ids, runs, "each runnable run claimed exactly once: {claimed:?}");
    let row = env.run(doomed).await;
    assert_eq!((row.state(), row.worker_id), (RunState::Failed, None));
    assert!(row.failure_reason.unwrap().contains("terraform 9.9.9 for linux_amd64 is not on the appliance"));
    env.held_by(&claimed).await;
    assert_eq!(env.count("SELECT count(*) AS n FROM run_events WHERE to_state = 'PREPARING'").await, 8);
}

#[tokio::test]
async fn state_reports_follow_the_table_and_only_the_holder_makes_them() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let o = env.join("builders", "host-o").await;
    let run = env.ready_run(RunKind::Tracked).await;
    let a = w.claim().await.unwrap();

    // The claim already moved it to PREPARING: a repeated report gets 409 with that state.
    let (s, st) = w.report(run, RunState::Preparing, "", None).await;
    assert_eq!((s, st.state), (409, RunState::Preparing));
    // The commit's message comes with INITIALIZING: its first line is kept,
    // bounded and without control characters, whatever the worker sent.
    let message = format!("\n  <script>alert(1)</script> fix\u{1b}[31m the\u{7} VPC {}\nsecond line", "é".repeat(2000));
    let report = json!({ "to": "INITIALIZING", "note": "init", "changes": null, "commit_message": message });
    let (s, body) = w.post(&format!("/api/v1/worker/runs/{run}/state"), report).await;
    assert_eq!(s, 200, "{body}");
    let stored = env.run(run).await.commit_message.expect("the commit message is stored");
    assert!(stored.starts_with("<script>alert(1)</script> fix[31m the VPC éé"), "{stored}");
    assert_eq!(stored.chars().count(), hangar_types::worker::MAX_COMMIT_MESSAGE_CHARS);
    let api = env.app.ok(&env.admin, "query($id: ID!) { run(id: $id) { commitMessage } }", json!({ "id": run.to_string() })).await;
    assert_eq!(api["run"]["commitMessage"].as_str(), Some(stored.as_str()));
    // Another worker can neither report nor read it.
    let (s, body) = o.post(&format!("/api/v1/worker/runs/{run}/state"), json!({ "to": "PLANNING", "note": "", "changes": null })).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(o.call(reqwest::Method::GET, &format!("/api/v1/worker/runs/{run}"), None).await.0, 403);
    assert_eq!(o.call(reqwest::Method::GET, "/api/v1/worker/runs/999999", None).await.0, 403);
    assert_eq!(w.call(reqwest::Method::GET, "/api/v1/worker/runs/-1", None).await.0, 400);
    // Illegal moves: skipping states, the operator's states.
    for to in [RunState::Applying, RunState::Finished, RunState::Queued, RunState::Confirmed, RunState::Canceled] {
        let (s, st) = w.report(run, to, "", None).await;
        assert_eq!((s, st.state), (409, RunState::Initializing), "{to}");
    }
    // Malformed reports.
    let (s, _) = w.post(&format!("/api/v1/worker/runs/{run}/state"), json!({ "to": "DONE", "note": "" })).await;
    assert_eq!(s, 400);

    assert_eq!(w.report(run, RunState::Planning, "plan", None).await.0, 200);
    let changes = Changes { add: 2, change: 1, destroy: 0, outputs: 3 };
    // Not confirmed and no autodeploy: applying straight away is refused.
    assert_eq!(w.report(run, RunState::Applying, "", Some(changes)).await.1.state, RunState::Planning);
    let (s, st) = w.report(run, RunState::Unconfirmed, "2 to add", Some(changes)).await;
    assert_eq!((s, st.state), (200, RunState::Unconfirmed));
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        changes: Value,
    }
    let mut c = env.db.get().await.unwrap();
    let stored: Stored = diesel::sql_query(format!("SELECT changes FROM runs WHERE id = {run}")).get_result(&mut c).await.unwrap();
    assert_eq!(serde_json::from_value::<Changes>(stored.changes).unwrap(), changes);
    // UNCONFIRMED waits for a human.
    assert_eq!(w.report(run, RunState::Applying, "", None).await.0, 409);
    env.app.ok(&env.admin, "mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": run.to_string() })).await;
    let (s, body) = w.call(reqwest::Method::GET, &format!("/api/v1/worker/runs/{run}"), None).await;
    assert_eq!((s, body["state"].as_str()), (200, Some("CONFIRMED")));
    assert_eq!(w.report(run, RunState::Applying, "apply", None).await.0, 200);
    assert_eq!(w.report(run, RunState::Finished, "done", None).await.0, 200);
    let row = env.run(run).await;
    assert_eq!((row.state(), row.lease_expires_at), (RunState::Finished, None));
    // Over: the run token is dead, further reports refused.
    let r = w.http.get(env.app.url("/v1/providers/registry.terraform.io/hashicorp/null/index.json")).bearer_auth(&a.run_token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(w.report(run, RunState::Failed, "late", None).await.1.state, RunState::Finished);

    // FAILED keeps the note as the reason; proposed runs never apply.
    let proposed = env.ready_run(RunKind::Proposed).await;
    w.claim().await.unwrap();
    assert_eq!(w.report(proposed, RunState::Initializing, "", None).await.0, 200);
    assert_eq!(w.report(proposed, RunState::Planning, "", None).await.0, 200);
    assert_eq!(w.report(proposed, RunState::Unconfirmed, "", None).await.0, 409);
    assert_eq!(w.report(proposed, RunState::Applying, "", None).await.0, 409);
    let (s, st) = w.report(proposed, RunState::Failed, "terraform plan exited with 1: Error: boom", None).await;
    assert_eq!((s, st.state), (200, RunState::Failed));
    assert_eq!(st.failure_reason.as_deref(), Some("terraform plan exited with 1: Error: boom"));

    // Autodeploy: PLANNING → APPLYING without a human.
    env.app.ok(&env.admin, "mutation { updateStack(slug: \"net\", input: { autodeploy: true }) { slug } }", json!({})).await;
    let auto = env.ready_run(RunKind::Tracked).await;
    assert!(w.claim().await.unwrap().autodeploy);
    for to in [RunState::Initializing, RunState::Planning, RunState::Applying, RunState::Finished] {
        assert_eq!(w.report(auto, to, "", None).await.0, 200, "{to}");
    }
}

#[tokio::test]
async fn plans_and_errored_state_are_stored_sealed() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let o = env.join("builders", "host-o").await;
    let run = env.ready_run(RunKind::Tracked).await;
    w.claim().await.unwrap();
    let plan = b"a saved plan, as terraform wrote it: var.password = hunter2-in-plan".to_vec();
    let send_plan = |who: &Worker, body: Vec<u8>| {
        let req = who.http.post(format!("{}/api/v1/worker/runs/{run}/plan", who.base)).bearer_auth(&who.token).body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let get_plan = |who: &Worker| {
        let req = who.http.get(format!("{}/api/v1/worker/runs/{run}/plan", who.base)).bearer_auth(&who.token);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(get_plan(&w).await.0, 404, "no plan stored yet");
    let (s, body) = send_plan(&w, plan.clone()).await;
    assert_eq!(s, 200, "{body}");
    let stored: PlanStored = serde_json::from_value(body).unwrap();
    assert_eq!(stored, PlanStored { size: plan.len() as u64, sha256: sha256_hex(&plan) });
    // What lies in the bucket is sealed: neither the plan nor its secret.
    let object_key = format!("runs/{run}/plan.sealed");
    let in_bucket = object(&env, &object_key).await;
    assert!(in_bucket.len() > plan.len());
    assert!(!in_bucket.windows(b"hunter2".len()).any(|w| w == b"hunter2"), "plan stored in clear");
    assert!(!in_bucket.windows(b"a saved plan".len()).any(|w| w == b"a saved plan"), "plan stored in clear");
    // The holder gets it back opened; nobody else gets it at all.
    assert_eq!(get_plan(&w).await, (200, plan.clone()));
    assert_eq!(get_plan(&o).await.0, 403);
    assert_eq!(send_plan(&o, b"another worker's plan".to_vec()).await.0, 403);
    assert_eq!(get_plan(&w).await.1, plan, "a refused upload changes nothing");
    let (s, body) = send_plan(&w, Vec::new()).await;
    assert_eq!((s, error_of(&body).contains("empty")), (400, true), "{body}");
    let too_big = vec![b'p'; hangar_types::worker::MAX_PLAN_BYTES as usize + 1];
    let (s, body) = send_plan(&w, too_big).await;
    assert_eq!(s, 413, "{body}");
    assert!(error_of(&body).contains(&hangar_types::worker::MAX_PLAN_BYTES.to_string()), "{body}");
    assert_eq!(get_plan(&w).await.1, plan, "an oversize upload changes nothing");
    // Log chunks: the holder's are taken (and a resend of the same chunk too).
    let chunk = |who: &Worker, path: String, body: &'static [u8]| {
        let req = who.http.post(format!("{}{path}", who.base)).bearer_auth(&who.token).body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let logs = format!("/api/v1/worker/runs/{run}/logs");
    assert_eq!(chunk(&w, format!("{logs}/planning/0"), b"Plan: 1 to add\n").await, 204);
    assert_eq!(chunk(&w, format!("{logs}/planning/0"), b"Plan: 1 to add\n").await, 204);
    assert_eq!(chunk(&w, format!("{logs}/compiling/0"), b"x").await, 400);
    assert_eq!(chunk(&w, format!("{logs}/planning/minus-one"), b"x").await, 400);
    assert_eq!(chunk(&o, format!("{logs}/planning/1"), b"x").await, 403);

    let state = br#"{"version":4,"serial":3,"outputs":{"password":{"value":"hunter2-in-state"}}}"#.to_vec();
    let post_state = |who: &Worker, body: Vec<u8>| {
        let req = who.http.post(format!("{}/api/v1/worker/runs/{run}/errored-state", who.base)).bearer_auth(&who.token).body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post_state(&o, state.clone()).await, 403);
    assert_eq!(post_state(&w, Vec::new()).await, 400);
    assert_eq!(post_state(&w, state.clone()).await, 204);
    #[derive(diesel::QueryableByName)]
    struct Keys {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        plan_key: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        errored_state_key: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        errored_state_data_key: Option<i64>,
    }
    let mut c = env.db.get().await.unwrap();
    let keys: Keys = diesel::sql_query(format!(
        "SELECT plan_key, errored_state_key, errored_state_data_key FROM runs WHERE id = {run}"
    ))
    .get_result(&mut c)
    .await
    .unwrap();
    assert_eq!(keys.plan_key.as_deref(), Some(object_key.as_str()));
    let key = keys.errored_state_key.expect("stored");
    assert!(keys.errored_state_data_key.is_some());
    // What lies in the bucket is sealed: the state's secret is not in it.
    let stored = object(&env, &key).await;
    assert!(!stored.is_empty());
    assert!(!stored.windows(b"hunter2".len()).any(|w| w == b"hunter2"), "errored state stored in clear");
    // Once the run is over its plan is no longer handed out.
    assert_eq!(w.report(run, RunState::Failed, "done", None).await.0, 200);
    assert_eq!(get_plan(&w).await.0, 403);
    // A plan object copied under another run's key does not open there.
    let run2 = env.ready_run(RunKind::Tracked).await;
    let w2 = env.join("builders", "host-b").await;
    assert_eq!(w2.claim().await.unwrap().run_id, run2);
    env.app.garage.bucket().put_object(format!("runs/{run2}/plan.sealed"), &in_bucket).await.unwrap();
    env.exec(&format!("UPDATE runs SET plan_key = 'runs/{run2}/plan.sealed' WHERE id = {run2}")).await;
    let r = w2.http.get(format!("{}/api/v1/worker/runs/{run2}/plan", w2.base)).bearer_auth(&w2.token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert!(!r.text().await.unwrap().contains("hunter2"));
}

#[tokio::test]
async fn log_chunk_paths_with_hostile_phases_or_numbers_are_refused_with_a_reason() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let run = env.ready_run(RunKind::Tracked).await;
    w.claim().await.unwrap();
    let send = |tail: &str| {
        let req = w
            .http
            .post(format!("{}/api/v1/worker/runs/{run}/logs/{tail}", w.base))
            .bearer_auth(&w.token)
            .body(b"output\n".to_vec());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (tail, says) in [
        ("planning/+7", "chunk number"),
        ("planning/-1", "chunk number"),
        ("planning/%2B1", "chunk number"),
        ("planning/%201", "chunk number"),
        ("planning/0x10", "chunk number"),
        ("planning/1e3", "chunk number"),
        ("planning/1000000", "chunk number"),
        ("planning/18446744073709551616", "chunk number"),
        ("planning/%EF%BC%91", "chunk number"),
        ("Planning/0", "phase"),
        ("PLANNING/0", "phase"),
        ("planning%20/0", "phase"),
        ("%22planning%22/0", "phase"),
        ("plan/0", "phase"),
    ] {
        let (status, body) = send(tail).await;
        assert_eq!(status, 400, "{tail}: {body}");
        assert!(error_of(&body).contains(says), "{tail}: {body}");
    }
    assert_eq!(env.count(&format!("SELECT count(*) AS n FROM run_log_chunks WHERE run_id = {run}")).await, 0);
    // The largest number there is, and the smallest, are taken.
    assert_eq!(send("planning/999999").await.0, 204);
    assert_eq!(send("planning/0").await.0, 204);
    assert_eq!(env.count(&format!("SELECT count(*) AS n FROM run_log_chunks WHERE run_id = {run}")).await, 2);
}

/// An object straight from Garage (its plain S3 port, the test's own credentials).
async fn object(env: &Env, key: &str) -> Vec<u8> {
    env.app.garage.bucket().get_object(key).await.unwrap().bytes().to_vec()
}

#[tokio::test]
async fn tools_are_served_to_workers_with_their_hash_and_nothing_else() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    let get = |path: &str, auth: bool| {
        let mut req = w.http.get(env.app.url(path));
        if auth {
            req = req.bearer_auth(&w.token);
        }
        async move { req.send().await.unwrap() }
    };
    let r = get("/v1/tools/terraform/1.0.3/linux_amd64", true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hangar-sha256"].to_str().unwrap(), sha256_hex(TOOL_BYTES));
    assert_eq!(r.bytes().await.unwrap().as_ref(), TOOL_BYTES);
    let r = get("/v1/tools/terraform/1.0.4/linux_arm64", true).await;
    assert_eq!((r.status().as_u16(), r.bytes().await.unwrap().as_ref()), (200, b"arm".as_ref()));
    // A binary of many chunks arrives whole, with its length announced.
    let big: Vec<u8> = (0..(3 * 1024 * 1024 + 7)).map(|i: u32| (i % 253) as u8).collect();
    std::fs::create_dir_all(env.files.path().join("tools/terraform/1.0.5")).unwrap();
    std::fs::write(env.files.path().join("tools/terraform/1.0.5/terraform"), &big).unwrap();
    let r = get("/v1/tools/terraform/1.0.5/linux_amd64", true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), big.len().to_string());
    assert_eq!(r.headers()["x-hangar-sha256"].to_str().unwrap(), sha256_hex(&big));
    assert!(r.bytes().await.unwrap().as_ref() == big.as_slice(), "the streamed binary differs");
    let head = w.http.head(env.app.url("/v1/tools/terraform/1.0.3/linux_amd64")).bearer_auth(&w.token).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), TOOL_BYTES.len().to_string());
    assert_eq!(head.headers()["x-hangar-sha256"].to_str().unwrap(), sha256_hex(TOOL_BYTES));
    assert!(head.bytes().await.unwrap().is_empty());

    assert_eq!(get("/v1/tools/terraform/1.0.3/linux_amd64", false).await.status(), 401);
    let anonymous = client(&env.app, None);
    assert_eq!(anonymous.get(env.app.url("/v1/tools/terraform/1.0.3/linux_amd64")).send().await.unwrap().status(), 401);
    for path in [
        "/v1/tools/terraform/1.0.4/linux_amd64",
        "/v1/tools/terraform/9.9.9/linux_amd64",
        "/v1/tools/terraform/1.0.3/darwin_arm64",
        "/v1/tools/opentofu/1.0.3/linux_amd64",
        "/v1/tools/bash/1.0.3/linux_amd64",
        "/v1/tools/terraform/1.0.3",
        "/v1/tools/terraform/1.0.3/linux_amd64/extra",
        "/v1/tools/terraform/..%2F..%2F..%2Fetc/linux_amd64",
        "/v1/tools/terraform/1.0.3%2F..%2F..%2F..%2Foutside/linux_amd64",
        "/v1/tools/..%2F..%2Foutside/1.0.3/linux_amd64",
        "/v1/tools/terraform/1.0.3/..%2F..%2F_x",
        // A symbolic link out of the tools directory.
        "/v1/tools/terraform/6.6.6/linux_amd64",
    ] {
        let r = get(path, true).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("not a tool"), "{path}");
    }
    let _ = &env.files;
}

#[tokio::test]
async fn the_provider_mirror_speaks_terraforms_protocol_to_runs() {
    let env = Env::start().await;
    let w = env.join("builders", "host-a").await;
    env.ready_run(RunKind::Tracked).await;
    let a = w.claim().await.unwrap();
    let anonymous = client(&env.app, None);
    let get = |path: &str, token: Option<&str>| {
        let mut req = anonymous.get(format!("{}{path}", a.provider_mirror_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    let base = "registry.terraform.io/hashicorp/null";
    let r = get(&format!("{base}/index.json"), Some(&a.run_token)).await;
    assert_eq!(r.status(), 200);
    // Made from the archives, not from the JSON lying next to them.
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "versions": { "3.2.1": {} } }));
    let r = get(&format!("{base}/3.2.1.json"), Some(&a.run_token)).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    // Terraform downloads archives with no credentials: their URLs carry the
    // run's token.
    let archive = "terraform-provider-null_3.2.1_linux_amd64.zip";
    assert_eq!(
        doc["archives"]["linux_amd64"],
        json!({ "url": format!("{archive}?token={}", a.run_token), "hashes": [format!("zh:{}", sha256_hex(ZIP_BYTES))] })
    );
    assert_eq!(doc["archives"]["darwin_arm64"]["url"], format!("terraform-provider-null_3.2.1_darwin_arm64.zip?token={}", a.run_token));
    for (path, token) in [(format!("{base}/{archive}"), Some(a.run_token.as_str())), (format!("{base}/{archive}?token={}", a.run_token), None)] {
        let r = get(&path, token).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"].to_str().unwrap(), "application/zip");
        assert_eq!(r.headers()["content-length"].to_str().unwrap(), ZIP_BYTES.len().to_string());
        assert_eq!(r.bytes().await.unwrap().as_ref(), ZIP_BYTES);
    }

    for (path, token, status) in [
        (format!("{base}/index.json"), None, 401),
        (format!("{base}/index.json"), Some("hrt_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), 401),
        (format!("{base}/index.json"), Some(w.token.as_str()), 401),
        // A token in the query opens archives only, and only a live run's.
        (format!("{base}/index.json?token={}", a.run_token), None, 401),
        (format!("{base}/{archive}"), None, 401),
        (format!("{base}/{archive}?token=hrt_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), None, 401),
        (format!("{base}/{archive}?token={}", w.token), None, 401),
        ("registry.terraform.io/hashicorp/random/index.json".to_string(), Some(a.run_token.as_str()), 404),
        (format!("{base}/9.9.9.json"), Some(a.run_token.as_str()), 404),
        (format!("{base}/..%2F..%2F..%2F..%2Foutside"), Some(a.run_token.as_str()), 404),
        (format!("{base}/index.json/extra"), Some(a.run_token.as_str()), 404),
    ] {
        assert_eq!(get(&path, token).await.status(), status, "{path} with {token:?}");
    }
}

#[tokio::test]
async fn hangar_admin_create_join_token_prints_the_token_alone() {
    let env = Env::start().await;
    let o = env.app.hangar(&["admin", "create-join-token", "--pool", "builders", "--ttl-minutes", "5"], None);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let token = common::stdout(&o);
    let token = token.strip_suffix('\n').unwrap();
    assert!(token.starts_with("hjt_") && !token.contains(char::is_whitespace), "{token:?}");
    let (_, csr) = hangar_certs::worker_csr("cli").unwrap();
    assert_eq!(env.post_join(&join_body(token, "cli", &csr)).await.0, 200);
    assert_eq!(env.count("SELECT count(*) AS n FROM audit_events WHERE action = 'join_token.create' AND actor LIKE 'hangar admin%'").await, 1);

    let o = env.app.hangar(&["admin", "create-join-token", "--pool", "nope"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("worker pool nope does not exist"), "{}", common::stderr(&o));
    let o = env.app.hangar(&["admin", "create-join-token", "--pool", "builders", "--ttl-minutes", "0"], None);
    assert_eq!(o.status.code(), Some(1));
    let o = env.app.hangar(&["admin", "create-join-token"], None);
    assert_eq!(o.status.code(), Some(2));
}
