//! GraphQL API benchmark: requests/s and latency of a stack list (100 stacks)
//! and of triggering a run, from concurrent clients over TLS, against the
//! release `hangar server` binary with real PostgreSQL (fsync on) and Garage.
//!
//! `cargo bench -p hangar-server --bench graphql` (add `-- --quick` for a short
//! run). Each client is its own HTTP/1.1 keep-alive connection; latency is
//! measured per request at the client, after a warm-up.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Appliance, CREATE_STACK, Options, Summary, stack_input};
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
    support::main(async move {
        let support::Bench { app, admin: token, quick } = support::start(Options::default()).await;
        app.ok(&token, "mutation { createWorkerPool(name: \"bench\") { id } }", json!({})).await;
        for i in 0..100 {
            let mut input = stack_input(&format!("stack-{i:03}"), &format!("https://git.example/infra/stack-{i:03}.git"));
            input["labels"] = json!(["bench", format!("team-{}", i % 7)]);
            input["workerPool"] = json!("bench");
            app.ok(&token, CREATE_STACK, json!({ "i": input })).await;
        }
        let listed = app.ok(&token, FLAT_LIST, json!({})).await;
        assert_eq!(listed["stacks"].as_array().unwrap().len(), 100);

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
        let client = support::client(app);
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
    let s = Summary::of(all);
    Figures {
        requests: s.n,
        per_sec: (clients * (per_client + warmup)) as f64 / elapsed,
        p50_ms: s.p50,
        p99_ms: s.p99,
        max_ms: s.max,
    }
}
