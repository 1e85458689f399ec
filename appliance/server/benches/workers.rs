//! Worker dispatch benchmark against the release `hangar server` (hosting the
//! MQTT broker) and `hangar drain`, with real PostgreSQL (fsync on) and Garage,
//! mutual TLS on loopback. Simulated workers speak the protocols the way
//! `hangar-worker run` does: each joined with its own CSR and holds its own
//! certificate, `hwt_` token, HTTPS connection and MQTT session subscribed to
//! its tenant's topics; it heartbeats, and claims when the broker says work is
//! available, when it (re)connects, and at its poll interval, until the server
//! answers 204; a claimed run is reported FAILED at once.
//!
//! 1. Trigger to claim: one idle worker alone in its pool; a tracked run
//!    triggered through GraphQL, scheduled by the drain, announced over MQTT
//!    by the broker bridge, claimed by the worker. Timed at the client from
//!    sending `triggerRun` to the assignment, with the moment the notification
//!    arrived.
//! 2. Many workers: N connected workers of one pool. Runs made READY one at a
//!    time (each waits until every claim it set off is answered), then a burst
//!    of READY runs at once; dispatch latency is from the commit that made a run
//!    READY to the claim that took it. Every run must be claimed exactly once.
//!    The notifications and claim requests each phase set off are counted: the
//!    broker tells one idle worker per READY run, not the pool.
//!    The server's memory is its VmRSS, sampled every 100 ms.
//!
//! `cargo bench -p hangar-server --bench workers -- [--quick] [--workers N]
//! [--runs M] [--trickle K]`. Each worker holds two connections (HTTPS and
//! MQTT), with a descriptor at each end, in this process and in the server:
//! the open-file limit (`ulimit -n`) bounds N at about half of it.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_db::runs::NewRun;
use hangar_testkit::{ChildProcess, TestDir, cargo_bin, wait_for};
use hangar_types::worker::{HostInfo, JoinRequest, JoinResponse, Notification, RunAssignment, StateReport, WorkerRoute};
use hangar_types::{RunKind, RunState};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use support::{Appliance, CREATE_STACK, Options, Summary, stack_input};
use tokio::sync::Notify;

/// The worker's defaults (`[timing]` of `worker.toml`).
const HEARTBEAT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_secs(30);

/// A joined worker's credentials and connections.
struct Sim {
    id: i64,
    token: String,
    http: reqwest::Client,
    base: String,
    mqtt: MqttOptions,
    /// One request at a time, so one HTTPS connection: with thousands of
    /// workers the open-file limit (one descriptor per connection at each
    /// end) is the first thing to run out.
    one: tokio::sync::Mutex<()>,
}

impl Sim {
    async fn claim(&self) -> Result<Option<RunAssignment>, u16> {
        let _one = self.one.lock().await;
        let r = self.http.post(format!("{}{}", self.base, WorkerRoute::Claim.path())).bearer_auth(&self.token).send().await.unwrap();
        match r.status().as_u16() {
            204 => Ok(None),
            200 => Ok(Some(r.json().await.unwrap())),
            // The server is out of database connections for now: the worker pauses and asks again.
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

    async fn fail(&self, run: i64) {
        let _one = self.one.lock().await;
        let body = StateReport { to: RunState::Failed, note: "bench".into(), changes: None, commit_message: None };
        let r = self
            .http
            .post(format!("{}{}", self.base, WorkerRoute::ReportState { run }.path()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "report FAILED for run {run}");
    }
}

/// What the simulated workers saw, shared with the measuring task.
#[derive(Default)]
struct Log {
    /// Run id → (worker, when the claim was answered), and every claim of it.
    claims: Mutex<HashMap<i64, Vec<(i64, Instant)>>>,
    claimed: Notify,
    /// Claim requests sent and answered.
    sent: AtomicU64,
    answered: AtomicU64,
    answered_note: Notify,
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    subscribed: AtomicUsize,
    notifications: AtomicU64,
    /// When each notification arrived (kept for the single-worker measurement).
    notified_at: Mutex<Vec<Instant>>,
    mqtt_errors: AtomicU64,
    /// Claims answered 503 and asked again after a pause.
    unavailable: AtomicU64,
    stopping: AtomicBool,
}

async fn join(app: &Appliance, admin: &str, pool: &str, name: String, broker_port: u16) -> Sim {
    let d = app.ok(admin, "mutation($p: String!) { createJoinToken(pool: $p) { token } }", json!({ "p": pool })).await;
    let token = d["createJoinToken"]["token"].as_str().unwrap().to_string();
    let (key, csr) = hangar_certs::worker_csr(&name).unwrap();
    let req = JoinRequest {
        token,
        name: name.clone(),
        csr_pem: csr,
        host: HostInfo { hostname: name, os: "linux".into(), arch: "amd64".into(), version: "bench".into() },
    };
    let r = app.client.post(app.url(WorkerRoute::JOIN_PATH)).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let resp: JoinResponse = r.json().await.unwrap();
    let ca_pem = std::fs::read(app.ca_path()).unwrap();
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
    let mut mqtt = MqttOptions::new(tenant.clone(), "127.0.0.1", broker_port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_credentials(tenant, resp.worker_token.clone())
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    Sim { id: resp.worker_id, token: resp.worker_token, http, base: app.url(""), mqtt, one: Default::default() }
}

/// Runs one simulated worker until the log says stop.
fn drive(sim: Sim, log: Arc<Log>, record_notifications: bool) {
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
                        Err(_) => {
                            log.unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(30));
                        }
                    }
                };
                let at = Instant::now();
                if let Some(a) = &got {
                    log.claims.lock().unwrap().entry(a.run_id).or_default().push((sim.id, at));
                    log.claimed.notify_waiters();
                }
                log.answered.fetch_add(1, Ordering::Relaxed);
                log.answered_note.notify_waiters();
                match got {
                    Some(a) => sim.fail(a.run_id).await,
                    None => break,
                }
            }
        }
    });
}

/// Waits until run `id` has been claimed and returns when.
async fn claimed_at(log: &Log, id: i64) -> Instant {
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

/// Waits until every claim request sent has been answered.
async fn quiet(log: &Log) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let wait = log.answered_note.notified();
        if log.answered.load(Ordering::Relaxed) >= log.sent.load(Ordering::Relaxed) {
            return;
        }
        assert!(Instant::now() < deadline, "claims still unanswered after 600 s");
        let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
    }
}

async fn new_run(c: &mut diesel_async::AsyncPgConnection, stack_id: i64) -> i64 {
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

fn main() {
    support::main(async move {
        let quick = support::quick();
        let n_workers: usize = support::arg("--workers").unwrap_or(if quick { 200 } else { 1000 });
        let n_burst: usize = support::arg("--runs").unwrap_or(n_workers);
        let n_trickle: usize = support::arg("--trickle").unwrap_or(if quick { 30 } else { 100 });
        let files = TestDir::new("bench-workers");
        let tools = files.subdir("tools");
        std::fs::create_dir_all(tools.join("terraform/1.0.3")).unwrap();
        std::fs::write(tools.join("terraform/1.0.3/terraform"), vec![7u8; 1 << 20]).unwrap();
        let extra = format!("tools_dir = \"{}\"\n", tools.display());
        let support::Bench { app, admin, .. } =
            support::start(Options { server_extra: extra, broker: true, ..Options::default() }).await;
        println!("open files allowed per process: {}\n", support::fd_limit());
        wait_for("the hosted broker to be ready", Duration::from_secs(60), || async {
            let (status, body) = app.ready().await;
            (status == 200 && body.to_string().contains("broker")).then_some(())
        })
        .await;
        let broker_port = app.broker_port.unwrap();
        let mut stacks = HashMap::new();
        for pool in ["solo", "crowd"] {
            app.ok(&admin, "mutation($n: String!) { createWorkerPool(name: $n) { id } }", json!({ "n": pool })).await;
            let mut input = stack_input(pool, "https://git.invalid/bench.git");
            input["tool"] = json!("TERRAFORM");
            input["toolVersion"] = json!("1.0.3");
            input["workerPool"] = json!(pool);
            let stack = app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
            let id: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();
            stacks.insert(pool, id);
        }

        // ---- 1. trigger to claim, one idle worker ----
        let mut drain = std::process::Command::new(cargo_bin("hangar"));
        drain.arg("--config").arg(&app.config).arg("drain").env("HANGAR_LOG", "warn").stdin(std::process::Stdio::null());
        let mut drain = ChildProcess::spawn(drain, "drain", app.dir.path());
        let solo_log = Arc::new(Log::default());
        let solo = join(&app, &admin, "solo", "solo".into(), broker_port).await;
        let solo_id = solo.id;
        drive(solo, solo_log.clone(), true);
        wait_for("the single worker to subscribe", Duration::from_secs(60), || async {
            (solo_log.subscribed.load(Ordering::Relaxed) > 0).then_some(())
        })
        .await;
        quiet(&solo_log).await;
        let runs = if quick { 50 } else { 300 };
        let (mut total, mut to_notified, mut trigger_answered) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs + 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let d = app
                .ok(
                    &admin,
                    "mutation($c: String) { triggerRun(stack: \"solo\", commitSha: $c) { id } }",
                    json!({ "c": "a".repeat(40) }),
                )
                .await;
            let answered = started.elapsed();
            let id: i64 = d["triggerRun"]["id"].as_str().unwrap().parse().unwrap();
            let at = claimed_at(&solo_log, id).await;
            let claims = solo_log.claims.lock().unwrap()[&id].clone();
            assert_eq!(claims, vec![(solo_id, at)], "run {id} claimed once, by the only worker");
            let notified = solo_log.notified_at.lock().unwrap().iter().copied().find(|t| *t >= started);
            if i >= 5 {
                total.push(at - started);
                trigger_answered.push(answered);
                if let Some(n) = notified {
                    to_notified.push(n - started);
                }
            }
            quiet(&solo_log).await;
        }
        drain.terminate(Duration::from_secs(10));
        let (t, n, a) = (Summary::of(total), Summary::of(to_notified), Summary::of(trigger_answered));
        println!("| trigger to claim (one idle worker on MQTT) | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        println!("| `triggerRun` answered | {} | {:.1} ms | {:.1} ms | {:.1} ms |", a.n, a.p50, a.p99, a.max);
        println!("| `work_available` at the worker | {} | {:.1} ms | {:.1} ms | {:.1} ms |", n.n, n.p50, n.p99, n.max);
        println!("| claim answered (worker start) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n", t.n, t.p50, t.p99, t.max);

        // ---- 2. many workers ----
        let server_pid = app.server.as_ref().unwrap().pid();
        let peak = Arc::new(AtomicU64::new(support::rss_kib(server_pid)));
        {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(support::rss_kib(server_pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let rss_before = support::rss_kib(server_pid);
        let log = Arc::new(Log::default());
        let joined_at = Instant::now();
        let mut started = 0;
        for chunk in (0..n_workers).collect::<Vec<_>>().chunks(100) {
            let sims = futures::future::join_all(
                chunk.iter().map(|i| join(&app, &admin, "crowd", format!("sim-{i}"), broker_port)),
            )
            .await;
            for sim in sims {
                drive(sim, log.clone(), false);
                started += 1;
            }
            // Connect in steps, as a fleet coming up does, within the broker's pending limit.
            let target = started;
            wait_for("a batch of workers to subscribe", Duration::from_secs(300), || async {
                (log.subscribed.load(Ordering::Relaxed) >= target).then_some(())
            })
            .await;
        }
        let join_secs = joined_at.elapsed().as_secs_f64();
        quiet(&log).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_connected = support::rss_kib(server_pid);
        eprintln!("{n_workers} workers joined and subscribed in {join_secs:.1} s");

        let db = app.pg.database().pool(Some(2)).unwrap();
        let mut c = db.get().await.unwrap();
        let crowd = stacks["crowd"];
        let hb_start = (log.heartbeats.load(Ordering::Relaxed), Instant::now());
        let (sent_before, notified_before) = (log.sent.load(Ordering::Relaxed), log.notifications.load(Ordering::Relaxed));

        // One READY run at a time: one idle worker hears of it and asks.
        let mut trickle = Vec::with_capacity(n_trickle);
        for _ in 0..n_trickle {
            let id = new_run(&mut c, crowd).await;
            let ready = hangar_db::runs::schedule_stack(&mut c, crowd, "bench").await.unwrap();
            let ready_at = Instant::now();
            assert_eq!(ready.len(), 1);
            trickle.push(claimed_at(&log, id).await - ready_at);
            quiet(&log).await;
        }
        let trickle_requests = log.sent.load(Ordering::Relaxed) - sent_before;
        let trickle_notes = log.notifications.load(Ordering::Relaxed) - notified_before;

        // A burst: many runs READY in one commit.
        let (burst_sent_before, burst_notified_before) =
            (log.sent.load(Ordering::Relaxed), log.notifications.load(Ordering::Relaxed));
        let mut ids = Vec::with_capacity(n_burst);
        for _ in 0..n_burst {
            ids.push(new_run(&mut c, crowd).await);
        }
        let ready = hangar_db::runs::schedule_stack(&mut c, crowd, "bench").await.unwrap();
        let ready_at = Instant::now();
        assert_eq!(ready.len(), n_burst);
        let mut burst = Vec::with_capacity(n_burst);
        for id in &ids {
            burst.push(claimed_at(&log, *id).await - ready_at);
        }
        let burst_secs = burst.iter().max().unwrap().as_secs_f64();
        quiet(&log).await;
        let burst_requests = log.sent.load(Ordering::Relaxed) - burst_sent_before;
        let burst_notes = log.notifications.load(Ordering::Relaxed) - burst_notified_before;
        let hb_rate = (log.heartbeats.load(Ordering::Relaxed) - hb_start.0) as f64 / hb_start.1.elapsed().as_secs_f64();
        drop(c);

        let claims = log.claims.lock().unwrap();
        let expected = n_trickle + n_burst;
        let twice: Vec<_> = claims.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| *k).collect();
        assert!(twice.is_empty(), "runs claimed more than once: {twice:?}");
        assert_eq!(claims.len(), expected, "every run claimed");
        let (t, b) = (Summary::of(trickle), Summary::of(burst));
        println!(
            "{n_workers} workers: joined and subscribed in {join_secs:.1} s; heartbeats {hb_rate:.0}/s ({} failed); MQTT reconnects {}; claims answered 503 and retried {}",
            log.heartbeat_errors.load(Ordering::Relaxed),
            log.mqtt_errors.load(Ordering::Relaxed),
            log.unavailable.load(Ordering::Relaxed)
        );
        println!(
            "one READY run at a time: {trickle_notes} notifications and {trickle_requests} claim requests for {n_trickle} runs"
        );
        println!("burst: {burst_notes} notifications and {burst_requests} claim requests for {n_burst} runs");
        println!("| simulated workers | READY runs | dispatch | p50 | p99 | max | server RSS before → connected → peak | each run claimed once |");
        println!("|---|---|---|---|---|---|---|---|");
        let rss = format!(
            "{} → {} → {} MiB",
            rss_before / 1024,
            rss_connected / 1024,
            peak.load(Ordering::Relaxed) / 1024
        );
        println!(
            "| {n_workers} | {n_trickle}, one at a time | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | {rss} | yes |",
            t.p50, t.p99, t.max
        );
        println!(
            "| {n_workers} | {n_burst} at once ({:.0} claims/s) | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | {rss} | yes ({} runs, {} claims) |",
            n_burst as f64 / burst_secs,
            b.p50,
            b.p99,
            b.max,
            claims.len(),
            claims.values().map(Vec::len).sum::<usize>()
        );
        log.stopping.store(true, Ordering::Relaxed);
        solo_log.stopping.store(true, Ordering::Relaxed);
    });
}
