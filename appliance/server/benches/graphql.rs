//! GraphQL API benchmark: requests/s and latency of a stack list (100 stacks)
//! and of triggering a run, from concurrent clients over TLS, against the
//! release `hangar server` binary with real PostgreSQL (fsync on) and Garage.
//!
//! `cargo bench -p hangar-server --bench graphql` (add `-- --quick` for a short
//! run). Each client is its own HTTP/1.1 keep-alive connection; latency is
//! measured per request at the client, after a warm-up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Appliance, CREATE_STACK, Options, stack_input};
use serde_json::{Value, json};

const FLAT_LIST: &str = "{ stacks { slug name repository branch projectRoot tool toolVersion autodeploy labels } }";
const LIST_WITH_POOL: &str = "{ stacks { slug name branch labels workerPool { name } } }";
const TRIGGER: &str = "mutation($s: String!, $c: String) { triggerRun(stack: $s, commitSha: $c) { id state } }";

struct Figures {
    requests: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let app = Appliance::start_with(Options { durable_db: true, ..Options::default() }).await;
        let token = app.admin_token().await;
        app.ok(&token, "mutation { createWorkerPool(name: \"bench\") { id } }", json!({})).await;
        for i in 0..100 {
            let mut input = stack_input(&format!("stack-{i:03}"), &format!("https://git.example/infra/stack-{i:03}.git"));
            input["labels"] = json!(["bench", format!("team-{}", i % 7)]);
            input["workerPool"] = json!("bench");
            app.ok(&token, CREATE_STACK, json!({ "i": input })).await;
        }
        let listed = app.ok(&token, FLAT_LIST, json!({})).await;
        assert_eq!(listed["stacks"].as_array().unwrap().len(), 100);

        println!("machine: {}", machine());
        println!("server: release `hangar server`, PostgreSQL fsync=on, Garage behind `hangar tls-proxy`, TLS 1.3 on loopback\n");
        println!("| operation | clients | requests | requests/s | p50 | p99 | max |");
        println!("|---|---|---|---|---|---|---|");
        let per_client = if quick { 100 } else { 500 };
        let app = Arc::new(app);
        for (name, query) in [("stack list, 100 stacks", FLAT_LIST), ("stack list with worker pool", LIST_WITH_POOL)] {
            for clients in [1usize, 4, 16] {
                let f = run(&app, &token, clients, per_client, move |_: usize| (query.to_string(), json!({}))).await;
                row(name, clients, &f);
            }
        }
        let sha = "c".repeat(40);
        for clients in [1usize, 4, 16] {
            let sha = sha.clone();
            let f = run(&app, &token, clients, per_client, move |i| {
                (TRIGGER.to_string(), json!({ "s": format!("stack-{:03}", i % 100), "c": sha }))
            })
            .await;
            row("trigger a run", clients, &f);
        }
    });
}

fn row(name: &str, clients: usize, f: &Figures) {
    println!(
        "| {name} | {clients} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        f.requests, f.per_sec, f.p50_ms, f.p99_ms, f.max_ms
    );
}

/// `clients` connections, each sending `per_client` requests one after the other.
async fn run<F>(app: &Arc<Appliance>, token: &str, clients: usize, per_client: usize, make: F) -> Figures
where
    F: Fn(usize) -> (String, Value) + Send + Sync + Clone + 'static,
{
    let url = app.url("/graphql");
    let warmup = 20;
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let client = common::client_trusting(&app.ca_path());
        let (url, token, make) = (url.clone(), token.to_string(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..(warmup + per_client) {
                let (query, vars) = make(c * 1_000_000 + i);
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "query": query, "variables": vars }))
                    .send()
                    .await
                    .expect("request");
                let status = r.status();
                let body: Value = r.json().await.expect("JSON answer");
                assert!(status == 200 && body.get("errors").is_none(), "{status}: {body}");
                if i >= warmup {
                    latencies.push(t.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Includes the warm-up of the slowest client: a conservative rate.
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Figures {
        requests: all.len(),
        per_sec: (clients * (per_client + warmup)) as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: all.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok())))
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {} GiB RAM, load average at start {}",
        mem_kib / 1024 / 1024,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}
