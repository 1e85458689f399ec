//! Queue benchmark: no-op jobs through the PostgreSQL queue on this machine,
//! side by side with graphile-worker on the same PostgreSQL.
//!
//! `cargo bench -p hangar-testkit --bench queue` (add `-- --quick` for a short
//! run, `-- --only hangar` to leave graphile-worker out).
//! Measures sustained throughput with batched claims and acknowledgements (a
//! producer enqueuing while consumers drain), the drain rate of a backlog, and
//! enqueue-to-start latency with an idle consumer woken by LISTEN/NOTIFY.
//! PostgreSQL runs with fsync and synchronous commit on, as on an appliance.
//!
//! graphile-worker (the npm package, installed by `scripts/prepare.sh --for
//! test` under `$HANGAR_CACHE/npm/graphile-worker`, or at `$GRAPHILE_WORKER_DIR`)
//! runs in node with the settings its performance documentation gives
//! (`benches/graphile/consumer.mjs`): the same producer enqueues through its SQL
//! API (`add_jobs` in batches of 1,000, `add_job` for single jobs), and the same
//! measurements are taken: jobs/s from the first enqueue until the queue is
//! empty, and the time from just before the enqueue to the handler's start
//! (Hangar's and graphile-worker's jobs taking turns, so that both see the
//! same load from the rest of the machine).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::sql_types::{Array, BigInt, Json, Text};
use hangar_db::migrate;
use hangar_db::queue::{self, Consumer, ConsumerConfig, Handlers, NewJob, handler_fn};
use hangar_testkit::PgServer;
use hangar_testkit::pg::PgOptions;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let peer = !std::env::args().collect::<Vec<_>>().windows(2).any(|w| w[0] == "--only" && w[1] == "hangar");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let graphile = peer.then(graphile_dir);
        let pg = PgServer::start_with(PgOptions { durable: true, ..Default::default() }).await;
        migrate::run_pending(&pg.database()).await.unwrap();
        println!("machine: {}", machine());
        println!("postgres: fsync=on synchronous_commit=on, loopback TLS\n");

        let n = if quick { 20_000 } else { 200_000 };
        let samples = if quick { 300 } else { 2_000 };
        // Each of Hangar's runs is followed by graphile-worker's with as many
        // consumers, so that the two of a pair see about the same load.
        let (mut hangar, mut peer) = (Vec::new(), Vec::new());
        for (consumers, batch) in [(1usize, 200i64), (2, 500)] {
            let r = sustained(&pg, n, consumers, batch).await;
            println!(
                "hangar sustained: {n} jobs, {consumers} consumer(s), claim batch {batch}: {:.0} jobs/s end to end (enqueue alone {:.0} jobs/s)",
                r.0, r.1
            );
            hangar.push(r.0);
            if let Some(dir) = &graphile {
                let r = graphile_sustained(&pg, dir, n, consumers).await;
                println!(
                    "graphile-worker sustained: {n} jobs, {consumers} instance(s) of 24 concurrent jobs: {:.0} jobs/s end to end (enqueue alone {:.0} jobs/s)",
                    r.0, r.1
                );
                peer.push(r.0);
            }
            println!("machine: {}", machine());
        }
        let r = backlog(&pg, n).await;
        println!("hangar backlog drain: {n} jobs already queued: {r:.0} jobs/s");

        let Some(dir) = graphile else {
            let (p50, p99, max) = percentiles(latency(&pg, None, samples).await.0);
            println!(
                "hangar enqueue-to-start latency, idle consumer, {samples} jobs at ~200/s: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
            );
            return;
        };
        println!("machine: {}", machine());
        let (mine, theirs) = latency(&pg, Some(&dir), samples).await;
        let ((p50, p99, max), (g50, g99, gmax)) = (percentiles(mine), percentiles(theirs));
        println!(
            "enqueue-to-start latency, idle consumer, {samples} jobs each, Hangar's and graphile-worker's taking turns, one every ~5 ms:"
        );
        println!("  hangar: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
        println!("  graphile-worker (1 instance): p50 {g50:.2} ms, p99 {g99:.2} ms, max {gmax:.2} ms");
        println!("machine: {}", machine());
        println!(
            "hangar / graphile-worker: throughput {:.2}x (1 consumer vs 1 instance), {:.2}x (2 vs 2); latency p50 {:.2}x, p99 {:.2}x (below 1 is faster)",
            hangar[0] / peer[0],
            hangar[1] / peer[1],
            p50 / g50,
            p99 / g99
        );
    });
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpu}, {cores} cores, {} GiB RAM, load average {}", mem / 1024 / 1024, load.join(" "))
}

fn noop_consumer(pg: &PgServer, name: &str, batch: i64, counter: Arc<AtomicU64>) -> Consumer {
    let mut handlers = Handlers::new();
    handlers.register(
        "noop",
        handler_fn(move |_job| {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }),
    );
    let mut cfg = ConsumerConfig::new("default", name);
    cfg.batch_size = batch;
    cfg.concurrency = (batch as usize) * 2;
    let db = pg.database();
    let pool = db.pool(Some(8)).unwrap();
    Consumer::new(db, pool, cfg, handlers)
}

async fn wait_acked(pg: &PgServer) {
    let mut conn = pg.database().connect().await.unwrap();
    loop {
        let c = queue::counts(&mut conn).await.unwrap();
        if c.ready + c.running + c.scheduled == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A producer enqueues `n` jobs in batches of 1,000 while consumers drain them.
/// Returns (end-to-end jobs/s, enqueue-only jobs/s).
async fn sustained(pg: &PgServer, n: u64, consumers: usize, batch: i64) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let c = noop_consumer(pg, &format!("bench-{i}"), batch, done.clone());
        tasks.push(tokio::spawn(c.run(stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut conn = pg.database().connect().await.unwrap();
    let jobs: Vec<NewJob> = (0..1000).map(|_| NewJob::new("noop", json!({}))).collect();
    for _ in 0..n / 1000 {
        queue::enqueue_batch(&mut conn, &jobs).await.unwrap();
    }
    let enqueue_rate = n as f64 / start.elapsed().as_secs_f64();
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_acked(pg).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    (rate, enqueue_rate)
}

/// `n` jobs are queued first; then one consumer drains them.
async fn backlog(pg: &PgServer, n: u64) -> f64 {
    let mut conn = pg.database().connect().await.unwrap();
    let jobs: Vec<NewJob> = (0..1000).map(|_| NewJob::new("noop", json!({}))).collect();
    for _ in 0..n / 1000 {
        queue::enqueue_batch(&mut conn, &jobs).await.unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let c = noop_consumer(pg, "backlog", 500, done.clone());
    let start = Instant::now();
    let task = tokio::spawn(c.run(stop.clone()));
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_acked(pg).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    rate
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Single jobs enqueued one at a time, ~5 ms apart, to an idle consumer; with
/// `graphile`, each of Hangar's jobs is followed by one of graphile-worker's,
/// so that both see the same load from the rest of the machine. Returns the
/// latencies in ms, Hangar's and graphile-worker's.
async fn latency(pg: &PgServer, graphile: Option<&std::path::Path>, samples: usize) -> (Vec<f64>, Vec<f64>) {
    use diesel_async::RunQueryDsl;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut handlers = Handlers::new();
    handlers.register(
        "timed",
        handler_fn(move |job| {
            let tx = tx.clone();
            async move {
                let sent = job.payload["sent"].as_u64().unwrap_or(0);
                let _ = tx.send((now_nanos().saturating_sub(sent)) as f64 / 1e6);
                Ok(())
            }
        }),
    );
    let db = pg.database();
    let cfg = ConsumerConfig::new("default", "latency");
    let consumer = Consumer::new(db.clone(), db.pool(Some(8)).unwrap(), cfg, handlers);
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let mut peer = match graphile {
        Some(dir) => Some(Graphile::start(pg, dir).await),
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = db.connect().await.unwrap();
    let (mut lat, mut peer_lat) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        queue::enqueue(&mut conn, &NewJob::new("timed", json!({ "sent": now_nanos() }))).await.unwrap();
        lat.push(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(w) = peer.as_mut() {
            diesel::sql_query("SELECT 1 FROM graphile_worker.add_job('timed', $1::json)")
                .bind::<Json, _>(json!({ "sent": now_nanos() }))
                .execute(&mut conn)
                .await
                .unwrap();
            let line = w.line().await;
            let ms: f64 = line.strip_prefix("lat ").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not a latency: {line:?}"));
            peer_lat.push(ms);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    if let Some(w) = peer {
        w.stop().await;
    }
    (lat, peer_lat)
}

/// p50, p99 and max of `v`, in its unit.
fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.50), pct(0.99), *v.last().unwrap())
}

/// Where npm installed graphile-worker; panics with the way to install it.
fn graphile_dir() -> PathBuf {
    let dir = match std::env::var_os("GRAPHILE_WORKER_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("HANGAR_CACHE").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/hangar")
            });
            cache.join("npm/graphile-worker")
        }
    };
    let package = dir.join("node_modules/graphile-worker/package.json");
    assert!(
        package.exists(),
        "graphile-worker is not installed at {}: run scripts/prepare.sh --for test, or add -- --only hangar",
        dir.display()
    );
    dir
}

/// One graphile-worker instance in node, talking over its stdin and stdout.
struct Graphile {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Graphile {
    async fn start(pg: &PgServer, dir: &std::path::Path) -> Graphile {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/graphile/consumer.mjs");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .env("GRAPHILE_WORKER_DIR", dir)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", "hangar")
            .env("PGPASSWORD", pg.app_password())
            .env("PGDATABASE", "hangar")
            .env("PGSSLROOTCERT", pg.ca_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (install Debian's nodejs)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut g = Graphile { child, stdin, lines };
        g.expect("ready").await;
        g
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("graphile-worker said nothing more ({other:?}); its errors are above"),
        }
    }

    async fn expect(&mut self, word: &str) {
        let line = self.line().await;
        assert_eq!(line, word, "graphile-worker's answer");
    }

    async fn ask(&mut self, what: &str) {
        self.stdin.write_all(format!("{what}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn ran(&mut self) -> u64 {
        self.ask("count").await;
        let line = self.line().await;
        line.strip_prefix("ran ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a count: {line:?}"))
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

async fn graphile_jobs_left(conn: &mut diesel_async::AsyncPgConnection) -> i64 {
    // Imported here only: its `load` would shadow the atomics' elsewhere.
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Left {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let left: Left = diesel::sql_query("SELECT count(*) AS n FROM graphile_worker._private_jobs")
        .get_result(conn)
        .await
        .unwrap();
    left.n
}

/// As `sustained`, with `instances` graphile-worker processes consuming.
async fn graphile_sustained(pg: &PgServer, dir: &std::path::Path, n: u64, instances: usize) -> (f64, f64) {
    use diesel_async::RunQueryDsl;
    let mut workers = Vec::new();
    for _ in 0..instances {
        workers.push(Graphile::start(pg, dir).await);
    }
    for w in &mut workers {
        w.ask("reset").await;
        w.expect("reset").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = pg.database().connect().await.unwrap();
    let kinds: Vec<&str> = vec!["noop"; 1000];
    let payloads: Vec<serde_json::Value> = vec![json!({}); 1000];
    let start = Instant::now();
    for _ in 0..n / 1000 {
        diesel::sql_query(
            "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
                 SELECT ROW(t, p, NULL::text, NULL::timestamptz, NULL::smallint, NULL::text, NULL::smallint, NULL::text[])::graphile_worker.job_spec
                 FROM unnest($1::text[], $2::json[]) AS u(t, p)))",
        )
        .bind::<Array<Text>, _>(kinds.clone())
        .bind::<Array<Json>, _>(payloads.clone())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let enqueue_rate = n as f64 / start.elapsed().as_secs_f64();
    loop {
        let mut ran = 0;
        for w in &mut workers {
            ran += w.ran().await;
        }
        if ran >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while graphile_jobs_left(&mut conn).await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for w in workers {
        w.stop().await;
    }
    (rate, enqueue_rate)
}
