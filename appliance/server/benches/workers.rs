//! Worker dispatch benchmark against the release `hangar server` binary, real
//! PostgreSQL (fsync on) and Garage, mutual TLS on loopback:
//!
//! 1. trigger-to-PREPARING latency: a tracked run triggered through GraphQL,
//!    scheduled by a release `hangar drain`, claimed by one idle worker that
//!    asks `POST /api/v1/worker/claim` every 5 ms (a stand-in for the broker's
//!    "work available", whose own fan-out latency is in the broker section);
//! 2. claim throughput: many simulated workers (each its own certificate,
//!    token and TLS connection) heartbeating and claiming at once until every
//!    READY run is taken, checked to be claimed exactly once.
//!
//! `cargo bench -p hangar-server --bench workers` (`-- --quick` for a short run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Appliance, CREATE_STACK, Options, stack_input};
use hangar_db::runs::NewRun;
use hangar_testkit::{ChildProcess, TestDir, cargo_bin};
use hangar_types::worker::{HostInfo, JoinRequest, JoinResponse, RunAssignment, StateReport};
use hangar_types::{RunKind, RunState};
use serde_json::json;

#[derive(Clone)]
struct Worker {
    token: String,
    http: reqwest::Client,
    base: String,
}

impl Worker {
    async fn claim(&self) -> Option<RunAssignment> {
        let r = self.http.post(format!("{}/api/v1/worker/claim", self.base)).bearer_auth(&self.token).send().await.unwrap();
        match r.status().as_u16() {
            204 => None,
            200 => Some(r.json().await.unwrap()),
            s => panic!("claim answered {s}: {}", r.text().await.unwrap_or_default()),
        }
    }

    async fn heartbeat(&self) {
        let r = self
            .http
            .post(format!("{}/api/v1/worker/heartbeat", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "status": "idle", "run": null }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn fail(&self, run: i64) {
        let body = StateReport { to: RunState::Failed, note: "bench".into(), changes: None };
        let r = self
            .http
            .post(format!("{}/api/v1/worker/runs/{run}/state", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

async fn join(app: &Appliance, admin: &str, name: String) -> Worker {
    let d = app.ok(admin, "mutation { createJoinToken(pool: \"bench\") { token } }", json!({})).await;
    let token = d["createJoinToken"]["token"].as_str().unwrap().to_string();
    let (key, csr) = hangar_certs::worker_csr(&name).unwrap();
    let req = JoinRequest {
        token,
        name: name.clone(),
        csr_pem: csr,
        host: HostInfo { hostname: name, os: "linux".into(), arch: "amd64".into(), version: "bench".into() },
    };
    let r = app.client.post(app.url("/api/v1/workers/join")).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let resp: JoinResponse = r.json().await.unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    let id = reqwest::Identity::from_pem(format!("{}{}", resp.certificate_pem, key).as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(id)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Worker { token: resp.worker_token, http, base: app.url("") }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let files = TestDir::new("bench-workers");
        let tools = files.subdir("tools");
        std::fs::create_dir_all(tools.join("terraform/1.0.3")).unwrap();
        std::fs::write(tools.join("terraform/1.0.3/terraform"), vec![7u8; 1 << 20]).unwrap();
        let extra = format!("tools_dir = \"{}\"\n", tools.display());
        let app = Appliance::start_with(Options { durable_db: true, server_extra: extra, ..Options::default() }).await;
        let admin = app.admin_token().await;
        app.ok(&admin, "mutation { createWorkerPool(name: \"bench\") { id } }", json!({})).await;
        let mut input = stack_input("bench", "https://git.invalid/bench.git");
        input["tool"] = json!("TERRAFORM");
        input["toolVersion"] = json!("1.0.3");
        input["workerPool"] = json!("bench");
        let stack = app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
        let stack_id: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();
        println!("machine: {}", machine());
        println!("server: release `hangar server` (12 database connections), PostgreSQL fsync=on, mutual TLS on loopback\n");

        // ---- 1. trigger to PREPARING ----
        let mut drain = std::process::Command::new(cargo_bin("hangar"));
        drain.arg("--config").arg(&app.config).arg("drain").env("HANGAR_LOG", "warn").stdin(std::process::Stdio::null());
        let mut drain = ChildProcess::spawn(drain, "drain", app.dir.path());
        let worker = join(&app, &admin, "latency".into()).await;
        let runs = if quick { 50 } else { 300 };
        let sha = "a".repeat(40);
        let mut latencies = Vec::with_capacity(runs);
        for i in 0..runs + 5 {
            let started = Instant::now();
            app.ok(
                &admin,
                "mutation($c: String) { triggerRun(stack: \"bench\", commitSha: $c) { id } }",
                json!({ "c": sha }),
            )
            .await;
            let a = loop {
                if let Some(a) = worker.claim().await {
                    break a;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            if i >= 5 {
                latencies.push(started.elapsed());
            }
            // Frees the stack for the next tracked run.
            worker.fail(a.run_id).await;
        }
        drain.terminate(Duration::from_secs(10));
        latencies.sort();
        println!("| trigger to PREPARING (one idle worker, claim every 5 ms) | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        println!(
            "| GraphQL triggerRun → drain schedules → claim answered | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            latencies.len(),
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            pct(&latencies, 1.0)
        );

        // ---- 2. many workers claiming at once ----
        let server_pid = app.server.as_ref().unwrap().pid();
        let rss_before = rss_kib(server_pid);
        let n_workers = if quick { 200 } else { 1000 };
        let n_runs = if quick { 400 } else { 2000 };
        let joined_at = Instant::now();
        let mut workers = Vec::with_capacity(n_workers);
        for chunk in (0..n_workers).collect::<Vec<_>>().chunks(50) {
            let mut tasks = Vec::new();
            for i in chunk {
                tasks.push(join(&app, &admin, format!("sim-{i}")));
            }
            for w in futures::future::join_all(tasks).await {
                workers.push(w);
            }
        }
        let join_secs = joined_at.elapsed().as_secs_f64();
        let db = app.pg.database().pool(Some(2)).unwrap();
        let mut c = db.get().await.unwrap();
        for _ in 0..n_runs {
            hangar_db::runs::create(
                &mut c,
                &NewRun {
                    stack_id,
                    kind: RunKind::Proposed,
                    commit_sha: sha.clone(),
                    branch: "main".into(),
                    command: None,
                    triggered_by: "bench".into(),
                },
                "bench",
            )
            .await
            .unwrap();
        }
        let ready = hangar_db::runs::schedule_stack(&mut c, stack_id, "bench").await.unwrap();
        assert_eq!(ready.len(), n_runs);
        drop(c);

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in workers {
            tasks.push(tokio::spawn(async move {
                let (mut got, mut claim_lat, mut heartbeats) = (Vec::new(), Vec::new(), 0u64);
                loop {
                    w.heartbeat().await;
                    heartbeats += 1;
                    let t = Instant::now();
                    let a = w.claim().await;
                    claim_lat.push(t.elapsed());
                    match a {
                        Some(a) => got.push(a.run_id),
                        None => break,
                    }
                }
                (got, claim_lat, heartbeats)
            }));
        }
        let mut sampler_stop = false;
        let mut peak_rss = rss_before;
        let mut results = Vec::new();
        let mut pending = tasks;
        while !sampler_stop {
            peak_rss = peak_rss.max(rss_kib(server_pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
            sampler_stop = pending.iter().all(|t| t.is_finished());
        }
        for t in pending.drain(..) {
            results.push(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut claimed = Vec::new();
        let mut lat = Vec::new();
        let mut heartbeats = 0;
        for (g, l, h) in results {
            claimed.extend(g);
            lat.extend(l);
            heartbeats += h;
        }
        let unique: HashSet<i64> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), n_runs, "every run claimed");
        assert_eq!(unique.len(), n_runs, "no run claimed twice");
        lat.sort();
        println!("| simulated workers | READY runs | joined in | claims/s | heartbeats/s | claim p50 | claim p99 | server RSS before → peak | each run claimed once |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {n_workers} | {n_runs} | {join_secs:.1} s | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {} MiB → {} MiB | yes ({} claims, {} distinct) |",
            n_runs as f64 / elapsed,
            heartbeats as f64 / elapsed,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            rss_before / 1024,
            peak_rss / 1024,
            claimed.len(),
            unique.len()
        );
    });
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
