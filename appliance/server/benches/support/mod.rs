//! What every server benchmark shares: the bring-up of a durable appliance
//! (PostgreSQL with fsync, Garage behind `hangar tls-proxy`, the release
//! `hangar server` as a process, an admin token, a client trusting only the
//! test CA), the runtime, the `--quick` switch, the machine line printed above
//! the figures, and the arithmetic of latency percentiles.

#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
pub mod common;
pub mod sim;

use std::future::Future;
use std::time::Duration;

// Not every benchmark uses every helper.
#[allow(unused_imports)]
pub use common::{Appliance, CREATE_STACK, Options, stack_input};

/// The appliance a benchmark measures, and the admin token it acts with.
pub struct Bench {
    pub app: Appliance,
    pub admin: String,
    /// `-- --quick` was given: fewer samples.
    pub quick: bool,
}

/// Whether `-- --quick` was given.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// The value after `--name` on the command line, if any.
pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return Some(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a value")));
        }
    }
    None
}

/// Runs the benchmark on a multi-threaded runtime.
pub fn main<F: Future>(bench: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(bench)
}

/// Starts the appliance with a durable database (whatever `opts` says about
/// it), logs in the admin, and prints the machine and server lines.
pub async fn start(opts: Options) -> Bench {
    let app = Appliance::start_with(Options { durable_db: true, ..opts }).await;
    let admin = app.admin_token().await;
    println!("machine: {}", machine());
    println!(
        "server: release `hangar server` (12 database connections), PostgreSQL fsync=on, Garage behind `hangar tls-proxy`, TLS 1.3 on loopback\n"
    );
    Bench { app, admin, quick: quick() }
}

/// A client of the appliance that trusts only its CA, on a connection of its own.
pub fn client(app: &Appliance) -> reqwest::Client {
    common::client_trusting(&app.ca_path())
}

/// CPU model, cores, memory and the load average, as recorded with figures.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Nearest-rank percentiles; an empty set is all zeros.
    pub fn of(mut all: Vec<Duration>) -> Summary {
        all.sort();
        if all.is_empty() {
            return Summary { n: 0, p50: 0.0, p99: 0.0, max: 0.0 };
        }
        let pct = |p: f64| ms(all[((all.len() as f64 * p) as usize).min(all.len() - 1)]);
        Summary { n: all.len(), p50: pct(0.50), p99: pct(0.99), max: ms(all[all.len() - 1]) }
    }
}

/// Resident memory of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// This process's open-file limit (soft); children inherit it. Raise it with
/// `ulimit -n` before a run with many connections: each needs a descriptor here
/// and one in the server.
pub fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}
