//! Fan-out benchmark, Hangar's broker side by side with Mosquitto: N workers of
//! one pool connected over TLS 1.3 with client certificates (rumqttc, each its own
//! tenant), how long one pool notification takes to reach all of them (p50/p99
//! over many rounds), each broker's resident memory per connection and after the
//! rounds; and, for Hangar, how long a run becoming READY in PostgreSQL takes to
//! reach the one worker the bridge tells of it. Each broker runs in a process of
//! its own so that its memory can be read on its own.
//!
//! `cargo bench -p hangar-broker --bench fanout -- [--subscribers N] [--rounds R]
//! [--only hangar|mosquitto] [--wrap PROFILER]`
//!
//! Mosquitto (Debian's `mosquitto`, at `$MOSQUITTO` or `/usr/sbin/mosquitto`) gets
//! the closest configuration to Hangar's broker it allows: TLS 1.3 only, a client
//! certificate required and its CN taken as the username, an ACL confining each
//! client to `/tenants/<username>/#`, loopback only, no persistence. Both brokers
//! see the same subscribers (the same certificates, the same filters) and the
//! same load: one notification per round on each worker's own topic.
//! Hangar's server publishes in-process in one batch; Mosquitto gets the same
//! batch of PUBLISH packets in one write from one TLS client allowed to publish.
//! `--wrap heaptrack` runs Hangar's broker process under that command.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_broker::{Broker, Notification, WORKER_TOKEN_KIND, wire};
use hangar_certs::{CaOptions, CertStore, Issued, LeafRequest, Usage};
use hangar_config::{BrokerConfig, BrokerLimits};
use hangar_db::runs::{self, NewRun};
use hangar_db::schema::{stacks, worker_pools, workers};
use hangar_db::{Database, Password, migrate};
use hangar_testkit::{PgServer, TestDir, free_port};
use hangar_types::{RunKind, RunState};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const CHILD_ENV: &str = "HANGAR_FANOUT_BROKER";
/// Subscribers connect this many at a time (each TLS handshake and admission is real).
const CONNECT_BATCH: usize = 100;
/// The client Mosquitto's ACL lets publish to every tenant: the server's part.
const PUBLISHER: &str = "hangarserver";

struct Args {
    subscribers: usize,
    rounds: usize,
    hangar: bool,
    mosquitto: bool,
    wrap: Option<String>,
}

fn main() {
    hangar_certs::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if std::env::var_os(CHILD_ENV).is_some() {
        rt.block_on(broker_child());
        return;
    }
    let mut a = Args { subscribers: 1000, rounds: 200, hangar: true, mosquitto: true, wrap: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--subscribers" => a.subscribers = args.next().and_then(|v| v.parse().ok()).expect("--subscribers N"),
            "--rounds" => a.rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--only" => match args.next().as_deref() {
                Some("hangar") => a.mosquitto = false,
                Some("mosquitto") => a.hangar = false,
                _ => panic!("--only hangar|mosquitto"),
            },
            "--wrap" => a.wrap = Some(args.next().expect("--wrap COMMAND")),
            _ => {} // cargo bench passes --bench
        }
    }
    assert!(a.rounds >= 5 && a.subscribers >= 1, "at least 5 rounds and 1 subscriber");
    rt.block_on(bench(a));
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

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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

struct ChildBroker {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    port: u16,
    /// The broker's own process (the child itself, or the one the wrapper started).
    pid: u32,
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
}

/// A subscriber's identity: its worker id, its token and its certificate (CN and
/// O both its tenant name, so that each broker finds its identity where it looks).
struct Identity {
    id: i64,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

fn client_tls(roots: &Arc<rustls::RootCertStore>, issued: &Issued) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = hangar_certs::tls::parse_certs(issued.cert_pem.as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_deref().unwrap().as_bytes()).unwrap();
    Arc::new(hangar_certs::tls::client_config(roots.clone(), Some((chain, key))).unwrap())
}

/// What one broker achieved.
struct Figures {
    name: &'static str,
    connect: Duration,
    rounds: Vec<Duration>,
    rss_idle: u64,
    rss_connected: u64,
    rss_after: u64,
    hwm: u64,
    /// (rounds done, RSS in KiB).
    growth: Vec<(usize, u64)>,
}

impl Figures {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.rounds.clone();
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    }
    fn per_connection(&self, n: usize) -> f64 {
        self.rss_connected.saturating_sub(self.rss_idle) as f64 / n as f64
    }
    fn report(&self, n: usize) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("{}:", self.name);
        println!("  connect + subscribe all: {:.1} s", self.connect.as_secs_f64());
        println!(
            "  publish -> last subscriber, {} rounds: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.rounds.len(),
            ms(self.pct(0.50)),
            ms(self.pct(0.99)),
            ms(self.pct(1.0))
        );
        println!(
            "  RSS: {:.1} MiB idle, {:.1} MiB with {n} connected ({:.1} KiB per connection), {:.1} MiB after the rounds (peak {:.1} MiB)",
            self.rss_idle as f64 / 1024.0,
            self.rss_connected as f64 / 1024.0,
            self.per_connection(n),
            self.rss_after as f64 / 1024.0,
            self.hwm as f64 / 1024.0
        );
        let deliveries = (self.rounds.len() * n) as f64;
        println!(
            "  growth over the rounds: {:.1} MiB ({:.3} KiB per delivery); RSS (MiB) after rounds {}",
            self.rss_after as f64 / 1024.0 - self.rss_connected as f64 / 1024.0,
            (self.rss_after as f64 - self.rss_connected as f64) / deliveries,
            self.growth.iter().map(|(r, kib)| format!("{r}: {:.1}", *kib as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
        );
    }
}

async fn bench(a: Args) {
    let n = a.subscribers;
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let db = pg.database().pool(Some(4)).unwrap();
    let dir = TestDir::new("fanout");
    let pki = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    pki.ensure("broker", &LeafRequest::server("broker", &["127.0.0.1"]), time::Duration::days(1)).unwrap();
    let ca = std::fs::read(pki.ca_cert_path()).unwrap();
    let roots = hangar_certs::tls::roots_from_pem(&ca).unwrap();

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
                common_name: wire::tenant(id),
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
        identities.push(Identity { id, token: token.token.expose().to_string(), tls: client_tls(&roots, &issued) });
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

    println!("machine: {}", machine());
    println!("fan-out, {n} TLS 1.3 subscribers with client certificates (each on /tenants/w<id>/#), QoS 0, one notification per worker per round");
    let mut figures = Vec::new();

    if a.hangar {
        // Hangar's broker in its own process.
        let mut cmd = match &a.wrap {
            Some(w) => {
                let mut words = w.split_whitespace();
                let mut cmd = Command::new(words.next().expect("--wrap COMMAND"));
                cmd.args(words).arg(std::env::current_exe().unwrap());
                cmd
            }
            None => Command::new(std::env::current_exe().unwrap()),
        };
        cmd.env(CHILD_ENV, "1")
            .env(format!("{CHILD_ENV}_DB_PORT"), pg.port.to_string())
            .env(format!("{CHILD_ENV}_DB_PASSWORD"), pg.app_password())
            .env(format!("{CHILD_ENV}_DB_CA"), pg.ca_path())
            .env(format!("{CHILD_ENV}_CERT"), pki.cert_path("broker"))
            .env(format!("{CHILD_ENV}_KEY"), pki.key_path("broker"))
            .env(format!("{CHILD_ENV}_CA"), pki.ca_cert_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the broker process");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // A wrapper may say things of its own first.
        let mut line = String::new();
        while !line.starts_with("listening ") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the broker process ended before listening");
        }
        let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("broker address");
        let pid = if a.wrap.is_some() { broker_pid() } else { child.id() };
        let mut broker = ChildBroker { child, stdin, out, port, pid };
        let (rss_idle, _) = memory(broker.pid);

        let (clients, connect) = connect_all(broker.port, &identities, true).await;
        assert_eq!(broker.connections(), n, "every subscriber connected");
        let (rss_connected, _) = memory(broker.pid);
        eprintln!("hangar: {n} subscribers connected and subscribed in {connect:?}; broker pid {}", broker.pid);

        let pid = broker.pid;
        let (rounds, growth) = measure(&clients, a.rounds, n, pid, &mut ToHangar { broker: &mut broker, pool }).await;

        let mut via_db = Vec::with_capacity(a.rounds / 2);
        let mut expected = AtomicUsize::load(&clients.received, Ordering::Acquire);
        for _ in 0..a.rounds / 2 {
            // One READY run is announced to one worker, not to the pool.
            expected += 1;
            clients.target.store(expected, Ordering::Release);
            let t = Instant::now();
            runs::transition(&mut c, run.id, None, RunState::Ready, "bench", "bench").await.unwrap();
            clients.wait_all(expected).await;
            via_db.push(t.elapsed());
            runs::transition(&mut c, run.id, None, RunState::Queued, "bench", "bench").await.unwrap();
        }
        let (rss_after, hwm) = memory(broker.pid);
        let f = Figures { name: "hangar", connect, rounds, rss_idle, rss_connected, rss_after, hwm, growth };
        f.report(n);
        via_db.sort();
        let pct = |p: f64| via_db[((via_db.len() as f64 * p).ceil() as usize).clamp(1, via_db.len()) - 1];
        println!(
            "  run READY in PostgreSQL -> bridge -> the one worker told, {} runs: p50 {:.2} ms, p99 {:.2} ms",
            via_db.len(),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
        figures.push(f);
        clients.stopping.store(true, Ordering::Relaxed);
        broker.send("quit");
        let _ = broker.child.wait();
        clients.close().await;
    }

    if a.mosquitto {
        let mut m = Mosquitto::start(&dir, &pki, &roots, n).await;
        let (rss_idle, _) = memory(m.pid());
        let (clients, connect) = connect_all(m.port, &identities, false).await;
        let (rss_connected, _) = memory(m.pid());
        eprintln!("mosquitto: {n} subscribers connected and subscribed in {connect:?}; pid {}", m.pid());
        let batch = m.batch(&identities, &wire::to_json(&Notification::WorkAvailable { pool }));
        let pid = m.pid();
        let (rounds, growth) = measure(&clients, a.rounds, n, pid, &mut ToMosquitto { stream: &mut m.publisher, batch }).await;
        let (rss_after, hwm) = memory(m.pid());
        let f = Figures { name: "mosquitto", connect, rounds, rss_idle, rss_connected, rss_after, hwm, growth };
        f.report(n);
        figures.push(f);
        clients.stopping.store(true, Ordering::Relaxed);
        m.stop();
        clients.close().await;
    }

    if let [h, m] = &figures[..] {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("hangar / mosquitto:");
        println!("  p50 {:.2}x, p99 {:.2}x", ms(h.pct(0.5)) / ms(m.pct(0.5)), ms(h.pct(0.99)) / ms(m.pct(0.99)));
        println!("  RSS per connection {:.2}x", h.per_connection(n) / m.per_connection(n).max(0.001));
        println!("  RSS after the rounds {:.2}x", h.rss_after as f64 / m.rss_after as f64);
    }
}

/// The process the wrapper (a profiler) started: the one running this bench's
/// own executable, other than this one.
fn broker_pid() -> u32 {
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    for _ in 0..500 {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid != std::process::id() && std::fs::read_link(entry.path().join("exe")).ok().as_deref() == Some(me.as_path()) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the wrapped broker process did not appear");
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpu}, {cores} cores, load average {}", load.join(" "))
}

/// Sends one round: a notification to every subscriber's pool topic.
trait Round {
    async fn publish(&mut self);
}

/// Hangar's server publishes to the pool, in the broker's process.
struct ToHangar<'a> {
    broker: &'a mut ChildBroker,
    pool: i64,
}

impl Round for ToHangar<'_> {
    async fn publish(&mut self) {
        self.broker.send(&format!("pool {}", self.pool));
    }
}

/// The server's client of Mosquitto writes one PUBLISH per subscriber at once.
struct ToMosquitto<'a> {
    stream: &'a mut PublisherStream,
    batch: bytes::Bytes,
}

impl Round for ToMosquitto<'_> {
    async fn publish(&mut self) {
        self.stream.write_all(&self.batch).await.expect("publish to mosquitto");
        self.stream.flush().await.expect("publish to mosquitto");
    }
}

/// Rounds: the next notification goes out only once the previous one reached
/// every subscriber; 20 warm-up rounds are not counted. Returns the round times
/// and the broker's RSS after each fifth of the rounds.
async fn measure(clients: &Clients, rounds: usize, n: usize, pid: u32, publish: &mut impl Round) -> (Vec<Duration>, Vec<(usize, u64)>) {
    let mut expected = AtomicUsize::load(&clients.received, Ordering::Acquire);
    for _ in 0..rounds.min(20) {
        expected += n;
        clients.target.store(expected, Ordering::Release);
        publish.publish().await;
        clients.wait_all(expected).await;
    }
    let mut times = Vec::with_capacity(rounds);
    let mut growth = Vec::new();
    for r in 0..rounds {
        expected += n;
        clients.target.store(expected, Ordering::Release);
        let t = Instant::now();
        publish.publish().await;
        clients.wait_all(expected).await;
        times.push(t.elapsed());
        if (r + 1) % (rounds / 5).max(1) == 0 {
            growth.push((r + 1, memory(pid).0));
        }
    }
    (times, growth)
}

/// The subscribers of one run and what they count.
struct Clients {
    received: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    tasks: Vec<(AsyncClient, JoinHandle<()>)>,
}

impl Clients {
    async fn wait_all(&self, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while AtomicUsize::load(&self.received, Ordering::Acquire) < expected {
            assert!(Instant::now() < deadline, "only {} of {expected} deliveries", AtomicUsize::load(&self.received, Ordering::Relaxed));
            let _ = tokio::time::timeout(Duration::from_millis(50), self.wake.notified()).await;
        }
    }

    /// Waits for every connection to end (the broker was stopped), so that the
    /// next broker starts with this process's descriptors free.
    async fn close(self) {
        for (client, task) in self.tasks {
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Connects every identity to the broker on `port` (with its token as the
/// password when `credentials`), `CONNECT_BATCH` at a time.
async fn connect_all(port: u16, identities: &[Identity], credentials: bool) -> (Clients, Duration) {
    let mut clients = Clients {
        received: Arc::new(AtomicUsize::new(0)),
        target: Arc::new(AtomicUsize::new(usize::MAX)),
        wake: Arc::new(Notify::new()),
        stopping: Arc::new(AtomicBool::new(false)),
        tasks: Vec::with_capacity(identities.len()),
    };
    let started = Instant::now();
    for chunk in identities.chunks(CONNECT_BATCH) {
        let mut batch = Vec::new();
        for ident in chunk {
            let name = wire::tenant(ident.id);
            let mut o = MqttOptions::new(name.clone(), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(120));
            if credentials {
                o.set_credentials(name, ident.token.clone());
            }
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(ident.tls.clone())));
            // As the worker does: one wildcard filter over its own tenant.
            let filter = format!("{}#", wire::tenant_prefix(ident.id));
            batch.push(tokio::spawn(subscriber(
                o,
                filter,
                clients.received.clone(),
                clients.target.clone(),
                clients.wake.clone(),
                clients.stopping.clone(),
            )));
        }
        for h in batch {
            clients.tasks.push(h.await.unwrap());
        }
    }
    (clients, started.elapsed())
}

/// Connects, subscribes to its topics and counts what arrives.
async fn subscriber(
    o: MqttOptions,
    topic: String,
    received: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    stopping: Arc<AtomicBool>,
) -> (AsyncClient, JoinHandle<()>) {
    let mut attempt = 0;
    loop {
        let (client, mut eventloop) = AsyncClient::new(o.clone(), 16);
        client.subscribe(&topic, QoS::AtMostOnce).await.unwrap();
        let (received, target, wake, stopping) = (received.clone(), target.clone(), wake.clone(), stopping.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        let task = tokio::spawn(async move {
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
            return (client, task);
        }
        attempt += 1;
        assert!(attempt < 20, "cannot connect a subscriber");
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
    }
}

type PublisherStream = tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Debian's Mosquitto in its own process, configured as close to Hangar's
/// broker as it allows, and one TLS client of it allowed to publish anywhere.
struct Mosquitto {
    child: Child,
    port: u16,
    publisher: PublisherStream,
    _reader: JoinHandle<()>,
}

impl Mosquitto {
    async fn start(dir: &TestDir, pki: &CertStore, roots: &Arc<rustls::RootCertStore>, n: usize) -> Mosquitto {
        let bin = std::env::var_os("MOSQUITTO").map(PathBuf::from).unwrap_or_else(|| "/usr/sbin/mosquitto".into());
        assert!(bin.exists(), "{} is missing: install Debian's mosquitto (scripts/prepare.sh --for test)", bin.display());
        let home = dir.subdir("mosquitto");
        pki.ensure("mosquitto", &LeafRequest::server("mosquitto", &["127.0.0.1"]), time::Duration::days(1)).unwrap();
        let acl = home.join("acl");
        // Each client reads and writes its own tenant only; the server's
        // publisher may write to every tenant.
        std::fs::write(&acl, format!("pattern readwrite /tenants/%u/#\n\nuser {PUBLISHER}\ntopic write /tenants/#\n")).unwrap();
        let port = free_port();
        let conf = home.join("mosquitto.conf");
        std::fs::write(&conf, mosquitto_conf(port, pki, &acl)).unwrap();
        let log = std::fs::File::create(home.join("mosquitto.log")).unwrap();
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited ({status}); see {}", home.join("mosquitto.log").display());
            }
            assert!(Instant::now() < deadline, "mosquitto does not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let issued = pki
            .ca()
            .issue(&LeafRequest {
                common_name: PUBLISHER.into(),
                names: vec![],
                organization: None,
                usage: Usage::Client,
                validity: time::Duration::days(1),
            })
            .unwrap();
        let (publisher, reader) = mqtt_publisher(port, client_tls(roots, &issued)).await;
        eprintln!("mosquitto listening on {port} (room for {n} subscribers)");
        Mosquitto { child, port, publisher, _reader: reader }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One QoS 0 PUBLISH of `payload` to each identity's pool topic, as one buffer.
    fn batch(&self, identities: &[Identity], payload: &str) -> bytes::Bytes {
        let mut out = BytesMut::new();
        for ident in identities {
            let topic = wire::pool_topic(ident.id);
            let mut body = BytesMut::new();
            body.put_u16(topic.len() as u16);
            body.put_slice(topic.as_bytes());
            body.put_slice(payload.as_bytes());
            out.put_u8(0x30);
            put_remaining_length(&mut out, body.len());
            out.put_slice(&body);
        }
        out.freeze()
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn mosquitto_conf(port: u16, pki: &CertStore, acl: &Path) -> String {
    format!(
        "# Written by Hangar's fan-out benchmark.\n\
         per_listener_settings false\n\
         user root\n\
         persistence false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         max_connections -1\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         connection_messages false\n\
         listener {port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         tls_version tlsv1.3\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        acl = acl.display(),
        ca = pki.ca_cert_path().display(),
        cert = pki.cert_path("mosquitto").display(),
        key = pki.key_path("mosquitto").display(),
    )
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// A bare MQTT 3.1.1 client over TLS that only publishes: CONNECT, CONNACK,
/// then whatever the caller writes. What the broker sends back is read and
/// dropped by the returned task.
async fn mqtt_publisher(port: u16, tls: Arc<rustls::ClientConfig>) -> (PublisherStream, JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS to mosquitto");
    let mut body = BytesMut::new();
    body.put_u16(4);
    body.put_slice(b"MQTT");
    body.put_u8(4); // 3.1.1
    body.put_u8(0x02); // clean session
    body.put_u16(0); // no keep-alive: the rounds may outlast any
    body.put_u16(PUBLISHER.len() as u16);
    body.put_slice(PUBLISHER.as_bytes());
    let mut connect = BytesMut::new();
    connect.put_u8(0x10);
    put_remaining_length(&mut connect, body.len());
    connect.put_slice(&body);
    stream.write_all(&connect).await.unwrap();
    stream.flush().await.unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.expect("CONNACK from mosquitto");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "mosquitto refused the publisher");
    let (mut rd, wr) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    (wr, reader)
}
