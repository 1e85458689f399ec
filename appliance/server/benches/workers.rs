//! Worker dispatch benchmark against the release `hangar server` (hosting the
//! MQTT broker) and `hangar drain`, with real PostgreSQL (fsync on) and Garage,
//! mutual TLS on loopback. Simulated workers speak the protocols the way
//! `hangar-worker run` does: each joined with its own CSR and holds its own
//! certificate, `hwt_` token, HTTPS connection and MQTT session subscribed to
//! its tenant's topics; it heartbeats, and claims when the broker says work is
//! available, when it (re)connects, and at its poll interval, until the server
//! answers 204; a claimed run is reported FAILED at once.
//!
//! 1. Trigger to claim: one idle worker alone in its pool; a tracked run
//!    triggered through GraphQL, scheduled by the drain, announced over MQTT
//!    by the broker bridge, claimed by the worker. Timed at the client from
//!    sending `triggerRun` to the assignment, with the moment the notification
//!    arrived.
//! 2. Many workers: N connected workers of one pool. Runs made READY one at a
//!    time (each waits until every claim it set off is answered), then a burst
//!    of READY runs at once; dispatch latency is from the commit that made a run
//!    READY to the claim that took it. Every run must be claimed exactly once.
//!    The notifications and claim requests each phase set off are counted: the
//!    broker tells one idle worker per READY run, not the pool.
//!    The server's memory is its VmRSS, sampled every 100 ms.
//!
//! `cargo bench -p hangar-server --bench workers -- [--quick] [--workers N]
//! [--runs M] [--trickle K]`. Each worker holds two connections (HTTPS and
//! MQTT), with a descriptor at each end, in this process and in the server:
//! the open-file limit (`ulimit -n`) bounds N at about half of it.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hangar_testkit::{ChildProcess, TestDir, cargo_bin, wait_for};
use serde_json::json;
use support::sim::{self, Front, Log, claimed_at, drive, join, quiet};
use support::{CREATE_STACK, Options, Summary, stack_input};

fn main() {
    support::main(async move {
        let quick = support::quick();
        let n_workers: usize = support::arg("--workers").unwrap_or(if quick { 200 } else { 1000 });
        let n_burst: usize = support::arg("--runs").unwrap_or(n_workers);
        let n_trickle: usize = support::arg("--trickle").unwrap_or(if quick { 30 } else { 100 });
        let files = TestDir::new("bench-workers");
        let tools = files.subdir("tools");
        std::fs::create_dir_all(tools.join("terraform/1.0.3")).unwrap();
        std::fs::write(tools.join("terraform/1.0.3/terraform"), vec![7u8; 1 << 20]).unwrap();
        let extra = format!("tools_dir = \"{}\"\n", tools.display());
        let support::Bench { app, admin, .. } =
            support::start(Options { server_extra: extra, broker: true, ..Options::default() }).await;
        println!("open files allowed per process: {}\n", support::fd_limit());
        wait_for("the hosted broker to be ready", Duration::from_secs(60), || async {
            let (status, body) = app.ready().await;
            (status == 200 && body.to_string().contains("broker")).then_some(())
        })
        .await;
        let broker_port = app.broker_port.unwrap();
        let mut stacks = HashMap::new();
        for pool in ["solo", "crowd"] {
            app.ok(&admin, "mutation($n: String!) { createWorkerPool(name: $n) { id } }", json!({ "n": pool })).await;
            let mut input = stack_input(pool, "https://git.invalid/bench.git");
            input["tool"] = json!("TERRAFORM");
            input["toolVersion"] = json!("1.0.3");
            input["workerPool"] = json!(pool);
            let stack = app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
            let id: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();
            stacks.insert(pool, id);
        }

        // ---- 1. trigger to claim, one idle worker ----
        let mut drain = std::process::Command::new(cargo_bin("hangar"));
        drain.arg("--config").arg(&app.config).arg("drain").env("HANGAR_LOG", "warn").stdin(std::process::Stdio::null());
        let mut drain = ChildProcess::spawn(drain, "drain", app.dir.path());
        let solo_log = Arc::new(Log::default());
        let solo_front = Front::new(&app, &admin, "solo", app.addr.port(), broker_port);
        let solo = join(&solo_front, &app.client, "solo".into()).await;
        let solo_id = solo.id;
        drive(solo, solo_log.clone(), true);
        wait_for("the single worker to subscribe", Duration::from_secs(60), || async {
            (solo_log.subscribed.load(Ordering::Relaxed) > 0).then_some(())
        })
        .await;
        quiet(&solo_log).await;
        let runs = if quick { 50 } else { 300 };
        let (mut total, mut to_notified, mut trigger_answered) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs + 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let d = app
                .ok(
                    &admin,
                    "mutation($c: String) { triggerRun(stack: \"solo\", commitSha: $c) { id } }",
                    json!({ "c": "a".repeat(40) }),
                )
                .await;
            let answered = started.elapsed();
            let id: i64 = d["triggerRun"]["id"].as_str().unwrap().parse().unwrap();
            let at = claimed_at(&solo_log, id).await;
            let claims = solo_log.claims.lock().unwrap()[&id].clone();
            assert_eq!(claims, vec![(solo_id, at)], "run {id} claimed once, by the only worker");
            let notified = solo_log.notified_at.lock().unwrap().iter().copied().find(|t| *t >= started);
            if i >= 5 {
                total.push(at - started);
                trigger_answered.push(answered);
                if let Some(n) = notified {
                    to_notified.push(n - started);
                }
            }
            quiet(&solo_log).await;
        }
        drain.terminate(Duration::from_secs(10));
        let (t, n, a) = (Summary::of(total), Summary::of(to_notified), Summary::of(trigger_answered));
        println!("| trigger to claim (one idle worker on MQTT) | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        println!("| `triggerRun` answered | {} | {:.1} ms | {:.1} ms | {:.1} ms |", a.n, a.p50, a.p99, a.max);
        println!("| `work_available` at the worker | {} | {:.1} ms | {:.1} ms | {:.1} ms |", n.n, n.p50, n.p99, n.max);
        println!("| claim answered (worker start) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n", t.n, t.p50, t.p99, t.max);

        // ---- 2. many workers ----
        let server_pid = app.server.as_ref().unwrap().pid();
        let peak = Arc::new(AtomicU64::new(support::rss_kib(server_pid)));
        {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(support::rss_kib(server_pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let rss_before = support::rss_kib(server_pid);
        let log = Arc::new(Log::default());
        let joined_at = Instant::now();
        sim::bring_up(&Front::new(&app, &admin, "crowd", app.addr.port(), broker_port), &log, 0..n_workers).await;
        let join_secs = joined_at.elapsed().as_secs_f64();
        quiet(&log).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_connected = support::rss_kib(server_pid);
        eprintln!("{n_workers} workers joined and subscribed in {join_secs:.1} s");

        let db = app.pg.database().pool(Some(2)).unwrap();
        let mut c = db.get().await.unwrap();
        let crowd = stacks["crowd"];
        let sim::Dispatched {
            trickle, trickle_requests, trickle_notes, burst, burst_secs, burst_requests, burst_notes, hb_rate, runs_claimed, claims_total,
        } =
            sim::dispatch_round(&mut c, &log, crowd, n_trickle, n_burst).await;
        drop(c);
        let (t, b) = (Summary::of(trickle), Summary::of(burst));
        println!(
            "{n_workers} workers: joined and subscribed in {join_secs:.1} s; heartbeats {hb_rate:.0}/s answered; {}",
            log.troubles()
        );
        println!(
            "one READY run at a time: {trickle_notes} notifications and {trickle_requests} claim requests for {n_trickle} runs"
        );
        println!("burst: {burst_notes} notifications and {burst_requests} claim requests for {n_burst} runs");
        println!("| simulated workers | READY runs | dispatch | p50 | p99 | max | server RSS before → connected → peak | each run claimed once |");
        println!("|---|---|---|---|---|---|---|---|");
        let rss = format!(
            "{} → {} → {} MiB",
            rss_before / 1024,
            rss_connected / 1024,
            peak.load(Ordering::Relaxed) / 1024
        );
        println!(
            "| {n_workers} | {n_trickle}, one at a time | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | {rss} | yes |",
            t.p50, t.p99, t.max
        );
        println!(
            "| {n_workers} | {n_burst} at once ({:.0} claims/s) | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | {rss} | yes ({} runs, {} claims) |",
            n_burst as f64 / burst_secs,
            b.p50,
            b.p99,
            b.max,
            runs_claimed,
            claims_total
        );
        log.stopping.store(true, Ordering::Relaxed);
        solo_log.stopping.store(true, Ordering::Relaxed);
    });
}
