//! Fan-out benchmark: N workers of one pool connected over TLS (rumqttc, each its
//! own worker and tenant); how long one pool notification takes to reach all of
//! them, p50/p99 over many rounds, published directly; and how long a run
//! becoming READY in PostgreSQL takes to reach the one worker the bridge tells
//! of it. The broker runs in a child process so that its memory can be read on
//! its own.
//!
//! `cargo bench -p hangar-broker --bench fanout -- [--subscribers N] [--rounds R]`

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_broker::{Broker, Notification, WORKER_TOKEN_KIND, wire};
use hangar_config::{BrokerConfig, BrokerLimits};
use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
use hangar_db::runs::{self, NewRun};
use hangar_db::schema::{stacks, worker_pools, workers};
use hangar_db::{Database, Password, migrate};
use hangar_testkit::{PgServer, TestDir};
use hangar_types::{RunKind, RunState};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::Notify;

const CHILD_ENV: &str = "HANGAR_FANOUT_BROKER";

fn main() {
    hangar_certs::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if std::env::var_os(CHILD_ENV).is_some() {
        rt.block_on(broker_child());
        return;
    }
    let mut subscribers = 1000;
    let mut rounds = 200;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--subscribers" => subscribers = args.next().and_then(|v| v.parse().ok()).expect("--subscribers N"),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            _ => {} // cargo bench passes --bench
        }
    }
    rt.block_on(bench(subscribers, rounds));
}

/// The broker alone in this process: configured from the environment, told what
/// to publish on stdin.
async fn broker_child() {
    let var = |k: &str| std::env::var(format!("{CHILD_ENV}_{k}")).unwrap_or_else(|_| panic!("{k} missing"));
    let ca_pem = std::fs::read(var("DB_CA")).unwrap();
    let db = Database::new("127.0.0.1", var("DB_PORT").parse().unwrap(), "hangar", "hangar", Password::new(var("DB_PASSWORD")), &ca_pem, "fanout-broker")
        .unwrap();
    let pool = db.pool(Some(16)).unwrap();
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_file: var("CERT").into(),
        key_file: var("KEY").into(),
        ca_file: var("CA").into(),
        limits: BrokerLimits { max_connections: 20_000, max_pending: 4_096, ..BrokerLimits::default() },
    };
    let broker = Broker::start(config, db, pool).await.expect("broker");
    while !broker.status().await.bridge {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("listening {}", broker.local_addr());
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|p| p.parse::<i64>().ok())) {
            (Some("pool"), Some(pool)) => {
                broker.publish_to_pool(pool, &Notification::WorkAvailable { pool }).await.unwrap();
            }
            (Some("connections"), _) => println!("connections {}", broker.connections()),
            _ => break,
        }
    }
    broker.shutdown();
    broker.wait().await;
}

struct ChildBroker {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    port: u16,
}

impl ChildBroker {
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }
    fn connections(&mut self) -> usize {
        self.send("connections 0");
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().strip_prefix("connections ").and_then(|n| n.parse().ok()).expect("connections reply")
    }
    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

async fn bench(n: usize, rounds: usize) {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let db = pg.database().pool(Some(4)).unwrap();
    let dir = TestDir::new("fanout");
    let pki = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    pki.ensure("broker", &LeafRequest::server("broker", &["127.0.0.1"]), time::Duration::days(1)).unwrap();

    // The pool, its workers (certificate + token each), a stack and a run.
    let started = Instant::now();
    let mut c = db.get().await.unwrap();
    let pool: i64 = diesel::insert_into(worker_pools::table)
        .values(worker_pools::name.eq("bench"))
        .returning(worker_pools::id)
        .get_result(&mut c)
        .await
        .unwrap();
    let mut identities = Vec::with_capacity(n);
    for i in 0..n {
        let id: i64 = diesel::insert_into(workers::table)
            .values((
                workers::pool_id.eq(pool),
                workers::name.eq(format!("host-{i}")),
                workers::pool_generation.eq(1),
                workers::cert_serial.eq(format!("pending-{i}")),
                workers::cert_not_after.eq(chrono::Utc::now() + chrono::Duration::days(1)),
            ))
            .returning(workers::id)
            .get_result(&mut c)
            .await
            .unwrap();
        let issued = pki
            .ca()
            .issue(&LeafRequest {
                common_name: format!("host-{i}"),
                names: vec![],
                organization: Some(wire::tenant(id)),
                usage: Usage::Client,
                validity: time::Duration::days(1),
            })
            .unwrap();
        let token = hangar_crypto::new_token(WORKER_TOKEN_KIND);
        diesel::update(workers::table.find(id))
            .set((workers::cert_serial.eq(&issued.serial_hex), workers::token_hash.eq(&token.hash)))
            .execute(&mut c)
            .await
            .unwrap();
        identities.push((id, token.token.expose().to_string(), issued));
    }
    let stack: i64 = diesel::insert_into(stacks::table)
        .values((
            stacks::slug.eq("bench"),
            stacks::name.eq("bench"),
            stacks::repository.eq("https://git.example/bench.git"),
            stacks::branch.eq("main"),
            stacks::tool_version.eq("1.9.0"),
            stacks::worker_pool_id.eq(pool),
        ))
        .returning(stacks::id)
        .get_result(&mut c)
        .await
        .unwrap();
    let new_run = NewRun {
        stack_id: stack,
        kind: RunKind::Proposed,
        commit_sha: "b".repeat(40),
        branch: "main".into(),
        command: None,
        triggered_by: "bench".into(),
    };
    let run = runs::create(&mut c, &new_run, "bench").await.unwrap();
    eprintln!("{n} workers prepared in {:?}", started.elapsed());

    // The broker in its own process.
    let prefix = CHILD_ENV;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, "1")
        .env(format!("{prefix}_DB_PORT"), pg.port.to_string())
        .env(format!("{prefix}_DB_PASSWORD"), pg.app_password())
        .env(format!("{prefix}_DB_CA"), pg.ca_path())
        .env(format!("{prefix}_CERT"), pki.cert_path("broker"))
        .env(format!("{prefix}_KEY"), pki.key_path("broker"))
        .env(format!("{prefix}_CA"), pki.ca_cert_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start the broker process");
    let stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("broker address");
    let mut broker = ChildBroker { child, stdin, out, port };
    let (rss_idle, _) = broker.memory();

    // Subscribers, connected in batches (each TLS handshake and admission is real).
    let received = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let wake = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let ca = std::fs::read(pki.ca_cert_path()).unwrap();
    let roots = hangar_certs::tls::roots_from_pem(&ca).unwrap();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for chunk in identities.chunks(100) {
        let mut batch = Vec::new();
        for (id, token, issued) in chunk {
            let chain = hangar_certs::tls::parse_certs(issued.cert_pem.as_bytes()).unwrap();
            let key = {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_deref().unwrap().as_bytes()).unwrap()
            };
            let tls = hangar_certs::tls::client_config(roots.clone(), Some((chain, key))).unwrap();
            let name = wire::tenant(*id);
            let mut o = MqttOptions::new(name.clone(), "127.0.0.1", broker.port);
            o.set_keep_alive(Duration::from_secs(120));
            o.set_credentials(name, token.clone());
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
            // As the worker does: one wildcard filter over its own tenant.
            let filter = format!("{}#", wire::tenant_prefix(*id));
            batch.push(tokio::spawn(subscriber(o, filter, received.clone(), target.clone(), wake.clone(), stopping.clone())));
        }
        for h in batch {
            clients.push(h.await.unwrap());
        }
    }
    let connect_time = started.elapsed();
    assert_eq!(broker.connections(), n, "every subscriber connected");
    let (rss_connected, _) = broker.memory();
    eprintln!("{n} subscribers connected and subscribed in {connect_time:?}; broker pid {}", broker.child.id());

    // Rounds: the next notification goes out only once the previous reached everyone.
    let mut direct = Vec::with_capacity(rounds);
    let mut expected = 0;
    for _ in 0..rounds.min(20) {
        // Warm-up, not measured.
        expected += n;
        target.store(expected, Ordering::Release);
        broker.send(&format!("pool {pool}"));
        wait_all(&received, &wake, expected).await;
    }
    let mut samples = Vec::new();
    for r in 0..rounds {
        expected += n;
        target.store(expected, Ordering::Release);
        let t = Instant::now();
        broker.send(&format!("pool {pool}"));
        wait_all(&received, &wake, expected).await;
        direct.push(t.elapsed());
        if (r + 1) % (rounds / 5).max(1) == 0 {
            samples.push((r + 1, broker.memory().0));
        }
    }
    let mut via_db = Vec::with_capacity(rounds / 2);
    for _ in 0..rounds / 2 {
        // One READY run is announced to one worker, not to the pool.
        expected += 1;
        target.store(expected, Ordering::Release);
        let t = Instant::now();
        runs::transition(&mut c, run.id, None, RunState::Ready, "bench", "bench").await.unwrap();
        wait_all(&received, &wake, expected).await;
        via_db.push(t.elapsed());
        runs::transition(&mut c, run.id, None, RunState::Queued, "bench", "bench").await.unwrap();
    }
    let (rss_after, hwm) = broker.memory();

    let report = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        println!(
            "{name}: {} rounds to {n} subscribers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            v.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            v.last().unwrap().as_secs_f64() * 1e3
        );
    };
    println!("fan-out, {n} TLS subscribers in one pool (each on /tenants/w<id>/#), QoS 0 notifications");
    println!("connect + subscribe all: {:.1} s", connect_time.as_secs_f64());
    report("published by the server", direct);
    report("run READY in PostgreSQL -> bridge -> the one worker told (not a fan-out)", via_db);
    println!(
        "broker process RSS: {:.1} MiB idle, {:.1} MiB with {n} connected ({:.1} KiB per connection), {:.1} MiB after the rounds (peak {:.1} MiB)",
        rss_idle as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        (rss_connected.saturating_sub(rss_idle)) as f64 / n as f64,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    stopping.store(true, Ordering::Relaxed);
    let growth: Vec<String> =
        samples.iter().map(|(r, kib)| format!("{r}: {:.1}", *kib as f64 / 1024.0)).collect();
    println!("broker RSS (MiB) after rounds {}", growth.join(", "));
    broker.send("quit");
    let _ = broker.child.wait();
    drop(clients);
}

/// Connects, subscribes to its pool topic and counts what arrives.
async fn subscriber(
    o: MqttOptions,
    topic: String,
    received: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    stopping: Arc<AtomicBool>,
) -> AsyncClient {
    let mut attempt = 0;
    loop {
        let (client, mut eventloop) = AsyncClient::new(o.clone(), 16);
        client.subscribe(&topic, QoS::AtMostOnce).await.unwrap();
        let (received, target, wake, stopping) = (received.clone(), target.clone(), wake.clone(), stopping.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        tokio::spawn(async move {
            let mut subscribed = Some(tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        // Only the delivery completing a round wakes the measuring task.
                        if received.fetch_add(1, Ordering::AcqRel) + 1 == AtomicUsize::load(&target, Ordering::Acquire) {
                            wake.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => match subscribed.take() {
                        // Not in yet (the broker sheds connections beyond its
                        // pending limit): the caller retries.
                        Some(tx) => {
                            let _ = tx.send(false);
                            return;
                        }
                        None if AtomicBool::load(&stopping, Ordering::Relaxed) => return,
                        None => panic!("subscriber lost its connection: {e}"),
                    },
                }
            }
        });
        if rx.await.unwrap_or(false) {
            return client;
        }
        attempt += 1;
        assert!(attempt < 20, "cannot connect a subscriber");
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
    }
}

async fn wait_all(received: &AtomicUsize, wake: &Notify, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Acquire) < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} deliveries", received.load(Ordering::Relaxed));
        let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
    }
}
