//! A worker host cut off from everything but the appliance and the git
//! server: `hangar-worker run` inside a network namespace of its own whose
//! only link leads to the host, where relays lead on to the server, the
//! broker, the object store and the git server. Inside, `localhost` (the
//! name in the appliance's URLs and certificates) is the host's end of the
//! link. Nothing can be downloaded from anywhere else: providers and tools
//! come from the appliance or not at all.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use hangar_testkit::netns::{NetNs, Relay};
use hangar_testkit::{ChildProcess, GitServer, cargo_bin};

use crate::fleet::Fleet;

/// A git server the isolated worker reaches. git (curl) takes `localhost` to
/// be loopback whatever the hosts file says, so repositories are named by
/// the link's address, which the host reaches as well.
pub struct IsolatedGit {
    pub server: GitServer,
    _relay: Relay,
    base: String,
}

impl IsolatedGit {
    pub async fn start(ns: &NetNs) -> IsolatedGit {
        let server = GitServer::start().await;
        let relay = Relay::start(SocketAddr::new(IpAddr::V4(ns.host_addr), 0), server.addr()).await;
        let base = format!("http://{}", relay.addr());
        IsolatedGit { server, _relay: relay, base }
    }

    /// The clone URL of repository `name`, as the worker reaches it.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base)
    }
}

/// `hangar-worker run` in `ns`, joined to `pool` as `name`, with the relays
/// that carry its traffic to the appliance.
pub struct IsolatedWorker {
    pub process: ChildProcess,
    pub config_dir: PathBuf,
    _relays: Vec<Relay>,
}

impl IsolatedWorker {
    pub async fn start(fleet: &Fleet, ns: &NetNs, pool: &str, name: &str) -> IsolatedWorker {
        ns.set_hosts(&[("localhost", IpAddr::V4(ns.host_addr))]);
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut relays = Vec::new();
        for port in [fleet.app.addr.port(), fleet.app.broker_port.expect("a hosted broker"), objects_port(&fleet.app.config)] {
            relays.push(Relay::start(SocketAddr::new(IpAddr::V4(ns.host_addr), port), SocketAddr::new(loopback, port)).await);
        }
        let config_dir = fleet.join_worker(pool, name).await;
        let mut cmd = ns.command(cargo_bin("hangar-worker"));
        cmd.args(["run", "--config-dir"])
            .arg(&config_dir)
            .env("HANGAR_LOG", "info,hangar_worker=debug")
            .stdin(std::process::Stdio::null());
        let process = ChildProcess::spawn(cmd, &format!("worker-{name}"), fleet.files.path());
        IsolatedWorker { process, config_dir, _relays: relays }
    }
}

/// Asserts that `ns` routes nowhere but its link: one link route, no default.
pub fn assert_no_route_out(ns: &NetNs) {
    let routes = ns.run(&["ip", "-4", "route", "show"]);
    assert_eq!(routes.lines().count(), 1, "one link route and no default route: {routes}");
    assert!(routes.contains(&format!("src {}", ns.ns_addr)), "{routes}");
    let default = ns.run(&["ip", "-4", "route", "get", "1.1.1.1"]);
    assert!(default.is_empty(), "no route out: {default}");
}

/// The port of the object store's TLS front, from the appliance's config.
pub fn objects_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let endpoint = text.lines().find_map(|l| l.strip_prefix("endpoint = \"https://localhost:")).expect("objects endpoint");
    endpoint.trim_end_matches('"').parse().unwrap()
}
