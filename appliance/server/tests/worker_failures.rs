//! Runs that lose their worker, their server or their network, against the
//! real appliance: `hangar server` hosting the broker, `hangar drain`,
//! `hangar scheduler` (the stuck-run reaper), workers joined and run as their
//! own processes, a git server and Terraform 1.0.3. The stack's tool is a
//! wrapper around the genuine binary that can hold `terraform plan` or
//! `terraform apply` once it has taken the state lock, so that a test can
//! kill or cut something at that very moment.

mod common;
mod fleet;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::{CONFIG, Fleet, FleetOptions, SOON};
use hangar_testkit::netns::{NetNs, Relay};
use hangar_testkit::{ChildProcess, GitServer, cargo_bin, wait_for};
use serde_json::{Value, json};

/// A Terraform command the wrapper can hold.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Plan,
    Apply,
}

impl Phase {
    fn command(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Apply => "apply",
        }
    }
}

/// The wrapper served as the stack's Terraform. While `hold-<command>` exists
/// in the control directory, that command runs with trace logging into a
/// one-page pipe the wrapper reads; the moment Terraform logs that it is
/// reading the state (the state lock is then taken) it is stopped, and it can
/// have run at most a page of log ahead (a plan or apply logs far more before
/// letting the lock go). The wrapper says so with `at-<command>` and lets
/// Terraform go on once the hold is removed. When the worker that started it
/// goes away it kills Terraform (the lock stays taken, as when a host dies).
const WRAPPER: &str = r#"#!/usr/bin/python3
import fcntl, os, select, signal, subprocess, sys, time
ctl, real = '@CTL@', '@REAL@'
cmd = sys.argv[1] if len(sys.argv) > 1 else ''
hold = os.path.join(ctl, 'hold-' + cmd)
if not os.path.exists(hold):
    os.execv(real, [real] + sys.argv[1:])
parent = os.getppid()
# A FIFO, not an inherited pipe: Terraform re-executes itself under a
# panic handler that passes on no other descriptor.
fifo = os.path.join(ctl, 'trace-%s-%d' % (cmd, os.getpid()))
os.mkfifo(fifo)
r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
fcntl.fcntl(r, 1031, 4096)  # F_SETPIPE_SZ
env = dict(os.environ, TF_LOG='trace', TF_LOG_PATH=fifo)
# Its own group: Terraform runs as two processes (a panic handler and the
# one doing the work), and both are stopped, continued or killed together.
tf = subprocess.Popen([real] + sys.argv[1:], env=env, process_group=0)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, _f: os.killpg(tf.pid, n))

def orphaned():
    if os.getppid() != parent:
        os.killpg(tf.pid, signal.SIGKILL)
        sys.exit(137)

seen, held = b'', False
while tf.poll() is None:
    orphaned()
    if not select.select([r], [], [], 0.1)[0]:
        continue
    try:
        chunk = os.read(r, 4096)
    except BlockingIOError:
        continue
    if not chunk:
        # No writer yet (or any more): select would report this at once.
        time.sleep(0.01)
        continue
    if held:
        continue
    seen = (seen + chunk)[-4096:]
    if b'backend/local: reading remote state' in seen:
        os.killpg(tf.pid, signal.SIGSTOP)
        held = True
        open(os.path.join(ctl, 'at-' + cmd), 'w').close()
        while os.path.exists(hold):
            orphaned()
            time.sleep(0.1)
        os.killpg(tf.pid, signal.SIGCONT)
sys.exit(tf.wait())
"#;

/// The control directory of the wrapper.
struct Hold {
    ctl: PathBuf,
}

impl Hold {
    /// Serves the wrapper as the appliance's Terraform 1.0.3 (before any run
    /// asks for it: the appliance announces the file's SHA-256).
    fn install(fleet: &Fleet) -> Hold {
        let ctl = fleet.files.subdir("hold");
        let script = WRAPPER
            .replace("@CTL@", &ctl.display().to_string())
            .replace("@REAL@", &hangar_testkit::terraform::terraform().display().to_string());
        let tool = fleet.files.path().join("tools/terraform/1.0.3/terraform");
        std::fs::write(&tool, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hold { ctl }
    }

    fn hold(&self, phase: Phase) {
        let _ = std::fs::remove_file(self.ctl.join(format!("at-{}", phase.command())));
        std::fs::write(self.ctl.join(format!("hold-{}", phase.command())), b"").unwrap();
    }

    /// Waits until Terraform is held in `phase` with the state lock taken;
    /// run `id` ending first fails the test at once.
    async fn reached(&self, phase: Phase, fleet: &Fleet, id: &str, worker: &ChildProcess) {
        let at = self.ctl.join(format!("at-{}", phase.command()));
        let what = format!("terraform {} to be held (worker log: {})", phase.command(), worker.log_path().display());
        wait_for(&what, SOON, || {
            let at = at.clone();
            async move {
                if at.exists() {
                    return Some(());
                }
                let (state, run) = fleet.run(id).await;
                assert!(!fleet::TERMINAL.contains(&state.as_str()), "run {id} ended {state} before terraform was held: {run}");
                None
            }
        })
        .await;
    }

    fn release(&self, phase: Phase) {
        let _ = std::fs::remove_file(self.ctl.join(format!("hold-{}", phase.command())));
    }
}

/// A fleet with the wrapper as its Terraform, and a stack `net` on pool
/// `builders` whose configuration is pushed to `git`; the stack clones it
/// from `repository`.
async fn fleet_with_stack(opts: FleetOptions, git: &GitServer, repository: &str) -> (Fleet, Hold) {
    let fleet = Fleet::start_with(opts).await;
    let hold = Hold::install(&fleet);
    git.create_repo("net");
    git.push_files("net", "main", &[("infra/main.tf", CONFIG)], "a stack");
    fleet.create_stack("net", repository, "builders", json!({ "autodeploy": true })).await;
    (fleet, hold)
}

/// The stack as the API shows it, with its state lock.
async fn stack_view(fleet: &Fleet) -> (Value, Value) {
    let d = fleet
        .ok(
            "{ stack(slug: \"net\") { needsReconciliation } stateLock(stack: \"net\") { lockId heldBy runId operation } }",
            json!({}),
        )
        .await;
    (d["stack"].clone(), d["stateLock"].clone())
}

/// SIGKILL to the worker's process group only: Terraform runs in a group of
/// its own, and the wrapper kills it on finding its worker gone, as a host
/// that died would.
fn kill_worker(worker: &mut ChildProcess) {
    worker.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_while_planning_fails_its_run_once_the_lease_expires_and_the_stack_is_free_again() {
    let git = GitServer::start().await;
    let (fleet, hold) = fleet_with_stack(FleetOptions { lease_secs: 10, scheduler: true, ..FleetOptions::default() }, &git, &git.url("net")).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let mut worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    hold.hold(Phase::Plan);
    let id = fleet.trigger("net").await;
    hold.reached(Phase::Plan, &fleet, &id, &worker).await;
    assert_eq!(fleet.run(&id).await.0, "PLANNING");
    let (_, lock) = stack_view(&fleet).await;
    assert_eq!(lock["runId"], json!(id), "the held plan took the state lock: {lock}");
    kill_worker(&mut worker);
    hold.release(Phase::Plan);

    let run = fleet.wait_state(&id, "FAILED", &[&worker]).await;
    let reason = run["failureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("worker lost during PLANNING"), "{reason}");
    assert!(reason.contains("lease expired"), "{reason}");
    let history = fleet.history(&id).await;
    assert_eq!(history.last().map(String::as_str), Some("FAILED"));
    assert_eq!(history.iter().filter(|s| *s == "PLANNING").count(), 1, "not retried: {history:?}");
    // A plan changes nothing: the stack needs no reconciliation.
    let (stack, _) = stack_view(&fleet).await;
    assert_eq!(stack["needsReconciliation"], false);

    // The stack is free: the next run, on another worker, takes the lock the
    // lost plan left and goes to the end.
    let config = fleet.join_worker("builders", "host-b").await;
    let other = fleet.run_worker(&config, "host-b");
    let next = fleet.trigger("net").await;
    fleet.wait_state(&next, "FINISHED", &[&other]).await;
    assert_eq!(fleet.state_versions("net").await, 1);
    let (_, lock) = stack_view(&fleet).await;
    assert!(lock.is_null(), "the finished run let the lock go: {lock}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_while_applying_is_never_retried_and_leaves_the_lock_for_an_operator() {
    let git = GitServer::start().await;
    let (fleet, hold) = fleet_with_stack(FleetOptions { lease_secs: 10, scheduler: true, ..FleetOptions::default() }, &git, &git.url("net")).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let mut worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    hold.hold(Phase::Apply);
    let id = fleet.trigger("net").await;
    hold.reached(Phase::Apply, &fleet, &id, &worker).await;
    assert_eq!(fleet.run(&id).await.0, "APPLYING");
    kill_worker(&mut worker);
    hold.release(Phase::Apply);

    let run = fleet.wait_state(&id, "FAILED", &[&worker]).await;
    let reason = run["failureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("worker lost during apply"), "{reason}");
    let history = fleet.history(&id).await;
    assert_eq!(
        history,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FAILED"],
        "one apply, never retried"
    );
    assert_eq!(fleet.state_versions("net").await, 0, "the killed apply wrote nothing");

    // The stack says it needs reconciliation, and the lock the apply held is
    // still there, naming the run, for an operator to look at.
    let (stack, lock) = stack_view(&fleet).await;
    assert_eq!(stack["needsReconciliation"], true, "{stack}");
    assert_eq!(lock["runId"], json!(id), "{lock}");
    assert!(lock["operation"].as_str().unwrap_or_default().contains("Apply"), "{lock}");

    // A later run's Terraform finds the state locked: nothing is applied
    // behind the operator's back.
    let config = fleet.join_worker("builders", "host-b").await;
    let other = fleet.run_worker(&config, "host-b");
    let next = fleet.trigger("net").await;
    fleet.wait_state(&next, "FAILED", &[&other]).await;
    assert_eq!(fleet.state_versions("net").await, 0, "nothing applied while the lock is kept");
    let (_, still) = stack_view(&fleet).await;
    assert_eq!(still["lockId"], lock["lockId"], "the lost apply's lock is kept");

    // The operator removes it.
    let d = fleet
        .ok("mutation($l: String!) { forceUnlockState(stack: \"net\", lockId: $l) { lockId runId } }", json!({ "l": lock["lockId"] }))
        .await;
    assert_eq!(d["forceUnlockState"]["lockId"], lock["lockId"]);
    let (_, gone) = stack_view(&fleet).await;
    assert!(gone.is_null(), "{gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarted_mid_run_is_rejoined_over_https_and_mqtt_and_the_run_finishes() {
    let git = GitServer::start().await;
    let (mut fleet, hold) = fleet_with_stack(FleetOptions::default(), &git, &git.url("net")).await;
    let config = fleet.join_worker("builders", "host-a").await;
    // Claims only on notifications (and on connecting to the broker): a run
    // claimed after the restarts proves the worker is back on MQTT.
    let path = config.join("worker.toml");
    let toml = std::fs::read_to_string(&path).unwrap().replace("poll_secs = 2\n", "poll_secs = 3600\n");
    std::fs::write(&path, toml).unwrap();
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    hold.hold(Phase::Plan);
    hold.hold(Phase::Apply);
    let id = fleet.trigger("net").await;

    // Killed outright while planning.
    hold.reached(Phase::Plan, &fleet, &id, &worker).await;
    fleet.app.server().kill();
    hold.release(Phase::Plan);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.app.start_server().await;

    // Stopped gracefully while applying.
    hold.reached(Phase::Apply, &fleet, &id, &worker).await;
    let status = fleet.app.server().terminate(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the server stops cleanly: {}", fleet.app.server().output_tail());
    hold.release(Phase::Apply);
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.app.start_server().await;

    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    assert_eq!(
        fleet.history(&id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
    assert_eq!(fleet.state_versions("net").await, 1);

    // Work announced over the restarted broker reaches the worker.
    let changed = CONFIG.replace("world", "again");
    git.push_files("net", "main", &[("infra/main.tf", changed.as_str())], "a change");
    let next = fleet.trigger("net").await;
    fleet.wait_state(&next, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.state_versions("net").await, 2);
}

/// A worker host in a network namespace of its own: inside, `localhost`
/// (the name in the appliance's URLs and certificates) is the host's end of
/// the link, where relays lead to the server, the broker and the object store.
/// Returns the relays (server, broker, objects) and the worker's process.
async fn namespaced_worker(fleet: &Fleet, ns: &NetNs, name: &str) -> (Vec<Relay>, ChildProcess) {
    ns.set_hosts(&[("localhost", IpAddr::V4(ns.host_addr))]);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut relays = Vec::new();
    for port in [fleet.app.addr.port(), fleet.app.broker_port.unwrap(), objects_port(&fleet.app.config)] {
        relays.push(Relay::start(SocketAddr::new(IpAddr::V4(ns.host_addr), port), SocketAddr::new(loopback, port)).await);
    }
    let config = fleet.join_worker("builders", name).await;
    let mut cmd = ns.command(cargo_bin("hangar-worker"));
    cmd.args(["run", "--config-dir"])
        .arg(&config)
        .env("HANGAR_LOG", "info,hangar_worker=debug")
        .stdin(std::process::Stdio::null());
    let worker = ChildProcess::spawn(cmd, &format!("worker-{name}"), fleet.files.path());
    (relays, worker)
}

/// A git server the namespaced worker reaches: git (curl) takes `localhost`
/// to be loopback whatever the hosts file says, so the repository is named by
/// the link's address, which the host reaches as well.
async fn git_across(ns: &NetNs) -> (GitServer, Relay, String) {
    let git = GitServer::start().await;
    let relay = Relay::start(SocketAddr::new(IpAddr::V4(ns.host_addr), 0), git.addr()).await;
    let repository = format!("http://{}/net.git", relay.addr());
    (git, relay, repository)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_cut_shorter_than_the_lease_does_not_lose_the_run() {
    // The worker's only way to the appliance is the link; cutting the relays
    // cuts HTTPS, MQTT, the state backend and the object store at once.
    let ns = NetNs::create();
    let (git, _git_relay, repository) = git_across(&ns).await;
    let (fleet, hold) = fleet_with_stack(FleetOptions { lease_secs: 20, scheduler: true, ..FleetOptions::default() }, &git, &repository).await;
    let (relays, worker) = namespaced_worker(&fleet, &ns, "host-a").await;
    fleet.wait_workers("builders", "idle", 1).await;

    hold.hold(Phase::Plan);
    let id = fleet.trigger("net").await;
    hold.reached(Phase::Plan, &fleet, &id, &worker).await;
    // The plan goes on while the worker cannot reach the appliance: its
    // heartbeats, log chunks, reports and state calls wait for the network.
    for r in &relays {
        r.cut().await;
    }
    hold.release(Phase::Plan);
    let refused = ns.run(&["bash", "-c", &format!("exec 3<>/dev/tcp/localhost/{} && echo open", fleet.app.addr.port())]);
    assert!(refused.is_empty(), "a cut link refuses connections: {refused}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    for r in &relays {
        r.restore().await;
    }

    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    assert_eq!(
        fleet.history(&id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
    assert_eq!(fleet.state_versions("net").await, 1);

    // A plan confirmed while the worker is cut off: the notification is
    // lost, and the worker learns of the confirmation once it is back.
    fleet.create_stack("manual", &repository, "builders", json!({ "autodeploy": false })).await;
    let id = fleet.trigger("manual").await;
    fleet.wait_state(&id, "UNCONFIRMED", &[&worker]).await;
    for r in &relays {
        r.cut().await;
    }
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fleet.run(&id).await.0, "CONFIRMED", "nothing got through the cut");
    for r in &relays {
        r.restore().await;
    }
    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.state_versions("manual").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_its_own_network_namespace_a_worker_needs_only_the_appliance_and_the_git_server() {
    let ns = NetNs::create();
    let (git, _git_relay, repository) = git_across(&ns).await;
    let (fleet, _hold) = fleet_with_stack(FleetOptions::default(), &git, &repository).await;
    let (_relays, worker) = namespaced_worker(&fleet, &ns, "host-ns").await;

    let routes = ns.run(&["ip", "-4", "route", "show"]);
    assert_eq!(routes.lines().count(), 1, "one link route and no default route: {routes}");
    assert!(routes.contains(&format!("src {}", ns.ns_addr)), "{routes}");
    let default = ns.run(&["ip", "-4", "route", "get", "1.1.1.1"]);
    assert!(default.is_empty(), "no route out: {default}");

    fleet.wait_workers("builders", "idle", 1).await;

    let id = fleet.trigger("net").await;
    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    assert_eq!(
        fleet.history(&id).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
    assert_eq!(fleet.state_versions("net").await, 1);
    // The tool came from the appliance, through the link.
    let cached = std::fs::read_dir(fleet.files.path().join("cache-host-ns")).map(|d| d.count()).unwrap_or(0);
    assert!(cached > 0, "the tool was downloaded into the worker's cache");

    // A configuration that needs a provider: Terraform asks the appliance's
    // mirror, with the run's token (a 404, not a 401: the mirror holds none),
    // and nothing else.
    let needs_provider = "terraform {\n  required_providers {\n    null = { source = \"hashicorp/null\" }\n  }\n}\n";
    git.push_files("net", "main", &[("infra/providers.tf", needs_provider)], "a provider");
    let id = fleet.trigger("net").await;
    let run = fleet.wait_state(&id, "FAILED", &[&worker]).await;
    let reason = run["failureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("terraform init failed"), "{reason}");
    assert!(reason.contains("hashicorp/null"), "{reason}");
    let log = fleet.app.server_log();
    let asked: Vec<&str> = log.lines().filter(|l| l.contains("path=\"/v1/providers/")).collect();
    assert!(!asked.is_empty(), "the mirror was asked");
    for line in asked {
        assert!(line.contains("/v1/providers/registry.terraform.io/hashicorp/null/"), "{line}");
        assert!(line.contains("status=404"), "{line}");
    }
}

/// The port of the object store's TLS front, from the appliance's config.
fn objects_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let endpoint = text.lines().find_map(|l| l.strip_prefix("endpoint = \"https://localhost:")).expect("objects endpoint");
    endpoint.trim_end_matches('"').parse().unwrap()
}

