//! `hangar-worker run` as a separate process against the real MQTT broker
//! (hangar-broker on a real PostgreSQL, the worker admitted by its client
//! certificate and token), a real git server and the genuine Terraform 1.0.3.
//! The worker API and the HTTP state backend are served by a stand-in that
//! speaks the protocol of `hangar_types::worker` over mTLS; it keeps the run
//! states by the one transition table and can go down on demand, answer 503s,
//! slow state writes, flip the drain flag and confirm runs while the worker
//! cannot hear — what the worker's own behaviour hangs on, shown here without
//! the appliance. The real appliance's runs (lost workers, restarts, network
//! cuts, a network namespace) are tested in the server's `worker_failures`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_broker::{Broker, BrokerHandle};
use hangar_config::{BrokerConfig, BrokerLimits};
use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
use hangar_testkit::{ChildProcess, GitServer, PgServer, TestDir, wait_for};
use hangar_types::worker::{
    EnvVar, Heartbeat, HeartbeatReply, Notification, PlanStored, RunAssignment, RunStatus,
    StackSpec, StateReport, ToolSpec, WorkerRoute, WorkerStatus,
};
use hangar_types::http::{ErrorBody, ErrorCode};
use hangar_types::{RunKind, RunState, Tool};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use nix::sys::signal::Signal;

const SECRET: &str = "agent-secret-value-9f2c";
const SOON: Duration = Duration::from_secs(120);

const CONFIG: &str = r#"
variable "greeting" {
  type    = string
  default = "hello"
}

variable "secret" {
  type    = string
  default = ""
}

output "message" {
  value = "${var.greeting} world"
}

output "secret_length" {
  value = length(var.secret)
}
"#;

/// What the stand-in appliance knows.
#[derive(Default)]
struct Appliance {
    worker_token: String,
    tool: Vec<u8>,
    tool_gets: AtomicU32,
    /// Answer 503 to every worker API call (an outage).
    down: AtomicBool,
    /// The operator drained the worker.
    drain: AtomicBool,
    /// Delay before a state write is answered.
    state_write_delay: Mutex<Duration>,
    queue: Mutex<VecDeque<RunAssignment>>,
    runs: Mutex<HashMap<i64, Vec<(RunState, String)>>>,
    heartbeats: Mutex<Vec<Heartbeat>>,
    logs: Mutex<BTreeMap<(i64, String, u64), Vec<u8>>>,
    plans: Mutex<HashMap<i64, Vec<u8>>>,
    tf_state: Mutex<Option<Vec<u8>>>,
    state_auth: Mutex<Vec<Option<String>>>,
    refused_without_cert: AtomicU32,
    unavailable_answers: AtomicU32,
    claims: AtomicU32,
    /// Provider mirror requests: path and `Authorization`.
    mirror_requests: Mutex<Vec<(String, Option<String>)>>,
}

impl Appliance {
    fn state(&self, run: i64) -> Option<RunState> {
        self.runs
            .lock()
            .unwrap()
            .get(&run)
            .and_then(|h| h.last().map(|(s, _)| *s))
    }

    fn history(&self, run: i64) -> Vec<RunState> {
        self.runs
            .lock()
            .unwrap()
            .get(&run)
            .map(|h| h.iter().map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }

    fn note(&self, run: i64) -> String {
        self.runs.lock().unwrap()[&run].last().unwrap().1.clone()
    }

    /// What an operator or the server does: moves the run if the table allows.
    fn set(&self, run: i64, to: RunState, note: &str) -> bool {
        let mut runs = self.runs.lock().unwrap();
        let h = runs.entry(run).or_default();
        let from = h.last().map(|(s, _)| *s).unwrap_or(RunState::Ready);
        if from.can_become(to) {
            h.push((to, note.into()));
            true
        } else {
            false
        }
    }

    fn enqueue(&self, a: RunAssignment) {
        self.runs
            .lock()
            .unwrap()
            .insert(a.run_id, vec![(RunState::Ready, "queued".into())]);
        self.queue.lock().unwrap().push_back(a);
    }

    fn log_text(&self, run: i64, phase: &str) -> String {
        let logs = self.logs.lock().unwrap();
        let chunks: Vec<(u64, &Vec<u8>)> = logs
            .iter()
            .filter(|((r, p, _), _)| *r == run && p == phase)
            .map(|((_, _, s), d)| (*s, d))
            .collect();
        for (i, (seq, _)) in chunks.iter().enumerate() {
            assert_eq!(
                *seq, i as u64,
                "{phase} chunks are numbered from 0 without gaps"
            );
        }
        chunks
            .iter()
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    fn all_logs(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .values()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        has_cert: bool,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let json = |v: &dyn erased::Json| (200u16, v.to_json());
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["health"]) => return (200, b"ok".to_vec()),
            (_, ["state", "v1", _stack]) => return self.state_backend(method, auth, body),
            // The provider mirror holds nothing here.
            ("GET", ["v1", "providers", ..]) => {
                self.mirror_requests
                    .lock()
                    .unwrap()
                    .push((path.to_string(), auth.map(String::from)));
                return (
                    404,
                    br#"{"errors":["no such provider in the mirror"]}"#.to_vec(),
                );
            }
            _ => {}
        }
        if !has_cert || auth != Some(&format!("Bearer {}", self.worker_token)) {
            self.refused_without_cert.fetch_add(1, Ordering::SeqCst);
            return (401, error_body(ErrorCode::Unauthenticated, "worker credentials required"));
        }
        if self.down.load(Ordering::SeqCst) {
            self.unavailable_answers.fetch_add(1, Ordering::SeqCst);
            return (503, error_body(ErrorCode::Unavailable, "unavailable"));
        }
        if (method, parts.as_slice()) == ("GET", ["v1", "tools", "terraform", "1.0.3", "linux_amd64"].as_slice()) {
            self.tool_gets.fetch_add(1, Ordering::SeqCst);
            return (200, self.tool.clone());
        }
        // The worker API as the appliance matches it.
        let Ok(route) = WorkerRoute::parse(method, &parts) else {
            return (404, error_body(ErrorCode::NotFound, "no such route"));
        };
        match route {
            WorkerRoute::Heartbeat => {
                let hb: Heartbeat = serde_json::from_slice(body).unwrap();
                self.heartbeats.lock().unwrap().push(hb.clone());
                let run_state = hb.run.and_then(|r| self.state(r));
                json(&HeartbeatReply {
                    lease_expires_at: hb.run.map(|_| "2100-01-01T00:00:00Z".into()),
                    run_state,
                    drain: self.drain.load(Ordering::SeqCst),
                })
            }
            WorkerRoute::Claim => {
                self.claims.fetch_add(1, Ordering::SeqCst);
                match self.queue.lock().unwrap().pop_front() {
                    Some(a) => json(&a),
                    None => (204, vec![]),
                }
            }
            WorkerRoute::RunStatus { run } => json(&RunStatus {
                run_id: run,
                state: self.state(run).unwrap(),
                failure_reason: None,
            }),
            WorkerRoute::ReportState { run } => {
                let r: StateReport = serde_json::from_slice(body).unwrap();
                let ok = self.set(run, r.to, &r.note);
                let status = RunStatus {
                    run_id: run,
                    state: self.state(run).unwrap(),
                    failure_reason: None,
                };
                (
                    if ok { 200 } else { 409 },
                    serde_json::to_vec(&status).unwrap(),
                )
            }
            WorkerRoute::LogChunk { run, phase, seq } => {
                let key = (run, phase.as_str().to_string(), seq);
                self.logs.lock().unwrap().insert(key, body.to_vec());
                (204, vec![])
            }
            WorkerRoute::StorePlan { run } => {
                self.plans.lock().unwrap().insert(run, body.to_vec());
                json(&PlanStored {
                    size: body.len() as u64,
                    sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, body)),
                })
            }
            // Plan policies are the appliance's; the plan's JSON is taken and dropped.
            WorkerRoute::StorePlanJson { .. } => (204, vec![]),
            // The HTTP transport is tested against the appliance itself (the server's `http_transport_e2e`).
            WorkerRoute::Join
            | WorkerRoute::ClaimWait
            | WorkerRoute::FetchPlan { .. }
            | WorkerRoute::ErroredState { .. } => {
                (404, error_body(ErrorCode::NotFound, "not staged here"))
            }
        }
    }

    /// Terraform's HTTP backend: locks always granted, writes kept.
    fn state_backend(&self, method: &str, auth: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
        self.state_auth.lock().unwrap().push(auth.map(String::from));
        match method {
            "GET" => match self.tf_state.lock().unwrap().clone() {
                Some(s) => (200, s),
                None => (404, vec![]),
            },
            "POST" => {
                *self.tf_state.lock().unwrap() = Some(body.to_vec());
                (200, vec![])
            }
            "LOCK" | "UNLOCK" => (200, vec![]),
            _ => (405, vec![]),
        }
    }
}

/// Serializing through a trait object keeps `answer` free of generics.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap()
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

struct Env {
    pg: PgServer,
    db_pool: hangar_db::DbPool,
    broker_config: BrokerConfig,
    broker: BrokerHandle,
    /// Kept running for the runs' clones.
    _git: GitServer,
    dir: TestDir,
    app: Arc<Appliance>,
    addr: SocketAddr,
    worker_id: i64,
    pool_id: i64,
    config_dir: PathBuf,
    sha: String,
    /// Where the worker reaches the appliance and the VCS.
    host: std::net::IpAddr,
    /// The repository URL the worker clones.
    repo_url: String,
}

impl Env {
    async fn start(label: &str, poll_secs: u64) -> Env {
        // Scoped: its `load` would shadow the atomics' elsewhere.
        use diesel_async::RunQueryDsl;
        hangar_testkit::init();
        let host: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let pg = PgServer::start().await;
        hangar_db::migrate::run_pending(&pg.database())
            .await
            .expect("migrate");
        let pool = pg.database().pool(Some(4)).expect("pool");
        let dir = TestDir::new(label);
        let pki = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default())
            .expect("test CA");
        let host_name = host.to_string();
        pki.ensure(
            "appliance",
            &LeafRequest::server("appliance", &["localhost", "127.0.0.1", host_name.as_str()]),
            time::Duration::days(1),
        )
        .expect("server certificate");
        let mut broker_config = BrokerConfig {
            listen: SocketAddr::new(host, 0),
            cert_file: pki.cert_path("appliance"),
            key_file: pki.key_path("appliance"),
            ca_file: pki.ca_cert_path(),
            limits: BrokerLimits::default(),
        };
        let broker = Broker::start(broker_config.clone(), pg.database(), pool.clone())
            .await
            .expect("start the broker");
        // A restarted broker comes back on the same port.
        broker_config.listen = broker.local_addr();
        wait_for("the broker bridge", SOON, || async {
            broker.status().await.bridge.then_some(())
        })
        .await;

        // A pool and a worker as joining makes them.
        let mut c = pool.get().await.unwrap();
        let pool_id =
            diesel::sql_query("INSERT INTO worker_pools (name) VALUES ('builders') RETURNING id")
                .get_result::<Id>(&mut c)
                .await
                .unwrap()
                .id;
        let worker_id = diesel::sql_query(
            "INSERT INTO workers (pool_id, name, pool_generation, cert_serial, cert_not_after) \
             VALUES ($1, 'host-a', 1, 'pending', now() + interval '1 day') RETURNING id",
        )
        .bind::<diesel::sql_types::BigInt, _>(pool_id)
        .get_result::<Id>(&mut c)
        .await
        .unwrap()
        .id;
        let issued = pki
            .ca()
            .issue(&LeafRequest {
                common_name: format!("worker w{worker_id}"),
                names: vec![],
                organization: Some(format!("w{worker_id}")),
                usage: Usage::Client,
                validity: time::Duration::days(1),
            })
            .unwrap();
        let token = hangar_crypto::new_token(hangar_broker::WORKER_TOKEN_KIND);
        diesel::sql_query("UPDATE workers SET cert_serial = $1, token_hash = $2, pool_generation = (SELECT generation FROM worker_pools WHERE id = $3) WHERE id = $4")
            .bind::<diesel::sql_types::Text, _>(&issued.serial_hex)
            .bind::<diesel::sql_types::Text, _>(&token.hash)
            .bind::<diesel::sql_types::BigInt, _>(pool_id)
            .bind::<diesel::sql_types::BigInt, _>(worker_id)
            .execute(&mut c)
            .await
            .unwrap();
        let worker_token = token.token.expose().to_string();

        let tool = std::fs::read(hangar_testkit::terraform::terraform()).unwrap();
        let app = Arc::new(Appliance {
            worker_token: worker_token.clone(),
            tool,
            ..Default::default()
        });
        let addr = serve(app.clone(), &pki, host).await;

        let config_dir = dir.subdir("etc");
        std::fs::write(config_dir.join("worker.crt"), &issued.cert_pem).unwrap();
        hangar_certs::write_private_file(
            &config_dir.join("worker.key"),
            issued.key_pem.unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::copy(pki.ca_cert_path(), config_dir.join("ca.crt")).unwrap();
        hangar_certs::write_private_file(&config_dir.join("token"), worker_token.as_bytes())
            .unwrap();
        let toml = format!(
            "worker_id = {worker_id}\nname = \"host-a\"\npool_id = {pool_id}\npool_name = \"builders\"\n\
             server_url = \"https://{host}:{}\"\nbroker_url = \"mqtts://{host}:{}\"\n\
             work_dir = \"{}\"\ncache_dir = \"{}\"\n\
             [paths]\nkey = \"worker.key\"\ncertificate = \"worker.crt\"\nca = \"ca.crt\"\ntoken = \"token\"\n\
             [timing]\nheartbeat_secs = 1\npoll_secs = {poll_secs}\nstop_grace_secs = 2\n",
            addr.port(),
            broker.local_addr().port(),
            dir.path().join("work").display(),
            dir.path().join("cache").display(),
        );
        std::fs::write(config_dir.join("worker.toml"), toml).unwrap();

        let git = GitServer::start().await;
        git.create_repo("net");
        let sha = git.push_files("net", "main", &[("infra/main.tf", CONFIG)], "a stack");
        let repo_url = git.url("net");
        Env {
            pg,
            db_pool: pool,
            broker_config,
            broker,
            _git: git,
            dir,
            app,
            addr,
            worker_id,
            pool_id,
            config_dir,
            sha,
            host,
            repo_url,
        }
    }

    fn base(&self) -> String {
        format!("https://{}:{}", self.host, self.addr.port())
    }

    fn assignment(&self, run_id: i64, kind: RunKind, autodeploy: bool) -> RunAssignment {
        let base = self.base();
        RunAssignment {
            run_id,
            kind,
            stack: StackSpec {
                id: 1,
                slug: "net".into(),
                repository: self.repo_url.clone(),
                project_root: "infra".into(),
            },
            commit_sha: self.sha.clone(),
            branch: "main".into(),
            command: None,
            env: vec![
                EnvVar {
                    name: "TF_VAR_greeting".into(),
                    value: "hi".into(),
                    secret: false,
                },
                EnvVar {
                    name: "TF_VAR_secret".into(),
                    value: SECRET.into(),
                    secret: true,
                },
            ],
            run_token: format!("hrt_{run_id}_run_token_value"),
            state_url: format!("{base}/state/v1/net"),
            tool: ToolSpec {
                tool: Tool::Terraform,
                version: "1.0.3".into(),
                url: format!("{base}/v1/tools/terraform/1.0.3/linux_amd64"),
                sha256: hangar_testkit::terraform::SHA256.into(),
            },
            provider_mirror_url: format!("{base}/v1/providers/"),
            lease_expires_at: "2100-01-01T00:00:00Z".into(),
            autodeploy,
        }
    }

    fn spawn_worker(&self) -> ChildProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-worker"));
        cmd.args(["run", "--config-dir"])
            .arg(&self.config_dir)
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            // An environment that would misdirect git: runs must not inherit it.
            .env("GIT_DIR", "/nonexistent/git-dir")
            .env("GIT_SSL_CAINFO", "/nonexistent/ca.pem");
        ChildProcess::spawn(cmd, "hangar-worker", self.dir.path())
    }

    async fn wait_state(&self, run: i64, state: RunState, worker: &ChildProcess) {
        let app = self.app.clone();
        let what = format!(
            "run {run} to be {state} (worker log: {})",
            worker.log_path().display()
        );
        wait_for(&what, SOON, || {
            let app = app.clone();
            async move { (app.state(run) == Some(state)).then_some(()) }
        })
        .await;
    }

    async fn wait_connected(&self) {
        wait_for("the worker to connect to the broker", SOON, || async {
            (self.broker.connections() >= 1).then_some(())
        })
        .await;
        let app = self.app.clone();
        wait_for("a heartbeat", SOON, || {
            let app = app.clone();
            async move { (!app.heartbeats.lock().unwrap().is_empty()).then_some(()) }
        })
        .await;
    }

    /// Publishes `n` every half second until `done` holds: a notification sent
    /// before the worker's subscription is in place is lost, as in production.
    async fn notify_until(
        &self,
        n: Notification,
        to_pool: bool,
        what: &str,
        done: impl Fn(&Appliance) -> bool,
    ) {
        let app = self.app.clone();
        let broker = self.broker.clone();
        let (pool, worker) = (self.pool_id, self.worker_id);
        wait_for(what, SOON, || {
            let (app, broker, n) = (app.clone(), broker.clone(), n.clone());
            let done = &done;
            async move {
                if done(&app) {
                    return Some(());
                }
                let _ = if to_pool {
                    broker.publish_to_pool(pool, &n).await
                } else {
                    broker.publish_to_worker(worker, &n).await
                };
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        })
        .await;
    }

    /// Stops the broker and starts a new one on the same port.
    async fn restart_broker(&mut self) {
        self.broker.shutdown();
        self.broker.wait().await;
        self.broker = Broker::start(
            self.broker_config.clone(),
            self.pg.database(),
            self.db_pool.clone(),
        )
        .await
        .expect("restart the broker");
        let broker = self.broker.clone();
        wait_for("the new broker's bridge", SOON, || {
            let broker = broker.clone();
            async move { broker.status().await.bridge.then_some(()) }
        })
        .await;
    }
}

/// The stand-in's HTTPS listener: client certificates verified when presented
/// (Terraform's state requests come without one).
async fn serve(app: Arc<Appliance>, pki: &CertStore, host: std::net::IpAddr) -> SocketAddr {
    let chain = hangar_certs::tls::load_certs(&pki.cert_path("appliance")).unwrap();
    let key = hangar_certs::tls::load_key(&pki.key_path("appliance")).unwrap();
    let roots = hangar_certs::tls::roots_from_pem(pki.ca().cert_pem().as_bytes()).unwrap();
    let tls = hangar_certs::tls::server_config(
        chain,
        key,
        hangar_certs::tls::ClientAuth::Optional(roots),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(host, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if method == "POST" && path.starts_with("/state/") {
                                let delay = *app.state_write_delay.lock().unwrap();
                                tokio::time::sleep(delay).await;
                            }
                            let (status, body) =
                                app.answer(&method, &path, auth.as_deref(), has_cert, &body);
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            if path.starts_with("/v1/tools/") && status == 200 {
                                r.headers_mut().insert(
                                    "x-hangar-sha256",
                                    hangar_testkit::terraform::SHA256.parse().unwrap(),
                                );
                            }
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
    addr
}

/// Processes of group `pgid` that are not zombies.
fn live_in_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2].parse::<i32>() == Ok(pgid) && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

fn stopped_cleanly(worker: &mut ChildProcess) {
    worker.signal(Signal::SIGTERM);
    let status = worker
        .wait_timeout(Duration::from_secs(60))
        .expect("the worker exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", worker.output_tail());
}

fn state_outputs(app: &Appliance) -> serde_json::Value {
    let s = app
        .tf_state
        .lock()
        .unwrap()
        .clone()
        .expect("a state was written");
    serde_json::from_slice::<serde_json::Value>(&s).unwrap()["outputs"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_goes_from_work_available_to_finished_through_the_broker() {
    // Claims only on notifications: the periodic poll is an hour away.
    let mut env = Env::start("agent-broker", 3600).await;
    let mut worker = env.spawn_worker();
    env.wait_connected().await;
    assert_eq!(
        env.app.heartbeats.lock().unwrap()[0],
        Heartbeat {
            status: WorkerStatus::Idle,
            run: None
        }
    );

    env.app.enqueue(env.assignment(1, RunKind::Tracked, false));
    env.notify_until(
        Notification::WorkAvailable { pool: env.pool_id },
        true,
        "run 1 claimed",
        |a| a.state(1) != Some(RunState::Ready),
    )
    .await;
    env.wait_state(1, RunState::Unconfirmed, &worker).await;
    // While it waits, heartbeats renew the held run's lease.
    let app = env.app.clone();
    wait_for("a busy heartbeat for run 1", SOON, || {
        let app = app.clone();
        async move {
            let hbs = app.heartbeats.lock().unwrap().clone();
            hbs.iter()
                .any(|h| h.status == WorkerStatus::Busy && h.run == Some(1))
                .then_some(())
        }
    })
    .await;
    let plan = env
        .app
        .plans
        .lock()
        .unwrap()
        .get(&1)
        .cloned()
        .expect("the plan went to the pre-signed URL");
    assert!(!plan.is_empty());
    assert!(
        env.app.tf_state.lock().unwrap().is_none(),
        "nothing applied before confirmation"
    );

    // A human confirms: the server moves the run and notifies the worker.
    assert!(env.app.set(1, RunState::Confirmed, "confirmed by alice"));
    env.notify_until(
        Notification::RunConfirmed { run: 1 },
        false,
        "run 1 applied",
        |a| a.state(1) != Some(RunState::Confirmed),
    )
    .await;
    env.wait_state(1, RunState::Finished, &worker).await;
    assert_eq!(
        env.app.history(1),
        [
            RunState::Ready,
            RunState::Preparing,
            RunState::Initializing,
            RunState::Planning,
            RunState::Unconfirmed,
            RunState::Confirmed,
            RunState::Applying,
            RunState::Finished
        ]
    );
    let outputs = state_outputs(&env.app);
    assert_eq!(outputs["message"]["value"], "hi world");
    assert_eq!(outputs["secret_length"]["value"], SECRET.len());
    assert!(
        env.app
            .log_text(1, "planning")
            .contains("message       = \"hi world\""),
        "{}",
        env.app.log_text(1, "planning")
    );
    assert!(env.app.log_text(1, "applying").contains("Apply complete!"));
    let all = env.app.all_logs();
    assert!(
        !all.contains(SECRET) && !all.contains("run_token_value"),
        "no secret in the logs"
    );
    // Terraform reached the state backend with the run's credential.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("run:hrt_1_run_token_value")
    );
    assert!(
        env.app
            .state_auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.as_deref() == Some(basic.as_str()))
    );
    assert_eq!(env.app.tool_gets.load(Ordering::SeqCst), 1);

    // The same commit again: no changes, the tool from the cache, the work
    // directory of the first run gone.
    env.app.enqueue(env.assignment(2, RunKind::Tracked, false));
    env.notify_until(
        Notification::WorkAvailable { pool: env.pool_id },
        true,
        "run 2 claimed",
        |a| a.state(2) != Some(RunState::Ready),
    )
    .await;
    env.wait_state(2, RunState::Finished, &worker).await;
    assert_eq!(env.app.note(2), "no changes");
    assert_eq!(env.app.tool_gets.load(Ordering::SeqCst), 1);
    assert!(!env.dir.path().join("work/run-1").exists());
    assert_eq!(env.app.refused_without_cert.load(Ordering::SeqCst), 0);

    // Drained by an operator: the worker says so and takes nothing new until
    // the drain is lifted.
    env.app.drain.store(true, Ordering::SeqCst);
    let app = env.app.clone();
    wait_for("a drained heartbeat", SOON, || {
        let app = app.clone();
        async move {
            (app.heartbeats.lock().unwrap().last()?.status == WorkerStatus::Drained).then_some(())
        }
    })
    .await;
    env.app.enqueue(env.assignment(4, RunKind::Proposed, false));
    for _ in 0..4 {
        env.broker
            .publish_to_pool(
                env.pool_id,
                &Notification::WorkAvailable { pool: env.pool_id },
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        env.app.state(4),
        Some(RunState::Ready),
        "a drained worker claims nothing"
    );
    env.app.drain.store(false, Ordering::SeqCst);
    env.wait_state(4, RunState::Finished, &worker).await;

    // `status` sees both ends.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar-worker"))
        .args(["status", "--config-dir"])
        .arg(&env.config_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("server   https://127.0.0.1:")
            && text.contains("broker   mqtts://127.0.0.1:"),
        "{text}"
    );
    assert_eq!(text.matches(" reachable").count(), 2, "{text}");

    // The broker restarts: the worker reconnects with back-off, subscribes
    // again (its session is gone) and is reached by notifications once more.
    env.restart_broker().await;
    let claims = env.app.claims.load(Ordering::SeqCst);
    let app = env.app.clone();
    wait_for("the claim a reconnection makes", SOON, || {
        let app = app.clone();
        async move { (app.claims.load(Ordering::SeqCst) > claims).then_some(()) }
    })
    .await;
    env.app.enqueue(env.assignment(3, RunKind::Proposed, false));
    env.notify_until(
        Notification::WorkAvailable { pool: env.pool_id },
        true,
        "run 3 claimed after the restart",
        |a| a.state(3) != Some(RunState::Ready),
    )
    .await;
    env.wait_state(3, RunState::Finished, &worker).await;

    stopped_cleanly(&mut worker);
    let last = env.app.heartbeats.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.status,
        WorkerStatus::Offline,
        "the worker says it is going"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_rides_out_an_outage_and_catches_up_without_notifications() {
    // No notification is ever sent here: the poll and the heartbeats must do.
    let env = Env::start("agent-outage", 2).await;
    let mut worker = env.spawn_worker();
    env.wait_connected().await;
    env.app.enqueue(env.assignment(1, RunKind::Tracked, false));
    // The appliance goes away while the run prepares: reports, log chunks and
    // the tool download are retried until it is back.
    env.wait_state(1, RunState::Preparing, &worker).await;
    env.app.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.app.down.store(false, Ordering::SeqCst);
    assert!(
        env.app.unavailable_answers.load(Ordering::SeqCst) > 0,
        "the worker tried during the outage"
    );
    env.wait_state(1, RunState::Unconfirmed, &worker).await;

    // It goes away again; meanwhile the run is confirmed (the
    // notification is lost). The worker keeps its run and catches up.
    env.app.down.store(true, Ordering::SeqCst);
    assert!(
        env.app
            .set(1, RunState::Confirmed, "confirmed during the outage")
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        env.app.state(1),
        Some(RunState::Confirmed),
        "nothing got through the outage"
    );
    env.app.down.store(false, Ordering::SeqCst);
    env.wait_state(1, RunState::Finished, &worker).await;
    assert_eq!(state_outputs(&env.app)["message"]["value"], "hi world");
    // Every log chunk arrived once, in sequence, whatever was retried.
    for phase in ["preparing", "initializing", "planning", "applying"] {
        assert!(!env.app.log_text(1, phase).is_empty(), "{phase}");
    }

    // Told to stop while the appliance is away, the worker gives up delivering
    // after a bounded time and still exits cleanly.
    let mut changed = env.assignment(2, RunKind::Tracked, false);
    changed.env[0].value = "hola".into();
    env.app.enqueue(changed);
    env.wait_state(2, RunState::Unconfirmed, &worker).await;
    env.app.down.store(true, Ordering::SeqCst);
    stopped_cleanly(&mut worker);
    assert_eq!(
        env.app.state(2),
        Some(RunState::Unconfirmed),
        "nothing got through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stop_and_shutdown_behave_as_the_states_allow() {
    let env = Env::start("agent-cancel", 1).await;
    let mut worker = env.spawn_worker();
    env.wait_connected().await;

    // A task canceled by an operator: its whole group is killed.
    let mut task = env.assignment(1, RunKind::Task, false);
    task.command =
        Some("echo $$ > ../task.pid; (trap '' TERM; sleep 300) & sleep 300; wait".into());
    env.app.enqueue(task);
    env.wait_state(1, RunState::Planning, &worker).await;
    let pid_file = env.dir.path().join("work/run-1/src/task.pid");
    let pgid: i32 = wait_for("the task to start", SOON, || {
        let p = pid_file.clone();
        async move {
            std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        }
    })
    .await;
    assert!(env.app.set(1, RunState::Stopped, "stopped by alice"));
    env.notify_until(
        Notification::RunCanceled { run: 1 },
        false,
        "the task's processes to go",
        |_| live_in_group(pgid).is_empty(),
    )
    .await;
    assert_eq!(env.app.history(1).last(), Some(&RunState::Stopped));

    // A plan discarded by a human: the worker lets the run go, applies
    // nothing, and takes the next one.
    env.app.enqueue(env.assignment(5, RunKind::Tracked, false));
    env.wait_state(5, RunState::Unconfirmed, &worker).await;
    assert!(env.app.set(5, RunState::Discarded, "discarded by alice"));
    env.app.enqueue(env.assignment(6, RunKind::Proposed, false));
    env.wait_state(6, RunState::Finished, &worker).await;
    assert_eq!(env.app.history(5).last(), Some(&RunState::Discarded));
    assert!(
        env.app.tf_state.lock().unwrap().is_none(),
        "nothing was applied"
    );
    assert!(
        !env.dir.path().join("work/run-5").exists(),
        "the discarded run's work directory is gone"
    );

    // An apply is never stopped: SIGTERM while applying lets it finish.
    *env.app.state_write_delay.lock().unwrap() = Duration::from_secs(3);
    env.app.enqueue(env.assignment(2, RunKind::Tracked, true));
    env.wait_state(2, RunState::Applying, &worker).await;
    worker.signal(Signal::SIGTERM);
    env.wait_state(2, RunState::Finished, &worker).await;
    let status = worker
        .wait_timeout(Duration::from_secs(60))
        .expect("the worker exits after the apply");
    assert_eq!(status.code(), Some(0), "{}", worker.output_tail());
    assert_eq!(state_outputs(&env.app)["message"]["value"], "hi world");
    *env.app.state_write_delay.lock().unwrap() = Duration::ZERO;

    // SIGTERM while a plan awaits confirmation: the run fails (nothing was
    // applied) and the worker exits cleanly.
    let mut worker = env.spawn_worker();
    let mut changed = env.assignment(3, RunKind::Tracked, false);
    changed.env[0].value = "bonjour".into();
    env.app.enqueue(changed);
    env.wait_state(3, RunState::Unconfirmed, &worker).await;
    stopped_cleanly(&mut worker);
    assert_eq!(env.app.state(3), Some(RunState::Failed));
    assert!(
        env.app.note(3).contains("shutting down"),
        "{}",
        env.app.note(3)
    );
    assert_eq!(
        state_outputs(&env.app)["message"]["value"],
        "hi world",
        "the unconfirmed plan was not applied"
    );

    // SIGTERM while a task runs: the task's group is stopped, the run is
    // reported STOPPED, and the worker exits cleanly.
    let mut worker = env.spawn_worker();
    let mut task = env.assignment(4, RunKind::Task, false);
    task.command = Some("echo $$ > ../task.pid; sleep 300".into());
    env.app.enqueue(task);
    env.wait_state(4, RunState::Planning, &worker).await;
    let pid_file = env.dir.path().join("work/run-4/src/task.pid");
    let pgid: i32 = wait_for("the task to start", SOON, || {
        let p = pid_file.clone();
        async move {
            std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        }
    })
    .await;
    stopped_cleanly(&mut worker);
    assert_eq!(env.app.state(4), Some(RunState::Stopped));
    assert_eq!(env.app.note(4), "the worker is shutting down");
    assert!(
        live_in_group(pgid).is_empty(),
        "no process of the task survives"
    );
}

/// The appliance's error body.
fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody::new(code, message)).unwrap()
}
