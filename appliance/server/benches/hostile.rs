//! Hostile-query benchmark: how long the release `hangar server` takes to
//! refuse the fragment fan-out query (about a kilobyte, each fragment spreading
//! the next twice: 2^26 selections once expanded), anonymous and with a token,
//! and the latency of `/ready` while 8 clients send it back to back.
//!
//! `cargo bench -p hangar-server --bench hostile` (add `-- --quick` for a short
//! run). Each client is its own HTTP/1.1 keep-alive connection over TLS.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Options, Summary};

fn fan_out(levels: usize) -> String {
    let mut q = String::from("query{me{...M0}}");
    for i in 0..levels {
        q.push_str(&format!(" fragment M{i} on User{{...M{n} ...M{n}}}", n = i + 1));
    }
    q.push_str(&format!(" fragment M{levels} on User{{email}}"));
    q
}

fn main() {
    support::main(async move {
        let support::Bench { app, admin, quick } = support::start(Options::default()).await;
        let query = fan_out(25);
        let url = app.url("/graphql");
        println!("fan-out query: {} bytes, 25 levels of two spreads\n", query.len());

        // ---- one refusal at a time ----
        println!("| request | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        let samples = if quick { 50 } else { 500 };
        for (who, token) in [("fan-out, anonymous", None), ("fan-out, admin token", Some(admin.as_str()))] {
            let client = support::client(&app);
            let mut all = Vec::with_capacity(samples);
            for i in 0..samples + 10 {
                let mut req = client.post(&url).json(&json!({ "query": query }));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let started = Instant::now();
                let r = req.send().await.expect("send");
                let body: serde_json::Value = r.json().await.expect("JSON");
                let took = started.elapsed();
                assert_eq!(body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX", "{body}");
                if i >= 10 {
                    all.push(took);
                }
            }
            let s = Summary::of(all);
            println!("| {who} | {} | {:.2} ms | {:.2} ms | {:.2} ms |", s.n, s.p50, s.p99, s.max);
        }

        // ---- /ready while 8 clients send the fan-out back to back ----
        let ready_client = support::client(&app);
        let ready_url = app.url("/ready");
        let idle = ready_latencies(&ready_client, &ready_url, if quick { 50 } else { 300 }).await;
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let mut attackers = Vec::new();
        for _ in 0..8 {
            let (client, url, query, stop, refused) = (support::client(&app), url.clone(), query.clone(), stop.clone(), refused.clone());
            attackers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = client.post(&url).json(&json!({ "query": query })).send().await.expect("send");
                    let _ = r.bytes().await;
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let before = refused.load(Ordering::Relaxed);
        let busy = ready_latencies(&ready_client, &ready_url, if quick { 50 } else { 300 }).await;
        let elapsed = started.elapsed();
        let during = refused.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        for a in attackers {
            a.await.expect("attacker");
        }
        println!("\n| /ready | requests | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for (what, s) in [("idle", idle), ("8 clients sending the fan-out", busy)] {
            println!("| {what} | {} | {:.2} ms | {:.2} ms | {:.2} ms |", s.n, s.p50, s.p99, s.max);
        }
        println!(
            "\nfan-out queries refused meanwhile: {during} in {:.1} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            during as f64 / elapsed.as_secs_f64()
        );
    });
}

/// `n` sequential `GET /ready`, each required to answer 200, 20 ms apart.
async fn ready_latencies(client: &reqwest::Client, url: &str, n: usize) -> Summary {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = client.get(url).send().await.expect("GET /ready");
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        all.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Summary::of(all)
}
