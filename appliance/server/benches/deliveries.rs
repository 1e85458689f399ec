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

mod support;
use support::common;
#[path = "../tests/vcs_support/mod.rs"]
mod vcs_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Appliance, CREATE_STACK, Options, Summary, stack_input};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::schema::runs;
use serde_json::json;
use vcs_support::*;

const SECRET: &str = "bench-webhook-secret";
const REPO: &str = "https://git.example.test/infra/network.git";

fn main() {
    support::main(async move {
        let support::Bench { app, admin, quick } = support::start(Options::default()).await;
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

        println!("GitHub push deliveries of {size} bytes, release `hangar drain` for the latency row\n");
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

fn figures(all: Vec<Duration>, elapsed: f64) -> Figures {
    let f = Summary::of(all);
    (f.n, f.n as f64 / elapsed, f.p50, f.p99, f.max)
}

async fn accept(app: &Arc<Appliance>, clients: usize, per_client: usize, first: usize) -> Figures {
    let warmup = 20;
    // Bodies are made and signed by the client up front: only the server's
    // work is timed.
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let app = app.clone();
        let client = support::client(&app);
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
            .filter(hangar_db::schema::jobs::kind.eq(hangar_db::jobs::JobKind::VcsDelivery.as_str()))
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
    let client = support::client(app);
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
