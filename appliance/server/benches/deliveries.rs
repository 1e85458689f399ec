//! Webhook delivery benchmark, against the release `hangar server` and `hangar
//! drain` binaries with real PostgreSQL (fsync on) and Garage:
//!
//! - deliveries accepted per second: signed GitHub push deliveries (each with
//!   its own delivery id) over HTTPS from concurrent clients, with signature
//!   checking, enqueueing and the delivery log, the drain stopped;
//! - delivery-to-run-created latency: one delivery at a time with the drain
//!   running, from the moment the request is sent to the moment the tracked run
//!   is visible in the database (polled every millisecond).
//!
//! `cargo bench -p hangar-server --bench deliveries` (add `-- --quick` for a
//! short run).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/vcs_support/mod.rs"]
mod vcs_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Appliance, CREATE_STACK, Options, stack_input};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::schema::runs;
use serde_json::json;
use vcs_support::*;

const SECRET: &str = "bench-webhook-secret";
const REPO: &str = "https://git.example.test/infra/network.git";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let app = Appliance::start_with(Options { durable_db: true, ..Options::default() }).await;
        let admin = app.admin_token().await;
        app.ok(
            &admin,
            CREATE_INTEGRATION,
            json!({ "i": { "name": "ghe", "kind": "GITHUB", "baseUrl": "https://git.example.test", "webhookSecret": SECRET } }),
        )
        .await;
        app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("network", REPO) })).await;
        app.ok(&admin, LINK, json!({ "s": "network", "i": "ghe" })).await;
        let app = Arc::new(app);
        let size = body(0).len();

        println!("machine: {}", machine());
        println!("server: release binaries, PostgreSQL fsync=on, TLS 1.3 on loopback, GitHub push deliveries of {size} bytes\n");
        println!("| measurement | clients | deliveries | deliveries/s | p50 | p99 | max |");
        println!("|---|---|---|---|---|---|---|");
        let per_client = if quick { 100 } else { 500 };
        let mut next = 0usize;
        for clients in [1usize, 4, 16] {
            let f = accept(&app, clients, per_client, next).await;
            next += clients * (per_client + 20);
            println!(
                "| accepted (verified, enqueued, logged; drain stopped) | {clients} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
                f.0, f.1, f.2, f.3, f.4
            );
        }

        // The accepted deliveries are for a repository no stack uses: the drain
        // works them off (recording "ignored") before latency is measured.
        let _drain = spawn(&app, "drain");
        wait_for_queue(&app).await;
        let samples = if quick { 50 } else { 200 };
        let f = latency(&app, samples, next).await;
        println!(
            "| delivery sent → tracked run in the database (drain running) | 1 | {} | — | {:.2} ms | {:.2} ms | {:.2} ms |",
            f.0, f.2, f.3, f.4
        );
    });
}

/// A push delivery; `n` makes its commit unique. Pushes with `n` below
/// `1 << 40` are for a repository no stack uses.
fn body(n: usize) -> Vec<u8> {
    let (repo, name) = if n < 1 << 40 { ("https://git.example.test/other/repo.git", "other/repo") } else { (REPO, "infra/network") };
    let after = format!("{n:040x}");
    let paths: Vec<String> = (0..20).map(|i| format!("modules/m{i}/main.tf")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    serde_json::to_vec(&github_push(repo, name, "main", &"a".repeat(40), &after, &paths)).unwrap()
}

fn request(app: &Appliance, client: &reqwest::Client, delivery: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    client
        .post(app.url("/webhooks/github/ghe"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", github_signature(SECRET, &body))
        .body(body)
}

type Figures = (usize, f64, f64, f64, f64);

fn figures(mut all: Vec<Duration>, elapsed: f64) -> Figures {
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    (all.len(), all.len() as f64 / elapsed, pct(0.50), pct(0.99), all.last().unwrap().as_secs_f64() * 1000.0)
}

async fn accept(app: &Arc<Appliance>, clients: usize, per_client: usize, first: usize) -> Figures {
    let warmup = 20;
    // Bodies are made and signed by the client up front: only the server's
    // work is timed.
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let app = app.clone();
        let client = common::client_trusting(&app.ca_path());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..(warmup + per_client) {
                let n = first + c * (warmup + per_client) + i;
                let req = request(&app, &client, &format!("bench-{n}"), body(n));
                let t = Instant::now();
                let r = req.send().await.expect("request");
                assert_eq!(r.status().as_u16(), 202);
                if i >= warmup {
                    latencies.push(t.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Includes the warm-ups: a conservative rate.
    let elapsed = started.elapsed().as_secs_f64() * (all.len() as f64 / (clients * (warmup + per_client)) as f64);
    figures(all, elapsed)
}

async fn wait_for_queue(app: &Appliance) {
    let mut c = app.pg.database().connect().await.unwrap();
    loop {
        let n: i64 = hangar_db::schema::jobs::table
            .filter(hangar_db::schema::jobs::kind.eq("vcs.delivery"))
            .count()
            .get_result(&mut c)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn latency(app: &Arc<Appliance>, samples: usize, first: usize) -> Figures {
    let client = common::client_trusting(&app.ca_path());
    let mut db = app.pg.database().connect().await.unwrap();
    let mut all = Vec::with_capacity(samples);
    let started = Instant::now();
    for i in 0..samples {
        let n = (1usize << 40) + first + i;
        let sha = format!("{n:040x}");
        let req = request(app, &client, &format!("latency-{n}"), body(n));
        let t = Instant::now();
        let r = req.send().await.expect("request");
        assert_eq!(r.status().as_u16(), 202);
        loop {
            let found: Option<i64> = runs::table
                .filter(runs::commit_sha.eq(&sha))
                .select(runs::id)
                .first(&mut db)
                .await
                .optional()
                .unwrap();
            if found.is_some() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no run for {sha} after 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        all.push(t.elapsed());
    }
    figures(all, started.elapsed().as_secs_f64())
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
