//! Dispatch with a fleet spread over several servers (figure 4 of the
//! dispatch issue): `--servers S` release `hangar server` processes, each
//! hosting its broker, on one PostgreSQL (fsync on) and one Garage, behind
//! Debian's HAProxy exactly as the scale-out test runs it (TCP passthrough,
//! PROXY protocol v2 to the API, `/ready` health checks). N simulated workers (`support::sim`: each joined with its
//! own CSR, one HTTPS connection and one MQTT session, heartbeats every 10 s)
//! join and connect through the balancer only.
//!
//! Runs of their pool are made READY (as the drain does, with
//! `hangar_db::runs::schedule_stack`) one at a time (each waits until every
//! claim it set off is answered), then in a burst in one commit; dispatch is
//! from that commit to the claim that took the run, and the bench fails
//! unless every run is claimed exactly once. Memory per connected worker is
//! the growth of the servers' summed VmRSS from before the workers joined to
//! once they are all connected, divided by N; heartbeats/s is what the
//! servers answered (each a database write) while the runs were dispatched.
//!
//! `cargo bench -p hangar-server --bench scaleout -- [--servers S] [--workers N]
//! [--runs M] [--trickle K]` (N defaults to 20,000; `--quick`: 300 workers).
//! Every process here holds at most the open-file limit (`ulimit -n`):
//! HAProxy four descriptors per worker it carries (two connections, each with
//! a client side and a server side), the process running a worker two, and
//! each server two per worker connected to it. So the fleet is cut into
//! parts that fit: each part is a process of this binary running its
//! workers (`sim::Fleet`) through a balancer of its own (an HAProxy process
//! on ports of its own, all configured alike), as a large site puts several
//! balancers behind one name.

mod support;

#[path = "../tests/balancer/mod.rs"]
mod balancer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use balancer::{Balancer, Member};
use hangar_testkit::{TestDir, free_port, wait_for};
use serde_json::json;
use support::sim::{self, Fleet, Front, Log, quiet};
use support::{CREATE_STACK, Options, Summary, stack_input};

/// Descriptors each process keeps for itself beyond the workers' (its
/// listeners, logs, database and object store connections, runtime).
const SPARE_FDS: u64 = 300;

fn main() {
    sim::serve_fleet_part();
    support::main(async move {
        let limit = support::fd_limit();
        let n_servers: usize = support::arg("--servers").unwrap_or(3);
        let per_balancer = (limit.saturating_sub(SPARE_FDS) / 4 / 100 * 100) as usize;
        let n_workers: usize = support::arg("--workers").unwrap_or(if support::quick() { 300 } else { 20_000 });
        let n_burst: usize = support::arg("--runs").unwrap_or(1000);
        let n_trickle: usize = support::arg("--trickle").unwrap_or(if support::quick() { 20 } else { 100 });
        let n_parts = n_workers.div_ceil(per_balancer.max(1));
        let per_server = (n_workers.div_ceil(n_servers) * 2) as u64 + SPARE_FDS;
        assert!(
            per_server <= limit,
            "{n_workers} workers on {n_servers} servers need {per_server} open files per server, over the limit of {limit}: add servers"
        );
        let files = TestDir::new("bench-scaleout");
        let tools = files.subdir("tools");
        std::fs::create_dir_all(tools.join("terraform/1.0.3")).unwrap();
        std::fs::write(tools.join("terraform/1.0.3/terraform"), vec![7u8; 1 << 20]).unwrap();
        let extra = format!("tools_dir = \"{}\"\n", tools.display());
        let support::Bench { mut app, admin, .. } =
            support::start(Options { server_extra: extra, broker: true, ..Options::default() }).await;
        println!(
            "open files allowed per process: {limit}; {n_workers} workers in {n_parts} parts of at most {per_balancer}, each a process of its own behind an HAProxy process of its own (4 descriptors per worker), about {} workers per server\n",
            n_workers.div_ceil(n_servers)
        );
        wait_for("the hosted broker to be ready", Duration::from_secs(60), || async {
            let (status, body) = app.ready().await;
            (status == 200 && body.to_string().contains("broker")).then_some(())
        })
        .await;

        // The appliance's server gives way to the members; the balancer takes its
        // addresses, which the configuration names as the public and broker URLs.
        let (shared_api, shared_mqtt) = (app.addr.port(), app.broker_port.unwrap());
        drop(app.server.take());
        let dir = app.dir.path().to_path_buf();
        let mut members: Vec<Member> = (1..=n_servers)
            .map(|i| Member::new(&app.config, &dir, &format!("s{i}"), shared_api, shared_mqtt))
            .collect();
        for m in &mut members {
            m.spawn(&dir, "warn");
        }
        let client = app.client.clone();
        for m in &members {
            wait_for(&format!("{} to be ready", m.name), Duration::from_secs(120), || async {
                let (status, body) = m.ready(&client).await?;
                (status == 200 && body["components"]["broker"]["status"] == "ok").then_some(())
            })
            .await;
        }
        // One balancer per part of the fleet: the first on the appliance's
        // own addresses, the others on ports of their own.
        let maxconn = (limit.saturating_sub(SPARE_FDS) / 2) as usize;
        let mut balancers = Vec::new();
        for k in 0..n_parts {
            let (api, mqtt) = if k == 0 { (shared_api, shared_mqtt) } else { (free_port(), free_port()) };
            let name = format!("haproxy-{k}");
            let config = Balancer::config(api, mqtt, &members, &app.ca_path(), &dir.join(format!("{name}.sock")), maxconn);
            balancers.push((Balancer::start_named(&dir, &name, &config), api, mqtt));
        }
        for (b, _, _) in &balancers {
            for m in &members {
                b.wait_status(&m.name, "UP").await;
            }
        }
        println!(
            "{n_servers} release `hangar server` processes (12 database connections each) behind {n_parts} HAProxy {} processes (TCP passthrough, PROXY v2 to the API, `/ready` checks every second)\n",
            haproxy_version()
        );

        app.ok(&admin, "mutation($n: String!) { createWorkerPool(name: $n) { id } }", json!({ "n": "crowd" })).await;
        let mut input = stack_input("crowd", "https://git.invalid/bench.git");
        input["tool"] = json!("TERRAFORM");
        input["toolVersion"] = json!("1.0.3");
        input["workerPool"] = json!("crowd");
        let stack = app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
        let crowd: i64 = stack["createStack"]["id"].as_str().unwrap().parse().unwrap();

        let pids: Vec<u32> = members.iter().map(|m| m.log().pid()).collect();
        let rss = move || -> u64 { pids.iter().map(|p| support::rss_kib(*p)).sum() };
        let peak = Arc::new(AtomicU64::new(rss()));
        {
            let (peak, rss) = (peak.clone(), rss.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let rss_before = rss();

        // ---- the fleet joins and connects through the balancers ----
        let log = Arc::new(Log::default());
        let joined_at = Instant::now();
        let share = n_workers.div_ceil(n_parts);
        let parts = balancers
            .iter()
            .enumerate()
            .map(|(k, (_, api, mqtt))| {
                (Front::new(&app, &admin, "crowd", *api, *mqtt), k * share..((k + 1) * share).min(n_workers))
            })
            .collect();
        let fleet = Fleet::start(parts, log.clone());
        wait_for("the fleet to join and subscribe", Duration::from_secs(1800), || async {
            (log.subscribed.load(Ordering::Relaxed) >= n_workers).then_some(())
        })
        .await;
        let join_secs = joined_at.elapsed().as_secs_f64();
        quiet(&log).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_connected = rss();
        let mut spread = Vec::new();
        for m in &members {
            spread.push(m.connections(&client).await.unwrap_or(0));
        }
        eprintln!("{n_workers} workers joined and subscribed in {join_secs:.1} s, spread {spread:?}");

        let db = app.pg.database().pool(Some(2)).unwrap();
        let mut c = db.get().await.unwrap();
        let sim::Dispatched {
            trickle, trickle_requests, trickle_notes, burst, burst_secs, burst_requests, burst_notes, hb_rate, runs_claimed, claims_total,
        } =
            sim::dispatch_round(&mut c, &log, crowd, n_trickle, n_burst).await;
        drop(c);
        let (t, b) = (Summary::of(trickle), Summary::of(burst));
        let per_worker = rss_connected.saturating_sub(rss_before) as f64 / n_workers as f64;
        println!(
            "{n_workers} workers on {n_servers} servers ({spread:?} MQTT sessions each): joined and subscribed in {join_secs:.1} s; heartbeats {hb_rate:.0}/s answered; {}",
            log.troubles()
        );
        let flaps: usize = balancers
            .iter()
            .map(|(b, _, _)| b.process.output().lines().filter(|l| l.starts_with('<') && l.contains(" is DOWN")).count())
            .sum();
        println!("servers marked DOWN by a balancer (each balancer counts its own checks): {flaps}");
        println!("one READY run at a time: {trickle_notes} notifications and {trickle_requests} claim requests for {n_trickle} runs");
        println!("burst: {burst_notes} notifications and {burst_requests} claim requests for {n_burst} runs");
        println!(
            "servers' RSS (sum): {} MiB before the workers, {} MiB connected ({per_worker:.1} KiB per worker), {} MiB at the peak",
            rss_before / 1024,
            rss_connected / 1024,
            peak.load(Ordering::Relaxed) / 1024
        );
        println!("| servers | balancers | simulated workers | READY runs | dispatch | p50 | p99 | max | each run claimed once |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {n_servers} | {n_parts} | {n_workers} | {n_trickle}, one at a time | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | yes |",
            t.p50, t.p99, t.max
        );
        println!(
            "| {n_servers} | {n_parts} | {n_workers} | {n_burst} at once ({:.0} claims/s) | READY → claimed | {:.1} ms | {:.1} ms | {:.1} ms | yes ({} runs, {} claims) |",
            n_burst as f64 / burst_secs,
            b.p50,
            b.p99,
            b.max,
            runs_claimed,
            claims_total
        );
        let clients_rss: u64 = fleet.pids().iter().map(|p| support::rss_kib(*p)).sum();
        println!("fleet processes' RSS (sum): {} MiB ({:.1} KiB per simulated worker)", clients_rss / 1024, clients_rss as f64 / n_workers as f64);
        log.stopping.store(true, Ordering::Relaxed);
        drop(fleet);
        drop(balancers);
    });
}

/// `haproxy -v`'s version, for the record.
fn haproxy_version() -> String {
    let out = std::process::Command::new("haproxy").arg("-v").output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).split_whitespace().nth(2).unwrap_or("?").to_string()
}
