//! State backend benchmark: latency of writing and reading a 1 MiB Terraform
//! state (sealed with a data key and kept in the object store), and LOCK/UNLOCK
//! round trips per second, against the release `hangar server` binary with
//! real PostgreSQL (fsync on) and Garage behind TLS.
//!
//! `cargo bench -p hangar-server --bench state` (add `-- --quick` for a short
//! run). Each client is one HTTP/1.1 keep-alive connection; latency is
//! measured per request at the client, after a warm-up.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use support::{CREATE_STACK, Options, Summary, stack_input};
use md5::Digest as _;
use serde_json::json;

const STATE_BYTES: usize = 1024 * 1024;

fn main() {
    support::main(async move {
        let support::Bench { app, admin, quick } = support::start(Options::default()).await;
        let key = app.ok(&admin, "mutation { createApiKey(name: \"bench\") { key } }", json!({})).await["createApiKey"]["key"]
            .as_str()
            .unwrap()
            .to_string();
        for i in 0..4 {
            app.ok(&admin, CREATE_STACK, json!({ "i": stack_input(&format!("bench-{i}"), "https://git.example/b.git") })).await;
        }

        let (writes, reads) = if quick { (20, 50) } else { (100, 300) };
        let client = support::client(&app);
        let url = app.url("/state/v1/bench-0");
        let filler = "x".repeat(STATE_BYTES);
        let mut latencies = Vec::new();
        for serial in 1..=(writes + 5) {
            let body = json!({
                "version": 4, "serial": serial, "lineage": "bench", "terraform_version": "1.0.3",
                "outputs": { "blob": { "value": filler, "type": "string" } }, "resources": [],
            })
            .to_string();
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
            let t = Instant::now();
            let r = client.post(&url).bearer_auth(&key).header("content-md5", md5).body(body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            if serial > 5 {
                latencies.push(t.elapsed());
            }
        }
        println!("| operation | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        row("write a 1 MiB state (POST: MD5, seal, object store, version row)", &mut latencies);
        let mut latencies = Vec::new();
        for i in 0..(reads + 5) {
            let t = Instant::now();
            let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.bytes().await.unwrap();
            assert!(body.len() > STATE_BYTES);
            if i >= 5 {
                latencies.push(t.elapsed());
            }
        }
        row("read a 1 MiB state (GET: object store, open, MD5 check)", &mut latencies);

        println!("\n| LOCK + UNLOCK | clients (one stack each) | pairs | pairs/s | round trips/s | p50 pair | p99 pair |");
        println!("|---|---|---|---|---|---|---|");
        let pairs = if quick { 200 } else { 1000 };
        for clients in [1usize, 4] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let client = support::client(&app);
                let (url, key) = (app.url(&format!("/state/v1/bench-{c}")), key.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(pairs);
                    for i in 0..pairs {
                        let info = json!({ "ID": format!("l-{c}-{i}"), "Operation": "bench", "Who": "bench", "Version": "1.0.3" })
                            .to_string();
                        let t = Instant::now();
                        let lock = client.request(reqwest::Method::from_bytes(b"LOCK").unwrap(), &url).bearer_auth(&key).body(info.clone()).send().await.unwrap();
                        assert_eq!(lock.status(), 200);
                        let unlock = client.request(reqwest::Method::from_bytes(b"UNLOCK").unwrap(), &url).bearer_auth(&key).body(info).send().await.unwrap();
                        assert_eq!(unlock.status(), 200);
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let secs = started.elapsed().as_secs_f64();
            let f = Summary::of(all);
            println!(
                "| | {clients} | {} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
                f.n,
                f.n as f64 / secs,
                2.0 * f.n as f64 / secs,
                f.p50,
                f.p99
            );
        }
    });
}

fn row(name: &str, all: &mut Vec<Duration>) {
    let f = Summary::of(std::mem::take(all));
    println!("| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |", f.n, f.p50, f.p99, f.max);
}
