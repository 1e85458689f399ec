//! Webhook deliveries verified and parsed per second, for GitHub push payloads
//! of realistic sizes: what `POST /webhooks/github/...` (verification) and the
//! drain (parsing) spend per delivery, without the HTTP server or the database.
//!
//! `cargo bench -p hangar-vcs --bench webhooks` (`-- --quick` for a short run).
//! The payloads are GitHub's documented push example grown to 1, 20 and 200
//! commits, each commit listing its files as GitHub does.

use std::time::{Duration, Instant, SystemTime};

use hangar_vcs::{Event, Secret, Vendor, Verifier, parse, vendor_headers};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../tests/fixtures/github/push-new-branch.json");

/// GitHub's example with `commits` commits of `files` changed files each, on an
/// existing branch (so the path list is complete and parsing does all its work).
fn payload(commits: usize, files: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(FIXTURE).expect("fixture parses");
    let template = v["head_commit"].clone();
    let list: Vec<Value> = (0..commits)
        .map(|i| {
            let mut c = template.clone();
            let id = format!("{:040x}", 0xabc000 + i);
            c["id"] = json!(id);
            c["tree_id"] = json!(format!("{:040x}", 0xdef000 + i));
            c["message"] = json!(format!("Change {i}: adjust the network module and its variables\n\nLonger body text explaining the change."));
            c["url"] = json!(format!("https://github.example.com/Codertocat/Hello-World/commit/{id}"));
            c["added"] = json!((0..files / 3).map(|f| format!("infra/modules/net{i}/added_{f}.tf")).collect::<Vec<_>>());
            c["modified"] = json!((0..files - files / 3).map(|f| format!("infra/env/prod/file_{f}.tf")).collect::<Vec<_>>());
            c["removed"] = json!(Vec::<String>::new());
            c
        })
        .collect();
    v["head_commit"] = list.last().cloned().unwrap_or(Value::Null);
    v["commits"] = Value::Array(list);
    v["created"] = json!(false);
    v["before"] = json!("6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    v["after"] = json!(format!("{:040x}", 0xabc000 + commits.saturating_sub(1)));
    serde_json::to_vec_pretty(&v).expect("serializes")
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
}

fn run(verifier: &Verifier, headers: &http::HeaderMap, body: &[u8], now: SystemTime) -> usize {
    let d = verifier.verify(headers, body, now).expect("verifies");
    let events = parse(Vendor::Github, &d.event, body).expect("parses");
    match &events[0] {
        Event::Push(p) => p.changed_paths.len(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Deliveries per second over `dur` on `threads` threads, and the per-delivery
/// latency distribution on one thread.
fn measure(case: &Case, threads: usize, dur: Duration) -> (f64, Vec<Duration>) {
    let secret = Secret::new("a-webhook-secret-of-realistic-length-0123456789");
    let verifier = Verifier::new(Vendor::Github, &secret).unwrap();
    let now = SystemTime::now();
    let headers = vendor_headers(Vendor::Github, &secret, "72d3162e-cc78-11e3-81ab-4c9367dc0958", "push", &case.body, now).unwrap();
    let start = Instant::now();
    let counts: Vec<(u64, Vec<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (verifier, headers, body) = (&verifier, &headers, &case.body);
                s.spawn(move || {
                    let mut n = 0u64;
                    let mut lat = Vec::new();
                    while start.elapsed() < dur {
                        let t0 = Instant::now();
                        std::hint::black_box(run(verifier, headers, body, now));
                        if t == 0 {
                            lat.push(t0.elapsed());
                        }
                        n += 1;
                    }
                    (n, lat)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = counts.iter().map(|c| c.0).sum();
    let mut lat = counts.into_iter().next().map(|c| c.1).unwrap_or_default();
    lat.sort();
    (total as f64 / elapsed, lat)
}

/// Mean µs per call of `f` over `dur`, in batches of 16.
fn per_call(dur: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1e6
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dur = if quick { Duration::from_millis(500) } else { Duration::from_secs(3) };
    let cases = [
        Case { name: "1 commit, 3 files", body: payload(1, 3) },
        Case { name: "20 commits, 10 files each", body: payload(20, 10) },
        Case { name: "200 commits, 20 files each", body: payload(200, 20) },
    ];
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("GitHub push deliveries verified (X-Hub-Signature-256) and parsed; {cpus} CPUs");
    println!("| payload | size | 1 thread | p50 | p99 | {cpus} threads | MB/s ({cpus} threads) | verify only | parse only | of which JSON tree |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in &cases {
        // Warm up caches and the allocator.
        let _ = measure(case, 1, Duration::from_millis(100));
        let (one, lat) = measure(case, 1, dur);
        let (all, _) = measure(case, cpus, dur);
        let secret = Secret::new("a-webhook-secret-of-realistic-length-0123456789");
        let verifier = Verifier::new(Vendor::Github, &secret).unwrap();
        let now = SystemTime::now();
        let headers = vendor_headers(Vendor::Github, &secret, "72d3162e-cc78-11e3-81ab-4c9367dc0958", "push", &case.body, now).unwrap();
        let verify_us = per_call(dur / 2, || {
            std::hint::black_box(verifier.verify(&headers, &case.body, now).unwrap());
        });
        let parse_us = per_call(dur / 2, || {
            std::hint::black_box(parse(Vendor::Github, "push", &case.body).unwrap());
        });
        let tree_us = per_call(dur / 2, || {
            std::hint::black_box(serde_json::from_slice::<Value>(&case.body).unwrap());
        });
        println!(
            "| {} | {:.1} KiB | {:.0}/s | {:.1} µs | {:.1} µs | {:.0}/s | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs |",
            case.name,
            case.body.len() as f64 / 1024.0,
            one,
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            all,
            all * case.body.len() as f64 / 1e6,
            verify_us,
            parse_us,
            tree_us
        );
    }
    // The refusal path: a body over GitHub's 25 MiB is refused before any hashing.
    let secret = Secret::new("s");
    let verifier = Verifier::new(Vendor::Github, &secret).unwrap();
    let big = vec![b'x'; 30_000_000];
    let headers = vendor_headers(Vendor::Github, &secret, "id", "push", b"{}", SystemTime::now()).unwrap();
    let t0 = Instant::now();
    let n = 100_000;
    for _ in 0..n {
        std::hint::black_box(verifier.verify(&headers, &big, SystemTime::now()).unwrap_err());
    }
    println!(
        "30 MB body refused in {:.0} ns per delivery (size check before hashing)",
        t0.elapsed().as_secs_f64() * 1e9 / n as f64
    );
}
