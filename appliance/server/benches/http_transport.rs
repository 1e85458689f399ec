//! The HTTP worker transport: trigger → worker start over the long poll, with
//! the worker's HTTPS straight to the appliance and through a real forward
//! proxy (Debian's tinyproxy, CONNECT-only to the appliance's port), against
//! the release `hangar server` and `hangar drain`, PostgreSQL with fsync on
//! and Garage, mutual TLS on loopback.
//!
//! One simulated worker, joined with its own CSR, holds
//! `POST /api/v1/worker/claim/wait` open as `hangar-worker run` does with
//! `transport = "http"` (one keep-alive connection, or one CONNECT tunnel
//! through the proxy); a tracked run of its pool is triggered through GraphQL
//! (with a given commit), scheduled by the drain, and the held poll is woken
//! by the server's LISTEN connection and answered with the run. Timed at the
//! client from sending `triggerRun` to the poll's answer (the worker starts
//! the run then); the run is then reported FAILED to free its stack.
//!
//! `cargo bench -p hangar-server --bench http_transport -- [--quick] [--runs N]`.

mod support;

use std::time::{Duration, Instant};

use hangar_testkit::{ChildProcess, TestDir, cargo_bin, free_port, wait_for};
use hangar_types::RunState;
use hangar_types::worker::{ClaimWait, ClaimWaitReply, HostInfo, JoinRequest, JoinResponse, StateReport, WorkerRoute};
use serde_json::json;
use support::{Appliance, CREATE_STACK, Options, Summary, stack_input};

/// A joined worker's credentials.
struct Worker {
    cert_and_key: String,
    token: String,
}

async fn join(app: &Appliance, admin: &str, pool: &str) -> Worker {
    let d = app.ok(admin, "mutation($p: String!) { createJoinToken(pool: $p) { token } }", json!({ "p": pool })).await;
    let token = d["createJoinToken"]["token"].as_str().unwrap().to_string();
    let (key, csr) = hangar_certs::worker_csr("bench").unwrap();
    let req = JoinRequest {
        token,
        name: "bench".into(),
        csr_pem: csr,
        host: HostInfo { hostname: "bench".into(), os: "linux".into(), arch: "amd64".into(), version: "bench".into() },
    };
    let r = app.client.post(app.url(WorkerRoute::JOIN_PATH)).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let resp: JoinResponse = r.json().await.unwrap();
    Worker { cert_and_key: format!("{}{}", resp.certificate_pem, key), token: resp.worker_token }
}

/// The worker's client: only the appliance CA trusted, its certificate
/// presented, one connection kept alive, through `proxy` when given.
fn client(app: &Appliance, w: &Worker, proxy: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(w.cert_and_key.as_bytes()).unwrap())
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .no_proxy();
    if let Some(p) = proxy {
        b = b.proxy(reqwest::Proxy::https(p).unwrap());
    }
    b.build().unwrap()
}

/// tinyproxy on loopback, CONNECT-only to `localhost:port`.
fn tinyproxy(dir: &TestDir, port: u16) -> (ChildProcess, String) {
    let conf_dir = dir.subdir("tinyproxy");
    let filter = conf_dir.join("filter");
    std::fs::write(&filter, "^localhost$\n").unwrap();
    let listen = free_port();
    let conf = conf_dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort {listen}\nListen 127.0.0.1\nTimeout 600\nLogLevel Connect\nMaxClients 100\n\
             Allow 127.0.0.1\nConnectPort {port}\nFilter \"{}\"\nFilterDefaultDeny Yes\nFilterType ere\n",
            filter.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&conf_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [&filter, &conf] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut cmd = std::process::Command::new("tinyproxy");
    cmd.args(["-d", "-c"]).arg(&conf).stdin(std::process::Stdio::null());
    (ChildProcess::spawn(cmd, "tinyproxy", dir.path()), format!("http://127.0.0.1:{listen}"))
}

/// `runs` (after 5 warm-up runs) from trigger to the held poll's answer.
async fn measure(app: &Appliance, admin: &str, http: &reqwest::Client, token: &str, runs: usize) -> Vec<Duration> {
    let base = app.url("");
    let mut all = Vec::new();
    for i in 0..runs + 5 {
        let poll = {
            let req = http
                .post(format!("{base}{}", WorkerRoute::ClaimWait.path()))
                .bearer_auth(token)
                .json(&ClaimWait { max_wait_secs: 60 });
            tokio::spawn(async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200, "the long poll");
                (r.json::<ClaimWaitReply>().await.unwrap(), Instant::now())
            })
        };
        // Held by now (a run made READY sooner is taken by the poll's first claim).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let d = app
            .ok(admin, "mutation($c: String) { triggerRun(stack: \"http\", commitSha: $c) { id } }", json!({ "c": "a".repeat(40) }))
            .await;
        let id: i64 = d["triggerRun"]["id"].as_str().unwrap().parse().unwrap();
        let (reply, at) = poll.await.unwrap();
        let run = reply.run.expect("the poll was answered with the run");
        assert_eq!(run.run_id, id);
        if i >= 5 {
            all.push(at - started);
        }
        let report = StateReport { to: RunState::Failed, note: "bench".into(), changes: None, commit_message: None };
        let r = http
            .post(format!("{base}{}", WorkerRoute::ReportState { run: id }.path()))
            .bearer_auth(token)
            .json(&report)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "report FAILED for run {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all
}

fn main() {
    support::main(async move {
        let quick = support::quick();
        let runs: usize = support::arg("--runs").unwrap_or(if quick { 30 } else { 100 });
        let files = TestDir::new("bench-http-transport");
        let tools = files.subdir("tools");
        std::fs::create_dir_all(tools.join("terraform/1.0.3")).unwrap();
        std::fs::write(tools.join("terraform/1.0.3/terraform"), vec![7u8; 1 << 20]).unwrap();
        let extra = format!("tools_dir = \"{}\"\nworker_claim_wait_secs = 60\n", tools.display());
        let support::Bench { app, admin, .. } = support::start(Options { server_extra: extra, ..Options::default() }).await;
        app.ok(&admin, "mutation { createWorkerPool(name: \"http\") { id } }", json!({})).await;
        let mut input = stack_input("http", "https://git.invalid/bench.git");
        input["tool"] = json!("TERRAFORM");
        input["toolVersion"] = json!("1.0.3");
        input["workerPool"] = json!("http");
        app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
        let mut drain = std::process::Command::new(cargo_bin("hangar"));
        drain.arg("--config").arg(&app.config).arg("drain").env("HANGAR_LOG", "warn").stdin(std::process::Stdio::null());
        let mut drain = ChildProcess::spawn(drain, "drain", app.dir.path());
        let (mut proxy, proxy_url) = tinyproxy(&files, app.addr.port());
        let proxy_addr = proxy_url.trim_start_matches("http://").to_string();
        wait_for("tinyproxy to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(&proxy_addr).await.ok().map(drop)
        })
        .await;

        let worker = join(&app, &admin, "http").await;
        let direct = measure(&app, &admin, &client(&app, &worker, None), &worker.token, runs).await;
        let proxied = measure(&app, &admin, &client(&app, &worker, Some(&proxy_url)), &worker.token, runs).await;
        let connects = proxy.output().lines().filter(|l| l.contains("Request (file descriptor") && l.contains("CONNECT localhost:")).count();
        let other = proxy.output().lines().filter(|l| l.contains("Request (file descriptor") && !l.contains("CONNECT localhost:")).count();
        assert!(connects >= 1 && other == 0, "the proxied runs went through tinyproxy's CONNECT tunnels only");

        println!("trigger to worker start over the long poll ({runs} runs each, 5 warm-up runs not counted)\n");
        println!("| worker's route to the appliance | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for (label, all) in [("straight (HTTPS keep-alive)", direct), (&format!("tinyproxy, CONNECT-only ({connects} tunnels)") as &str, proxied)] {
            let s = Summary::of(all);
            println!("| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms |", s.n, s.p50, s.p99, s.max);
        }
        proxy.kill();
        drain.kill();
    })
}
