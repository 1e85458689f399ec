//! Simulated workers for the dispatch benchmarks: each joins with its own CSR
//! and speaks the protocols the way `hangar-worker run` does (see
//! `benches/workers.rs` for what it does and what is measured with it).

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_db::runs::NewRun;
use hangar_types::worker::{HostInfo, JoinRequest, JoinResponse, Notification, RunAssignment, StateReport, WorkerRoute};
use hangar_types::{RunKind, RunState};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use super::Appliance;

/// The worker's defaults (`[timing]` of `worker.toml`).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const POLL: Duration = Duration::from_secs(30);

/// A joined worker's credentials and connections.
pub struct Sim {
    pub id: i64,
    pub token: String,
    pub http: reqwest::Client,
    pub base: String,
    pub mqtt: MqttOptions,
    /// One request at a time, so one HTTPS connection: with thousands of
    /// workers the open-file limit (one descriptor per connection at each
    /// end) is the first thing to run out.
    pub one: tokio::sync::Mutex<()>,
}

impl Sim {
    /// `Err(503)`: the server is out of database connections for now;
    /// `Err(0)`: the request failed on the way (a connection closed).
    async fn claim(&self) -> Result<Option<RunAssignment>, u16> {
        let _one = self.one.lock().await;
        let Ok(r) = self.http.post(format!("{}{}", self.base, WorkerRoute::Claim.path())).bearer_auth(&self.token).send().await
        else {
            return Err(0);
        };
        match r.status().as_u16() {
            204 => Ok(None),
            200 => Ok(Some(r.json().await.unwrap())),
            // Either way the worker pauses and asks again.
            503 => Err(503),
            s => panic!("claim answered {s}: {}", r.text().await.unwrap_or_default()),
        }
    }

    async fn heartbeat(&self) -> bool {
        let _one = self.one.lock().await;
        let r = self
            .http
            .post(format!("{}{}", self.base, WorkerRoute::Heartbeat.path()))
            .bearer_auth(&self.token)
            .json(&json!({ "status": "idle", "run": null }))
            .send()
            .await;
        matches!(r, Ok(r) if r.status() == 200)
    }

    /// Reports run `run` FAILED, asking again (as the worker does) while the
    /// request fails on the way; returns how many times it did.
    async fn fail(&self, run: i64) -> u64 {
        let _one = self.one.lock().await;
        let body = StateReport { to: RunState::Failed, note: "bench".into(), changes: None, commit_message: None };
        let mut again = 0;
        loop {
            let sent = self
                .http
                .post(format!("{}{}", self.base, WorkerRoute::ReportState { run }.path()))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 503 => {}
                Ok(r) => {
                    assert_eq!(r.status(), 200, "report FAILED for run {run}");
                    return again;
                }
                Err(_) => {}
            }
            again += 1;
            assert!(again < 100, "report FAILED for run {run}: no answer after 100 tries");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What the simulated workers saw, shared with the measuring task.
#[derive(Default)]
pub struct Log {
    /// Run id → (worker, when the claim was answered), and every claim of it.
    pub claims: Mutex<HashMap<i64, Vec<(i64, Instant)>>>,
    pub claimed: Notify,
    /// Claim requests sent and answered.
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub answered_note: Notify,
    pub heartbeats: AtomicU64,
    pub heartbeat_errors: AtomicU64,
    pub subscribed: AtomicUsize,
    pub notifications: AtomicU64,
    /// When each notification arrived (kept for the single-worker measurement).
    pub notified_at: Mutex<Vec<Instant>>,
    pub mqtt_errors: AtomicU64,
    /// Claims answered 503 and asked again after a pause.
    pub unavailable: AtomicU64,
    /// Requests that failed on the way (a connection closed) and were sent again.
    pub request_errors: AtomicU64,
    pub stopping: AtomicBool,
    /// In a fleet process: each claim is written to stdout too, for the bench.
    pub echo: AtomicBool,
}

impl Log {
    /// What went wrong on the fleet's side, for the summary line: failed
    /// heartbeats, MQTT reconnects, claims answered 503, requests sent again.
    pub fn troubles(&self) -> String {
        format!(
            "{} heartbeats failed; MQTT reconnects {}; claims answered 503 and retried {}; requests failed on the way and sent again {}",
            self.heartbeat_errors.load(Ordering::Relaxed),
            self.mqtt_errors.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.request_errors.load(Ordering::Relaxed)
        )
    }
}

/// Where simulated workers join and connect: the appliance's API and broker
/// ports (a server's own, or a balancer's in front of several), the CA its
/// certificates chain to, an admin's token to make join tokens, and the pool.
/// Handed to a fleet process as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Front {
    pub host: String,
    pub api_port: u16,
    pub mqtt_port: u16,
    pub ca: PathBuf,
    pub admin: String,
    pub pool: String,
}

impl Front {
    /// Workers of `pool` joining at `api_port` and connecting to `mqtt_port`.
    pub fn new(app: &Appliance, admin: &str, pool: &str, api_port: u16, mqtt_port: u16) -> Front {
        Front {
            host: app.public_host.to_string(),
            api_port,
            mqtt_port,
            ca: app.ca_path(),
            admin: admin.to_string(),
            pool: pool.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.api_port)
    }

    /// A GraphQL request as the admin that must succeed; returns `data`.
    async fn ok(&self, client: &reqwest::Client, query: &str, variables: serde_json::Value) -> serde_json::Value {
        let r = patiently("a GraphQL request", || {
            client.post(self.url("/graphql")).bearer_auth(&self.admin).json(&json!({ "query": query, "variables": variables })).send()
        })
        .await;
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body.get("errors").is_none(), "{query}: {body}");
        body["data"].clone()
    }
}

/// Sends a request again, a second apart, while it fails on the way or is
/// answered 503, as an operator's script or a worker would; ten tries.
async fn patiently<F, Fut>(what: &str, send: F) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match send().await {
            Ok(r) if r.status() != 503 => return r,
            Ok(r) if tries >= 10 => panic!("{what}: answered {} ten times", r.status()),
            Err(e) if tries >= 10 => panic!("{what}: {e}"),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Joins one worker named `name` through `front` (`client` trusts its CA).
pub async fn join(front: &Front, client: &reqwest::Client, name: String) -> Sim {
    let d = front.ok(client, "mutation($p: String!) { createJoinToken(pool: $p) { token } }", json!({ "p": front.pool })).await;
    let token = d["createJoinToken"]["token"].as_str().unwrap().to_string();
    let (key, csr) = hangar_certs::worker_csr(&name).unwrap();
    let req = JoinRequest {
        token,
        name: name.clone(),
        csr_pem: csr,
        host: HostInfo { hostname: name, os: "linux".into(), arch: "amd64".into(), version: "bench".into() },
    };
    let r = patiently("a join", || client.post(front.url(WorkerRoute::JOIN_PATH)).json(&req).send()).await;
    assert_eq!(r.status(), 200);
    let resp: JoinResponse = r.json().await.unwrap();
    let ca_pem = std::fs::read(&front.ca).unwrap();
    let ca = reqwest::Certificate::from_pem(&ca_pem).unwrap();
    let id = reqwest::Identity::from_pem(format!("{}{}", resp.certificate_pem, key).as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(id)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();

    let roots = hangar_certs::tls::roots_from_pem(&ca_pem).unwrap();
    let chain = hangar_certs::tls::parse_certs(resp.certificate_pem.as_bytes()).unwrap();
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()
    };
    let tls = hangar_certs::tls::client_config(roots, Some((chain, key))).unwrap();
    let tenant = hangar_types::worker::worker_tenant(resp.worker_id);
    let mut mqtt = MqttOptions::new(tenant.clone(), "127.0.0.1", front.mqtt_port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_credentials(tenant, resp.worker_token.clone())
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    Sim { id: resp.worker_id, token: resp.worker_token, http, base: front.url(""), mqtt, one: Default::default() }
}

/// Joins the workers numbered `range` (named `sim-<i>`) through `front` and
/// drives each, 100 at a time, waiting until each hundred has subscribed
/// before the next, as a fleet coming up connects in steps (within the
/// broker's limit of pending connections).
pub async fn bring_up(front: &Front, log: &Arc<Log>, range: Range<usize>) {
    let client = super::common::client_trusting(&front.ca);
    let base = log.subscribed.load(Ordering::Relaxed);
    let mut started = 0;
    for chunk in range.collect::<Vec<_>>().chunks(100) {
        let sims = futures::future::join_all(chunk.iter().map(|i| join(front, &client, format!("sim-{i}")))).await;
        for sim in sims {
            drive(sim, log.clone(), false);
            started += 1;
        }
        let target = base + started;
        hangar_testkit::wait_for("a batch of workers to subscribe", Duration::from_secs(300), || async {
            (log.subscribed.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
    }
}

/// Runs one simulated worker until the log says stop.
pub fn drive(sim: Sim, log: Arc<Log>, record_notifications: bool) {
    let sim = Arc::new(sim);
    let wake = Arc::new(Notify::new());
    {
        let (client, mut events) = AsyncClient::new(sim.mqtt.clone(), 16);
        let filter = format!("/tenants/{}/#", hangar_types::worker::worker_tenant(sim.id));
        let (log, wake) = (log.clone(), wake.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        if !c.session_present {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pause = Duration::from_millis(100);
                        log.subscribed.fetch_add(1, Ordering::Relaxed);
                        wake.notify_one();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        if let Ok(Notification::WorkAvailable { .. }) = serde_json::from_slice(&p.payload) {
                            log.notifications.fetch_add(1, Ordering::Relaxed);
                            if record_notifications {
                                log.notified_at.lock().unwrap().push(at);
                            }
                            wake.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(_) if log.stopping.load(Ordering::Relaxed) => return,
                    Err(_) => {
                        // As the worker: reconnect after a growing pause.
                        log.mqtt_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
    {
        let (sim, log) = (sim.clone(), log.clone());
        tokio::spawn(async move {
            // Workers started together do not beat together.
            let offset = Duration::from_millis((sim.id as u64 * 7919) % HEARTBEAT.as_millis() as u64);
            tokio::time::sleep(offset).await;
            while !log.stopping.load(Ordering::Relaxed) {
                if sim.heartbeat().await {
                    log.heartbeats.fetch_add(1, Ordering::Relaxed);
                } else {
                    log.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if log.stopping.load(Ordering::Relaxed) {
                return;
            }
            // Claim until there is nothing left, as the worker's run loop does.
            loop {
                log.sent.fetch_add(1, Ordering::Relaxed);
                let mut pause = Duration::from_secs(1);
                let got = loop {
                    match sim.claim().await {
                        Ok(got) => break got,
                        Err(why) => {
                            if why == 503 { &log.unavailable } else { &log.request_errors }.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(30));
                        }
                    }
                };
                let at = Instant::now();
                if let Some(a) = &got {
                    if log.echo.load(Ordering::Relaxed) {
                        println!("claim {} {} {}", a.run_id, sim.id, unix_micros());
                    }
                    log.claims.lock().unwrap().entry(a.run_id).or_default().push((sim.id, at));
                    log.claimed.notify_waiters();
                }
                log.answered.fetch_add(1, Ordering::Relaxed);
                log.answered_note.notify_waiters();
                match got {
                    Some(a) => {
                        let again = sim.fail(a.run_id).await;
                        log.request_errors.fetch_add(again, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }
    });
}

/// Waits until run `id` has been claimed and returns when.
pub async fn claimed_at(log: &Log, id: i64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let wait = log.claimed.notified();
        if let Some(c) = log.claims.lock().unwrap().get(&id) {
            return c[0].1;
        }
        assert!(Instant::now() < deadline, "run {id} not claimed after 300 s");
        let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
    }
}

/// Waits until as many claim requests have been answered as had been sent
/// when it was called. Not until none is in flight: a large fleet's 30 s polls
/// keep some in flight at every moment.
pub async fn quiet(log: &Log) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let sent = log.sent.load(Ordering::Relaxed);
    loop {
        let wait = log.answered_note.notified();
        if log.answered.load(Ordering::Relaxed) >= sent {
            return;
        }
        assert!(Instant::now() < deadline, "claims still unanswered after 600 s");
        let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
    }
}

pub async fn new_run(c: &mut diesel_async::AsyncPgConnection, stack_id: i64) -> i64 {
    hangar_db::runs::create(
        c,
        &NewRun {
            stack_id,
            kind: RunKind::Proposed,
            commit_sha: "b".repeat(40),
            branch: "main".into(),
            command: None,
            triggered_by: "bench".into(),
        },
        "bench",
    )
    .await
    .unwrap()
    .id
}

/// What one round of dispatch measured: runs made READY one at a time, then
/// many in one commit, with the notifications and claim requests each set off.
pub struct Dispatched {
    pub trickle: Vec<Duration>,
    pub trickle_requests: u64,
    pub trickle_notes: u64,
    pub burst: Vec<Duration>,
    pub burst_secs: f64,
    pub burst_requests: u64,
    pub burst_notes: u64,
    /// Heartbeats answered per second over the whole round.
    pub hb_rate: f64,
    /// Runs claimed, and claims in all (equal when each was claimed once).
    pub runs_claimed: usize,
    pub claims_total: usize,
}

/// Makes `n_trickle` runs of `stack` READY one at a time (each claimed before
/// the next), then `n_burst` in one commit, and times each from READY to its
/// claim. Asserts that every run was claimed exactly once.
pub async fn dispatch_round(c: &mut diesel_async::AsyncPgConnection, log: &Log, stack: i64, n_trickle: usize, n_burst: usize) -> Dispatched {
    let hb_start = (log.heartbeats.load(Ordering::Relaxed), Instant::now());
    let (sent_before, notified_before) = (log.sent.load(Ordering::Relaxed), log.notifications.load(Ordering::Relaxed));

    // One READY run at a time: one idle worker hears of it and asks.
    let mut trickle = Vec::with_capacity(n_trickle);
    for _ in 0..n_trickle {
        let id = new_run(c, stack).await;
        let ready = hangar_db::runs::schedule_stack(c, stack, "bench").await.unwrap();
        let ready_at = Instant::now();
        assert_eq!(ready.len(), 1);
        trickle.push(claimed_at(log, id).await - ready_at);
        quiet(log).await;
    }
    let trickle_requests = log.sent.load(Ordering::Relaxed) - sent_before;
    let trickle_notes = log.notifications.load(Ordering::Relaxed) - notified_before;

    // A burst: many runs READY in one commit.
    let (burst_sent_before, burst_notified_before) = (log.sent.load(Ordering::Relaxed), log.notifications.load(Ordering::Relaxed));
    let mut ids = Vec::with_capacity(n_burst);
    for _ in 0..n_burst {
        ids.push(new_run(c, stack).await);
    }
    let ready = hangar_db::runs::schedule_stack(c, stack, "bench").await.unwrap();
    let ready_at = Instant::now();
    eprintln!("burst: {n_burst} runs READY in one commit");
    assert_eq!(ready.len(), n_burst);
    let mut burst = Vec::with_capacity(n_burst);
    for id in &ids {
        burst.push(claimed_at(log, *id).await - ready_at);
    }
    let burst_secs = burst.iter().max().copied().unwrap_or_default().as_secs_f64();
    quiet(log).await;
    let burst_requests = log.sent.load(Ordering::Relaxed) - burst_sent_before;
    let burst_notes = log.notifications.load(Ordering::Relaxed) - burst_notified_before;
    let hb_rate = (log.heartbeats.load(Ordering::Relaxed) - hb_start.0) as f64 / hb_start.1.elapsed().as_secs_f64();

    let claims = log.claims.lock().unwrap();
    let twice: Vec<_> = claims.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| *k).collect();
    assert!(twice.is_empty(), "runs claimed more than once: {twice:?}");
    assert_eq!(claims.len(), n_trickle + n_burst, "every run claimed");
    let (runs_claimed, claims_total) = (claims.len(), claims.values().map(Vec::len).sum());
    Dispatched { trickle, trickle_requests, trickle_notes, burst, burst_secs, burst_requests, burst_notes, hb_rate, runs_claimed, claims_total }
}

/// The environment variable that makes a bench binary a fleet process, with
/// its `FleetPart` as JSON.
const FLEET_ENV: &str = "HANGAR_BENCH_FLEET";

/// What one fleet process runs: the workers numbered `range`, through `front`.
#[derive(Serialize, Deserialize)]
struct FleetPart {
    front: Front,
    range: Range<usize>,
}

/// How often a fleet process reports its counters.
const COUNT_EVERY: Duration = Duration::from_millis(20);

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

const COUNTERS: usize = 9;

/// The counters a fleet process reports, in the order of its `count` lines.
fn counters(log: &Log) -> [u64; COUNTERS] {
    [
        log.sent.load(Ordering::Relaxed),
        log.answered.load(Ordering::Relaxed),
        log.subscribed.load(Ordering::Relaxed) as u64,
        log.notifications.load(Ordering::Relaxed),
        log.heartbeats.load(Ordering::Relaxed),
        log.heartbeat_errors.load(Ordering::Relaxed),
        log.mqtt_errors.load(Ordering::Relaxed),
        log.unavailable.load(Ordering::Relaxed),
        log.request_errors.load(Ordering::Relaxed),
    ]
}

/// When this process was started by `Fleet::start`: brings up its part of
/// the fleet, writes each claim (`claim <run> <worker> <unix µs>`) and its
/// counters every 20 ms (`count ...`) to stdout, and exits when stdin closes.
/// Call first thing in a bench's `main`; returns at once in the bench itself.
pub fn serve_fleet_part() {
    let Ok(spec) = std::env::var(FLEET_ENV) else { return };
    let part: FleetPart = serde_json::from_str(&spec).expect("fleet part");
    super::main(async move {
        let log = Arc::new(Log::default());
        log.echo.store(true, Ordering::Relaxed);
        {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let c = counters(&log);
                    println!("count {}", c.map(|v| v.to_string()).join(" "));
                    tokio::time::sleep(COUNT_EVERY).await;
                }
            });
        }
        tokio::spawn(bring_up_part(part, log.clone()));
        // The bench closes stdin (or ends) when it is done.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        log.stopping.store(true, Ordering::Relaxed);
    });
    std::process::exit(0);
}

async fn bring_up_part(part: FleetPart, log: Arc<Log>) {
    bring_up(&part.front, &log, part.range).await;
}

/// Simulated workers in processes of their own: each worker holds two
/// descriptors in the process that runs it, so a fleet larger than one
/// process's open-file limit is spread over several. Their claims and
/// counters are gathered into one `Log`, on which `dispatch_round` and
/// `quiet` work as with workers in this process.
pub struct Fleet {
    children: Vec<tokio::process::Child>,
}

impl Fleet {
    /// Starts one process of this bench binary per part, each bringing up
    /// its workers through its own front; returns once they all run.
    pub fn start(parts: Vec<(Front, Range<usize>)>, log: Arc<Log>) -> Fleet {
        let exe = std::env::current_exe().expect("the bench binary");
        let slots = Arc::new(Mutex::new(vec![[0u64; COUNTERS]; parts.len()]));
        let mut children = Vec::new();
        for (i, (front, range)) in parts.into_iter().enumerate() {
            let spec = serde_json::to_string(&FleetPart { front, range }).unwrap();
            let mut child = tokio::process::Command::new(&exe)
                .env(FLEET_ENV, spec)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start a fleet process");
            let out = child.stdout.take().unwrap();
            let (log, slots) = (log.clone(), slots.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut f = line.split(' ');
                    match f.next() {
                        Some("claim") => {
                            let v: Vec<u64> = f.map(|x| x.parse().unwrap()).collect();
                            // Both clocks are this machine's: the claim's age
                            // on the wall clock dates it on the monotonic one.
                            let age = Duration::from_micros(unix_micros().saturating_sub(v[2]));
                            let at = Instant::now() - age;
                            log.claims.lock().unwrap().entry(v[0] as i64).or_default().push((v[1] as i64, at));
                            log.claimed.notify_waiters();
                        }
                        Some("count") => {
                            let mut slots = slots.lock().unwrap();
                            for (k, x) in f.enumerate() {
                                slots[i][k] = x.parse().unwrap();
                            }
                            let sum = |k: usize| slots.iter().map(|s| s[k]).sum::<u64>();
                            log.sent.store(sum(0), Ordering::Relaxed);
                            log.answered.store(sum(1), Ordering::Relaxed);
                            log.subscribed.store(sum(2) as usize, Ordering::Relaxed);
                            log.notifications.store(sum(3), Ordering::Relaxed);
                            log.heartbeats.store(sum(4), Ordering::Relaxed);
                            log.heartbeat_errors.store(sum(5), Ordering::Relaxed);
                            log.mqtt_errors.store(sum(6), Ordering::Relaxed);
                            log.unavailable.store(sum(7), Ordering::Relaxed);
                            log.request_errors.store(sum(8), Ordering::Relaxed);
                            drop(slots);
                            log.answered_note.notify_waiters();
                        }
                        _ => eprintln!("fleet process {i}: {line}"),
                    }
                }
                if !log.stopping.load(Ordering::Relaxed) {
                    eprintln!("fleet process {i} ended before the bench did");
                    std::process::exit(1);
                }
            });
            children.push(child);
        }
        Fleet { children }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
            let _ = c.start_kill();
        }
    }
}
