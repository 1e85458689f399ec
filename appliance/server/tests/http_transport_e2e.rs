//! The HTTP worker transport end to end: `hangar-worker run` with
//! `transport = "http"` against the real appliance (`hangar server`,
//! `hangar drain`, PostgreSQL, Garage, a git server, Terraform 1.0.3 and the
//! test provider from the appliance's mirror). The worker learns of work only
//! through its long-poll claim, never through the broker, and works through
//! a real CONNECT-only forward proxy (Debian's tinyproxy) when that is its
//! only way out; hostile and careless callers of the long poll are refused or
//! cleaned up after.

mod common;
mod fleet;
mod isolated;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use hangar_testkit::netns::{NetNs, Relay};
use hangar_testkit::{ChildProcess, cargo_bin};
use isolated::{IsolatedGit, assert_no_route_out};

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use fleet::{Fleet, FleetOptions, SOON};
use hangar_testkit::{GitServer, TestDir, provider, wait_for};
use serde_json::{Value, json};

/// A configuration with one file on the worker host, through the test provider.
fn config_with_file(path: &Path, content: &str) -> String {
    format!(
        "{}\nresource \"hangartest_file\" \"motd\" {{\n  path    = \"{}\"\n  content = \"{content}\"\n  mode    = \"0644\"\n}}\n",
        provider::required_providers(),
        path.display()
    )
}

/// The server's settings: the test provider's mirror and `extra`.
fn settings(mirror: &TestDir, extra: &str) -> String {
    format!("provider_mirror_dir = \"{}\"\n{extra}", mirror.path().display())
}

fn mirror() -> TestDir {
    let dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(dir.path());
    dir
}

/// Sets the worker's `timing.poll_secs`.
fn set_poll_secs(config_dir: &Path, secs: u64) {
    let path = config_dir.join("worker.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("poll_secs = 2\n"), "{text}");
    std::fs::write(&path, text.replace("poll_secs = 2\n", &format!("poll_secs = {secs}\n"))).unwrap();
}

/// The remote ports of the established TCP connections of process `pid`.
fn connected_ports(pid: u32) -> Vec<u16> {
    let out = std::process::Command::new("ss").args(["-tnpH", "state", "established"]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let tag = format!("pid={pid},");
    text.lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next()?.parse().ok())
        .collect()
}

/// Plans `id`, confirms it, and waits for it to finish.
async fn plan_confirm_apply(fleet: &Fleet, id: &str, logs: &[&hangar_testkit::ChildProcess]) {
    fleet.wait_state(id, "UNCONFIRMED", logs).await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    fleet.wait_state(id, "FINISHED", logs).await;
    assert_eq!(
        fleet.history(id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_on_the_http_transport_is_woken_by_its_long_poll_and_applies_with_no_broker_connection() {
    let mirror = mirror();
    // Polls are held five minutes and the worker asks as long: a run claimed
    // sooner (SOON is three minutes) was claimed because the poll was woken.
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings(&mirror, "worker_claim_wait_secs = 300\n")).await;
    let git = GitServer::start().await;
    let target = fleet.files.subdir("worker-host").join("motd");
    git.create_repo("net");
    git.push_files("net", "main", &[("infra/main.tf", &config_with_file(&target, "over https only"))], "a file");
    fleet.create_stack("net", &git.url("net"), "http-pool", json!({})).await;

    let config = fleet.join_http_worker("http-pool", "h1").await;
    let toml = std::fs::read_to_string(config.join("worker.toml")).unwrap();
    assert!(toml.contains("transport = \"http\""), "{toml}");
    assert!(!toml.contains("broker_url") && !toml.contains("mqtts://"), "an HTTP worker names no broker: {toml}");
    set_poll_secs(&config, 300);
    let worker = fleet.run_worker(&config, "h1");
    fleet.wait_workers("http-pool", "idle", 1).await;

    let id = fleet.trigger("net").await;
    plan_confirm_apply(&fleet, &id, &[&worker]).await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "over https only");
    assert_eq!(fleet.state_versions("net").await, 1);

    // Back to waiting, seen alive by its long poll.
    fleet.wait_workers("http-pool", "idle", 1).await;
    let broker = fleet.app.broker_port.unwrap();
    let ports = connected_ports(worker.pid());
    assert!(!ports.is_empty(), "the worker holds its long poll open");
    assert!(ports.iter().all(|p| *p == fleet.app.addr.port()), "only HTTPS to the appliance, never the broker on {broker}: {ports:?}");
    let log = worker.output();
    assert!(log.contains("transport=\"http\"") || log.contains("transport=http"), "{}", worker.output_tail());
    assert!(!log.contains("connected to the broker"), "{}", worker.output_tail());
}

/// A worker's credentials, for calling the worker API as it would.
struct Caller {
    client: reqwest::Client,
    token: String,
    base: String,
}

impl Caller {
    fn new(fleet: &Fleet, config_dir: &Path) -> Caller {
        let read = |f: &str| std::fs::read_to_string(config_dir.join(f)).unwrap();
        let identity = reqwest::Identity::from_pem(format!("{}{}", read("worker.crt"), read("worker.key")).as_bytes()).unwrap();
        let ca = reqwest::Certificate::from_pem(read("ca.crt").as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Caller { client, token: read("token").trim().to_string(), base: format!("https://localhost:{}", fleet.app.addr.port()) }
    }

    fn wait(&self, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/api/v1/worker/claim/wait", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    async fn poll(&self, secs: u64) -> (u16, Value) {
        let r = self.wait(&format!("{{\"max_wait_secs\":{secs}}}")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn worker_id(fleet: &Fleet, config_dir: &Path) -> i64 {
    let text = std::fs::read_to_string(config_dir.join("worker.toml")).unwrap();
    let id = text.lines().find_map(|l| l.strip_prefix("worker_id = ")).unwrap();
    let _ = fleet;
    id.trim().parse().unwrap()
}

async fn last_seen(fleet: &Fleet, worker: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let mut c = fleet.app.pg.database().connect().await.unwrap();
    diesel::sql_query("SELECT last_seen_at FROM workers WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(worker)
        .get_result::<Row>(&mut c)
        .await
        .unwrap()
        .last_seen_at
}

/// Joins `n` workers of `pool` (not run: the test calls as them).
async fn join_callers(fleet: &Fleet, pool: &str, n: usize) -> Vec<(PathBuf, Caller)> {
    let mut out = Vec::new();
    for i in 0..n {
        let dir = fleet.join_http_worker(pool, &format!("{pool}-{i}")).await;
        let caller = Caller::new(fleet, &dir);
        out.push((dir, caller));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn long_polls_refuse_bad_callers_release_gone_ones_and_outnumber_the_database_pool() {
    let mirror = mirror();
    let fleet = Fleet::start_with_server(FleetOptions::default(), &settings(&mirror, "worker_claim_wait_secs = 60\n")).await;
    let git = GitServer::start().await;
    git.create_repo("noop");
    git.push_files("noop", "main", &[("infra/main.tf", fleet::CONFIG)], "nothing to manage");

    // An idle worker on the HTTP transport sends no heartbeats of its own:
    // its polls (two seconds each here) keep it seen.
    let config = fleet.join_http_worker("alive", "idler").await;
    let idler_id = worker_id(&fleet, &config).await;
    let idler = fleet.run_worker(&config, "idler");
    fleet.wait_workers("alive", "idle", 1).await;
    let first = wait_for("the idle worker to be seen", SOON, || async { last_seen(&fleet, idler_id).await }).await;
    let later = wait_for("the idle worker to be seen again", SOON, || async {
        last_seen(&fleet, idler_id).await.filter(|t| *t > first)
    })
    .await;
    assert!(later > first);
    assert!(!idler.output().contains("heartbeat failed"), "{}", idler.output_tail());

    // Hostile and malformed calls.
    let callers = join_callers(&fleet, "waiters", 14).await;
    let (_, me) = &callers[0];
    for (body, needle) in [
        ("{\"max_wait_secs\":0}", "max_wait_secs"),
        ("{\"max_wait_secs\":301}", "max_wait_secs"),
        ("{\"max_wait_secs\":5,\"and\":1}", "unknown field"),
        ("not json", "not the expected JSON"),
        ("", "not the expected JSON"),
    ] {
        let r = me.wait(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle) && !text.contains('\n'), "{body}: {text}");
    }
    let r = me.client.get(format!("{}/api/v1/worker/claim/wait", me.base)).bearer_auth(&me.token).send().await.unwrap();
    assert_eq!(r.status(), 404, "GET is no call");
    let r = me.client.post(format!("{}/api/v1/worker/claim/wait", me.base)).bearer_auth("hwt_forged").body("{\"max_wait_secs\":5}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let anonymous = common::client_trusting(&fleet.app.ca_path());
    let r = anonymous.post(format!("{}/api/v1/worker/claim/wait", me.base)).bearer_auth(&me.token).body("{\"max_wait_secs\":5}").send().await.unwrap();
    assert_eq!(r.status(), 401, "no client certificate");
    let (revoked_dir, revoked) = &callers[13];
    let rid = worker_id(&fleet, revoked_dir).await;
    // Revoked while its poll is held: the poll is answered at once, refused.
    let held = tokio::spawn({
        let req = revoked.wait("{\"max_wait_secs\":60}");
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    wait_for("the poll to be held", SOON, || async { last_seen(&fleet, rid).await }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    fleet.ok("mutation($id: ID!) { revokeWorker(id: $id) { status } }", json!({ "id": rid.to_string() })).await;
    let (status, text) = held.await.unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains(&format!("worker {rid} is revoked")), "{text}");
    assert!(started.elapsed() < Duration::from_secs(50), "answered at the revocation, not at the poll's end");
    assert_eq!(revoked.poll(5).await.0, 403, "and every poll after it");

    // A drained worker's poll says so (and hands it nothing); undrained, it does not.
    let (drained_dir, drained) = &callers[12];
    let did = worker_id(&fleet, drained_dir).await.to_string();
    fleet.ok("mutation($id: ID!) { drainWorker(id: $id) { status } }", json!({ "id": did })).await;
    let (status, body) = drained.poll(1).await;
    assert_eq!((status, &body["drain"], &body["run"]), (200, &json!(true), &Value::Null), "{body}");
    fleet.ok("mutation($id: ID!) { undrainWorker(id: $id) { status } }", json!({ "id": did })).await;
    let (status, body) = drained.poll(1).await;
    assert_eq!((status, &body["drain"]), (200, &json!(false)), "{body}");

    // A client that goes away mid-poll: its waiter is released, and the run
    // goes to the next waiter, well before the 60 s poll would end.
    let (gone_dir, gone) = &callers[1];
    let gone_id = worker_id(&fleet, gone_dir).await;
    let abandoned = tokio::spawn(gone.wait("{\"max_wait_secs\":60}").send());
    wait_for("the abandoned poll to be held", SOON, || async { last_seen(&fleet, gone_id).await }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    let _ = abandoned.await;

    // Twelve connections in the server's database pool; twelve waiters here
    // besides the idler (and the abandoned one, gone), all held at once.
    let waiters: Vec<&Caller> = callers[2..13].iter().map(|(_, c)| c).chain(std::iter::once(me)).collect();
    assert_eq!(waiters.len(), 12);
    let ids: Vec<i64> = {
        let mut v = Vec::new();
        for (d, _) in callers[2..13].iter().chain(std::iter::once(&callers[0])) {
            v.push(worker_id(&fleet, d).await);
        }
        v
    };
    for i in 0..waiters.len() {
        fleet.create_stack(&format!("s{i}"), &git.url("noop"), "waiters", json!({})).await;
    }
    let polls: Vec<_> = waiters
        .iter()
        .map(|c| {
            let req = c.wait("{\"max_wait_secs\":60}");
            tokio::spawn(async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for id in &ids {
        wait_for("every poll to be held", SOON, || async { last_seen(&fleet, *id).await }).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for i in 0..waiters.len() {
        runs.push(fleet.trigger(&format!("s{i}")).await);
    }
    let mut claimed = Vec::new();
    for p in polls {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["drain"], false);
        let run = body["run"]["run_id"].as_i64().unwrap_or_else(|| panic!("a waiter got no run: {body}"));
        claimed.push(run.to_string());
    }
    assert!(started.elapsed() < Duration::from_secs(55), "the polls were answered by wake-ups, not at their end");
    claimed.sort();
    runs.sort();
    assert_eq!(claimed, runs, "each run claimed once, by one waiter each");
    for id in &runs {
        assert_eq!(fleet.run(id).await.0, "PREPARING", "run {id}");
    }
    // The worker that went away claimed nothing.
    let mut c = fleet.app.pg.database().connect().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n = diesel::sql_query("SELECT count(*) AS n FROM runs WHERE worker_id = $1")
        .bind::<diesel::sql_types::BigInt, _>(gone_id)
        .get_result::<N>(&mut c)
        .await
        .unwrap()
        .n;
    assert_eq!(n, 0, "the worker that went away was handed no run");
    drop(idler);

    // A stopping server answers its held polls at once, empty, instead of
    // holding its shutdown (20 s of grace here) for them.
    let held = tokio::spawn(me.wait("{\"max_wait_secs\":60}").send());
    wait_for("the last poll to be held", SOON, || async {
        last_seen(&fleet, ids[11]).await.filter(|t| *t > chrono::Utc::now() - chrono::Duration::seconds(1))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    fleet.app.server.as_ref().unwrap().signal(nix::sys::signal::Signal::SIGTERM);
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "run": null, "drain": false }));
    assert!(stopping.elapsed() < Duration::from_secs(15), "answered at the shutdown, not at the grace period's end");
}

/// tinyproxy in a network namespace of its own, CONNECT-only to one host
/// and port: `Filter` with a default deny lets no other host through, and
/// `ConnectPort` no other port. In that namespace `host` is the host's end of
/// its link, where a relay leads to the appliance.
struct Proxy {
    process: ChildProcess,
    _ns: NetNs,
    _relay: Relay,
    _front: Relay,
    /// Where clients reach it, on the host.
    addr: SocketAddr,
}

impl Proxy {
    async fn start(fleet: &Fleet, host: &str, clients_via: Ipv4Addr) -> Proxy {
        let ns = NetNs::create();
        ns.set_hosts(&[(host, IpAddr::V4(ns.host_addr)), ("localhost", IpAddr::V4(Ipv4Addr::LOCALHOST))]);
        let port = fleet.app.addr.port();
        let relay = Relay::start(SocketAddr::new(IpAddr::V4(ns.host_addr), port), SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await;
        let dir = fleet.files.subdir("tinyproxy");
        let filter = dir.join("filter");
        std::fs::write(&filter, format!("^{}$\n", host.replace('.', "\\."))).unwrap();
        let listen_port = hangar_testkit::free_port();
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "User nobody\nGroup nogroup\nPort {listen_port}\nListen {listen}\nTimeout 600\nLogLevel Info\nMaxClients 100\n\
                 Allow {host_side}\nConnectPort {port}\nFilter \"{filter}\"\nFilterDefaultDeny Yes\nFilterType ere\n",
                listen = ns.ns_addr,
                host_side = ns.host_addr,
                filter = filter.display(),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for p in [&dir, &filter, &conf] {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut cmd = ns.command("tinyproxy");
        cmd.args(["-d", "-c"]).arg(&conf).stdin(std::process::Stdio::null());
        let process = ChildProcess::spawn(cmd, "tinyproxy", fleet.files.path());
        wait_for("tinyproxy to listen", SOON, || async {
            process.output().contains("Starting main loop").then_some(())
        })
        .await;
        // Clients reach it through a relay on their own link.
        let front = Relay::start(SocketAddr::new(IpAddr::V4(clients_via), 0), SocketAddr::new(IpAddr::V4(ns.ns_addr), listen_port)).await;
        let addr = front.addr();
        Proxy { process, _ns: ns, _relay: relay, _front: front, addr }
    }

    /// Every request the proxy was asked to make.
    fn requests(&self) -> Vec<String> {
        self.process
            .output()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor ").map(|(_, r)| r.split_once("): ").map_or(r, |x| x.1).to_string()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_connect_only_proxy_a_worker_with_no_other_route_runs_terraform() {
    let worker_ns = NetNs::create();
    let git = IsolatedGit::start(&worker_ns).await;
    let mirror = mirror();
    let opts = FleetOptions { public_host: common::PROXIED_HOST, ..FleetOptions::default() };
    let fleet = Fleet::start_with_server(opts, &settings(&mirror, "")).await;
    let proxy = Proxy::start(&fleet, common::PROXIED_HOST, worker_ns.host_addr).await;

    let target = fleet.files.subdir("worker-host").join("motd");
    git.server.create_repo("net");
    git.server.push_files("net", "main", &[("infra/main.tf", &config_with_file(&target, "through the proxy"))], "a file");
    fleet.create_stack("net", &git.url("net"), "proxied", json!({})).await;

    let config = fleet.join_http_worker("proxied", "p1").await;
    let toml = std::fs::read_to_string(config.join("worker.toml")).unwrap();
    assert!(toml.contains(&format!("server_url = \"https://{}:", common::PROXIED_HOST)), "{toml}");
    // Inside, the appliance's name resolves to nothing and nothing routes
    // out: the proxy is the only way to the appliance.
    worker_ns.set_hosts(&[("localhost", IpAddr::V4(Ipv4Addr::LOCALHOST))]);
    assert_no_route_out(&worker_ns);
    let mut cmd = worker_ns.command(cargo_bin("hangar-worker"));
    cmd.args(["run", "--config-dir"])
        .arg(&config)
        .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HANGAR_LOG", "info,hangar_worker=debug")
        .stdin(std::process::Stdio::null());
    let worker = ChildProcess::spawn(cmd, "worker-p1", fleet.files.path());
    fleet.wait_workers("proxied", "idle", 1).await;

    let id = fleet.trigger("net").await;
    plan_confirm_apply(&fleet, &id, &[&worker, &proxy.process]).await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "through the proxy");
    assert_eq!(fleet.state_versions("net").await, 1, "Terraform's state reached the appliance");

    let requests = proxy.requests();
    let want = format!("CONNECT {}:{} HTTP/1.1", common::PROXIED_HOST, fleet.app.addr.port());
    assert!(!requests.is_empty(), "{}", proxy.process.output_tail());
    assert!(requests.iter().all(|r| *r == want), "only CONNECTs to the appliance: {requests:?}");
    // The worker's own connections (the long poll, reports, the tool) and
    // Terraform's (provider mirror, state backend, each its own process) all
    // went through it.
    assert!(requests.len() >= 3, "{requests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_past_the_servers_bound_are_refused_with_503_and_the_bound_frees_as_polls_end() {
    let mirror = mirror();
    let fleet =
        Fleet::start_with_server(FleetOptions::default(), &settings(&mirror, "worker_claim_wait_secs = 60\nworker_claim_waiters = 2\n")).await;
    let callers = join_callers(&fleet, "bounded", 3).await;
    let mut held = Vec::new();
    for (dir, c) in &callers[..2] {
        let id = worker_id(&fleet, dir).await;
        held.push(tokio::spawn(c.wait("{\"max_wait_secs\":60}").send()));
        wait_for("the poll to be held", SOON, || async { last_seen(&fleet, id).await }).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = callers[2].1.poll(60).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("2 long-poll claims are held already"), "{body}");
    // One poll goes away: its place is free again.
    let gone = held.remove(0);
    gone.abort();
    let _ = gone.await;
    let third = &callers[2].1;
    let freed = std::time::Instant::now();
    wait_for("a place to free up", SOON, || async {
        let r = third.wait("{\"max_wait_secs\":1}").send().await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    // Well before the abandoned poll's 60 s would have ended.
    assert!(freed.elapsed() < Duration::from_secs(30), "freed when its client went away");
}
