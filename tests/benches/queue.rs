//! Queue benchmark: no-op jobs through the PostgreSQL queue on this machine.
//!
//! `cargo bench -p hangar-testkit --bench queue` (add `-- --quick` for a short run).
//! Measures sustained throughput with batched claims and acknowledgements (a
//! producer enqueuing while consumers drain), the drain rate of a backlog, and
//! enqueue-to-start latency with an idle consumer woken by LISTEN/NOTIFY.
//! PostgreSQL runs with fsync and synchronous commit on, as on an appliance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangar_db::migrate;
use hangar_db::queue::{self, Consumer, ConsumerConfig, Handlers, NewJob, handler_fn};
use hangar_testkit::PgServer;
use hangar_testkit::pg::PgOptions;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let pg = PgServer::start_with(PgOptions { durable: true, ..Default::default() }).await;
        migrate::run_pending(&pg.database()).await.unwrap();
        println!("machine: {}", machine());
        println!("postgres: fsync=on synchronous_commit=on, loopback TLS\n");

        let n = if quick { 20_000 } else { 200_000 };
        for (consumers, batch) in [(1usize, 200i64), (2, 500)] {
            let r = sustained(&pg, n, consumers, batch).await;
            println!(
                "sustained: {n} jobs, {consumers} consumer(s), claim batch {batch}: {:.0} jobs/s end to end (enqueue alone {:.0} jobs/s)",
                r.0, r.1
            );
        }
        let r = backlog(&pg, n).await;
        println!("backlog drain: {n} jobs already queued: {r:.0} jobs/s");

        let samples = if quick { 300 } else { 2_000 };
        let (p50, p99, max) = latency(&pg, samples).await;
        println!(
            "enqueue-to-start latency, idle consumer, {samples} jobs at ~200/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p50, p99, max
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
    format!("{cpu}, {cores} cores, {} GiB RAM", mem / 1024 / 1024)
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

/// Single jobs enqueued one at a time, ~5 ms apart, to an idle consumer.
async fn latency(pg: &PgServer, samples: usize) -> (f64, f64, f64) {
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = db.connect().await.unwrap();
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        queue::enqueue(&mut conn, &NewJob::new("timed", json!({ "sent": now_nanos() }))).await.unwrap();
        lat.push(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.50), pct(0.99), *lat.last().unwrap())
}
