//! Several `hangar server` processes behind Debian's HAProxy, as an operator
//! scales out: each member is the appliance's configuration with listeners
//! of its own; the balancer passes the API and the broker through as TCP,
//! opens API connections with a PROXY protocol v2 header, and checks each
//! server's `/ready` over HTTPS. Shared by the scale-out test and benchmark.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hangar_testkit::{ChildProcess, cargo_bin, free_port, wait_for};
use serde_json::Value;

/// How long the balancer may take to see a server come or go.
const WAIT: Duration = Duration::from_secs(180);

/// One server of the appliance: its own HTTPS and MQTT listeners.
pub struct Member {
    pub name: String,
    pub api: SocketAddr,
    pub mqtt: SocketAddr,
    pub config: PathBuf,
    pub process: Option<ChildProcess>,
}

impl Member {
    /// A copy of the appliance's configuration that listens on ports of its
    /// own; everything else (public URL, broker URL, database, object store,
    /// CA, master key) is the same for every member.
    pub fn new(app_config: &Path, dir: &Path, name: &str, shared_api: u16, shared_mqtt: u16) -> Member {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = std::fs::read_to_string(app_config).unwrap();
        let (api_line, mqtt_line) =
            (format!("listen = \"127.0.0.1:{shared_api}\"\n"), format!("listen = \"127.0.0.1:{shared_mqtt}\"\n"));
        assert!(text.contains(&api_line) && text.contains(&mqtt_line), "{text}");
        let text = text
            .replace(&api_line, &format!("listen = \"{api}\"\n"))
            .replace(&mqtt_line, &format!("listen = \"{mqtt}\"\n"))
            .replace("[server]\n", &format!("[server]\nproxy_protocol_from = [\"{BALANCER_SOURCE}\"]\n"));
        let config = dir.join(format!("hangar-{name}.toml"));
        std::fs::write(&config, text).unwrap();
        Member { name: name.to_string(), api, mqtt, config, process: None }
    }

    /// Starts `hangar server` with this member's configuration, logging at `log`.
    pub fn spawn(&mut self, dir: &Path, log: &str) {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.config).arg("server").env("HANGAR_LOG", log).stdin(Stdio::null());
        self.process = Some(ChildProcess::spawn(cmd, &format!("server-{}", self.name), dir));
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// This server's own `/ready`, asked directly.
    pub async fn ready(&self, client: &reqwest::Client) -> Option<(u16, Value)> {
        let r = client.get(self.url("/ready")).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    /// Workers connected to this server's broker, as its `/ready` counts them.
    pub async fn connections(&self, client: &reqwest::Client) -> Option<u64> {
        let (status, body) = self.ready(client).await?;
        (status == 200).then(|| body["components"]["broker"]["connections"].as_u64()).flatten()
    }

    /// The ids of the workers this server's broker admitted, from its log.
    pub fn admitted(&self) -> BTreeSet<i64> {
        let log = self.process.as_ref().map(|p| p.output()).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("worker connected"))
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("worker="))?.parse().ok())
            .collect()
    }

    pub fn log(&self) -> &ChildProcess {
        self.process.as_ref().expect("started")
    }
}

/// The address HAProxy connects to the servers from (the clients, this test
/// and the workers, connect from 127.0.0.1 and others).
pub const BALANCER_SOURCE: &str = "127.0.0.2";

/// HAProxy in front of the members, as an operator would run it.
pub struct Balancer {
    pub process: ChildProcess,
    socket: PathBuf,
}

impl Balancer {
    /// The configuration: the API and the broker passed through as TCP (so
    /// workers' client certificates reach the servers), the API's connections
    /// opened with a PROXY protocol v2 header, each server checked with an
    /// HTTPS `GET /ready` verified against the appliance CA (its broker
    /// tracks that check: `/ready` covers the broker), a dead server's
    /// connections retried on another.
    /// `maxconn` proxied connections hold two descriptors each.
    pub fn config(api: u16, mqtt: u16, members: &[Member], ca: &Path, socket: &Path, maxconn: usize) -> String {
        let api_servers: String = members
            .iter()
            .map(|m| {
                format!(
                    "    server {} {} send-proxy-v2 check check-ssl check-sni localhost verify required ca-file {}\n",
                    m.name,
                    m.api,
                    ca.display()
                )
            })
            .collect();
        let mqtt_servers: String =
            members.iter().map(|m| format!("    server {} {} track hangar_servers/{}\n", m.name, m.mqtt, m.name)).collect();
        format!(
            "global\n\
             \x20   maxconn {maxconn}\n\
             \x20   ulimit-n {ulimit}\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             \x20   log stderr format short local0 info\n\
             \n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   log global\n\
             \x20   option tcplog\n\
             \x20   timeout connect 3s\n\
             \x20   timeout client 1h\n\
             \x20   timeout server 1h\n\
             \x20   timeout check 5s\n\
             \x20   retries 3\n\
             \x20   option redispatch 1\n\
             \x20   default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n\
             \n\
             frontend hangar_api\n\
             \x20   bind 127.0.0.1:{api}\n\
             \x20   default_backend hangar_servers\n\
             \n\
             backend hangar_servers\n\
             \x20   balance roundrobin\n\
             \x20   source {BALANCER_SOURCE}\n\
             \x20   option httpchk GET /ready\n\
             \x20   http-check expect status 200\n\
             {api_servers}\n\
             frontend hangar_mqtt\n\
             \x20   bind 127.0.0.1:{mqtt}\n\
             \x20   default_backend hangar_brokers\n\
             \n\
             backend hangar_brokers\n\
             \x20   balance leastconn\n\
             {mqtt_servers}",
            socket = socket.display(),
            ulimit = maxconn * 2 + 100,
        )
    }

    pub fn start(dir: &Path, config: &str) -> Balancer {
        Balancer::start_named(dir, "haproxy", config)
    }

    /// One of several balancers, its configuration and log named `name`.
    pub fn start_named(dir: &Path, name: &str, config: &str) -> Balancer {
        let path = dir.join(format!("{name}.cfg"));
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("run haproxy (Debian package haproxy)");
        assert!(check.status.success(), "haproxy -c: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path).stdin(Stdio::null());
        let socket = config.lines().find_map(|l| l.trim().strip_prefix("stats socket ")).unwrap().split(' ').next().unwrap();
        Balancer { process: ChildProcess::spawn(cmd, name, dir), socket: PathBuf::from(socket) }
    }

    /// Each server of `backend` with its status (`UP`, `DOWN`, ...), from the
    /// stats socket's `show stat`.
    pub async fn statuses(&self, backend: &str) -> BTreeMap<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::UnixStream::connect(&self.socket).await else { return BTreeMap::new() };
        s.write_all(b"show stat\n").await.unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else { return BTreeMap::new() };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(px) == Some(&backend) && !matches!(f.get(sv), Some(&"BACKEND") | Some(&"FRONTEND") | None))
            .map(|f| (f[sv].to_string(), f[st].to_string()))
            .collect()
    }

    /// Waits until every server of both backends shows `want`.
    pub async fn wait_status(&self, server: &str, want: &str) {
        wait_for(&format!("HAProxy to mark {server} {want} (log {})", self.process.log_path().display()), WAIT, || async {
            let api = self.statuses("hangar_servers").await;
            let mqtt = self.statuses("hangar_brokers").await;
            let is = |m: &BTreeMap<String, String>| m.get(server).is_some_and(|s| s.starts_with(want));
            (is(&api) && is(&mqtt)).then_some(())
        })
        .await;
    }
}
