//! Run log benchmark: chunk append throughput (object store put, row, NOTIFY)
//! and the latency from the start of an append to the chunk's arrival at a
//! Server-Sent Events follower of the release `hangar server` binary, with real
//! PostgreSQL (fsync on) and Garage behind `hangar tls-proxy`.
//!
//! `cargo bench -p hangar-server --bench logs` (add `-- --quick` for a short
//! run). Appends are made by this process with `hangar_server::logs::append`,
//! the function the worker route calls after authenticating the worker.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Appliance, CREATE_STACK, Options, Summary, stack_input};
use futures::StreamExt;
use hangar_db::DbPool;
use hangar_db::runs::{self, NewRun};
use hangar_objects::{ObjectStore, ObjectsConfig};
use hangar_server::logs;
use hangar_types::worker::Phase;
use hangar_types::{RunKind, RunState};
use serde_json::json;

struct Store {
    db: DbPool,
    objects: ObjectStore,
    stack: i64,
}

impl Store {
    async fn run(&self) -> i64 {
        let mut c = self.db.get().await.unwrap();
        let new = NewRun {
            stack_id: self.stack,
            kind: RunKind::Proposed,
            commit_sha: "b".repeat(40),
            branch: "main".into(),
            command: None,
            triggered_by: "bench".into(),
        };
        let id = runs::create(&mut c, &new, "bench").await.unwrap().id;
        for to in [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning] {
            runs::transition(&mut c, id, None, to, "bench", "bench").await.unwrap();
        }
        id
    }
}

fn main() {
    support::main(async move {
        let support::Bench { app, admin: token, quick } = support::start(Options::default()).await;
        let config: toml::Table = toml::from_str(&std::fs::read_to_string(&app.config).unwrap()).unwrap();
        let objects: ObjectsConfig = config["objects"].clone().try_into().unwrap();
        let created = app.ok(&token, CREATE_STACK, json!({ "i": stack_input("bench", "https://git.example/bench.git") })).await;
        let store = Arc::new(Store {
            db: app.pg.database().pool(Some(16)).unwrap(),
            objects: ObjectStore::connect(&objects).await.unwrap(),
            stack: created["createStack"]["id"].as_str().unwrap().parse().unwrap(),
        });

        println!("| append | chunk | writers | chunks | chunks/s | MiB/s | p50 | p99 |");
        println!("|---|---|---|---|---|---|---|---|");
        let total = if quick { 200 } else { 1000 };
        for (size, label) in [(1024usize, "1 KiB"), (64 * 1024, "64 KiB")] {
            for writers in [1usize, 8] {
                let f = append_throughput(&store, size, writers, total).await;
                println!(
                    "| `logs::append` | {label} | {writers} | {total} | {:.0} | {:.1} | {:.1} ms | {:.1} ms |",
                    f.per_sec,
                    f.per_sec * size as f64 / (1024.0 * 1024.0),
                    f.p50_ms,
                    f.p99_ms
                );
            }
        }

        println!("\n| delivery | chunk | followers | chunks | p50 | p99 | max |");
        println!("|---|---|---|---|---|---|---|");
        let chunks = if quick { 100 } else { 500 };
        for followers in [1usize, 10] {
            let (p50, p99, max) = delivery_latency(&app, &token, &store, followers, chunks).await;
            println!("| append start → SSE event | 1 KiB | {followers} | {chunks} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
        }
        println!("\nappends retried after a 503 (busy store): {}", RETRIES.load(std::sync::atomic::Ordering::Relaxed));
    });
}

struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `total` chunks of `size` bytes, numbered in order per writer (each writer its
/// own run, as each worker appends to its own run).
async fn append_throughput(store: &Arc<Store>, size: usize, writers: usize, total: usize) -> Figures {
    let body = Bytes::from(vec![b'x'; size]);
    let per_writer = total / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, body) = (store.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let run = store.run().await;
            let mut lat = Vec::with_capacity(per_writer);
            for seq in 0..per_writer as u64 {
                let t = Instant::now();
                append_retrying(&store, run, seq, &body).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    let f = Summary::of(lat);
    Figures { per_sec: f.n as f64 / elapsed.as_secs_f64(), p50_ms: f.p50, p99_ms: f.p99 }
}

/// One chunk at a time: the time from the start of its append until every
/// follower has its event.
async fn delivery_latency(app: &Appliance, token: &str, store: &Arc<Store>, followers: usize, chunks: usize) -> (f64, f64, f64) {
    let run = store.run().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
    for f in 0..followers {
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/runs/{run}/logs?follow=true&phase=planning")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(b)) = body.next().await {
                buf.push_str(std::str::from_utf8(&b).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                        let v: serde_json::Value = serde_json::from_str(data).unwrap();
                        if let Some(seq) = v["seq"].as_u64() {
                            let _ = tx.send((f, seq));
                        }
                    }
                }
            }
        });
    }
    let body = Bytes::from(vec![b'y'; 1024]);
    let mut lat = Vec::with_capacity(chunks);
    for seq in 0..chunks as u64 {
        let t = Instant::now();
        append_retrying(store, run, seq, &body).await;
        let mut got = 0;
        while got < followers {
            let (_, s) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("delivery").unwrap();
            assert_eq!(s, seq, "chunks arrive in order");
            got += 1;
        }
        lat.push(t.elapsed());
    }
    let mut c = store.db.get().await.unwrap();
    runs::transition(&mut c, run, None, RunState::Finished, "bench", "bench").await.unwrap();
    let f = Summary::of(lat);
    (f.p50, f.p99, f.max)
}

/// Answers the worker would retry (503: the database or the object store was
/// busy) are retried as the worker does; each one is counted.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn append_retrying(store: &Store, run: i64, seq: u64, body: &Bytes) {
    let mut pause = Duration::from_millis(20);
    loop {
        match logs::append(&store.db, &store.objects, run, Phase::Planning, seq, body.clone()).await {
            Ok(()) => return,
            Err(e) if e.status() == 503 => {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => panic!("append {run}/{seq}: {e:?}"),
        }
    }
}
