//! The `[server]` and `[secrets]` sections of `hangar.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Invalid;

/// `[server]`: the HTTPS listener on 1983 and the API's limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How browsers, workers and webhooks reach this server (`https://host[:port]`).
    pub public_url: String,
    /// Addresses of TCP load balancers in front of this server that start each
    /// connection they pass through with a PROXY protocol v2 header naming
    /// the client (HAProxy's `send-proxy-v2`). From these addresses the header
    /// is required; from any other it is never read.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpAddr>,
    /// The server certificate chain and its key (0600).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The appliance CA: client certificates (workers) must chain to it.
    pub ca_file: PathBuf,
    /// The CA's private key (0600), with which joining workers' CSRs are
    /// signed. Defaults to `ca.key` next to `ca_file`.
    #[serde(default)]
    pub ca_key_file: Option<PathBuf>,
    /// How workers reach the MQTT broker (`mqtts://host:port`). Defaults to
    /// the host of `public_url` on 1984.
    #[serde(default)]
    pub broker_url: Option<String>,
    /// Tool binaries served to workers, laid out as the appliance bundle lays
    /// them out: `<tool>/<version>/<binary>` (linux_amd64) or
    /// `<tool>/<version>/<os>_<arch>/<binary>`.
    #[serde(default)]
    pub tools_dir: Option<PathBuf>,
    /// Terraform providers as `terraform providers mirror` writes them,
    /// served to runs as a provider network mirror.
    #[serde(default)]
    pub provider_mirror_dir: Option<PathBuf>,
    /// The staging area of uploaded bundles (`/var/lib/hangar/bundles`),
    /// writable by the service user. Without it, uploads are refused.
    #[serde(default)]
    pub bundles_dir: Option<PathBuf>,
    /// Signing keys (`*.pub`) that uploaded bundles may be signed with,
    /// besides the keys built into the release.
    #[serde(default)]
    pub bundle_trust_dir: Option<PathBuf>,
    /// Largest bundle an upload may declare, in bytes.
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: u64,
    /// How long a worker's hold on a run lasts without a heartbeat.
    #[serde(default = "default_lease_secs")]
    pub worker_lease_secs: u64,
    /// Longest a long-poll claim of the HTTP worker transport is held open,
    /// in seconds: below the idle timeouts of common proxies (often 30 s or 60 s).
    #[serde(default = "default_claim_wait_secs")]
    pub worker_claim_wait_secs: u64,
    /// Most long-poll claims held open at once; more are refused with 503
    /// and the worker tries again after a pause.
    #[serde(default = "default_claim_waiters")]
    pub worker_claim_waiters: usize,
    /// Validity of the certificates signed for joining workers.
    #[serde(default = "default_worker_cert_days")]
    pub worker_cert_days: u32,
    /// Largest request body accepted on `/graphql`, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Largest Terraform state accepted by the state backend, in bytes.
    #[serde(default = "default_max_state")]
    pub max_state_bytes: u64,
    /// Largest module archive (`.tar.gz` of a tagged commit) the module
    /// registry publishes, in bytes.
    #[serde(default = "default_max_module")]
    pub max_module_bytes: u64,
    /// Deepest GraphQL selection accepted.
    #[serde(default = "default_max_depth")]
    pub max_query_depth: usize,
    /// Largest GraphQL query complexity (one per selected field) accepted.
    #[serde(default = "default_max_complexity")]
    pub max_query_complexity: usize,
    /// How long a login session lasts.
    #[serde(default = "default_session_hours")]
    pub session_ttl_hours: u32,
    /// Time a client gets to finish its TLS handshake.
    #[serde(default = "default_handshake_secs")]
    pub handshake_timeout_secs: u64,
    /// On shutdown, time in-flight requests get to finish.
    #[serde(default = "default_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Time `git ls-remote` gets to resolve a branch when a run is triggered.
    #[serde(default = "default_git_secs")]
    pub git_timeout_secs: u64,
    /// Bytes of webhook bodies held in memory at once, across all deliveries:
    /// a delivery reserves its length (or its vendor's limit when it declares
    /// none) before its body is read, and waits briefly for room, then gets 503.
    #[serde(default = "default_webhook_bytes")]
    pub webhook_bytes_in_flight: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1983))
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_max_bundle() -> u64 {
    16 * 1024 * 1024 * 1024
}
fn default_max_state() -> u64 {
    64 * 1024 * 1024
}
fn default_max_module() -> u64 {
    32 * 1024 * 1024
}
fn default_max_depth() -> usize {
    12
}
fn default_max_complexity() -> usize {
    2000
}
fn default_session_hours() -> u32 {
    12
}
fn default_handshake_secs() -> u64 {
    10
}
fn default_grace_secs() -> u64 {
    20
}
fn default_git_secs() -> u64 {
    20
}
fn default_webhook_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_lease_secs() -> u64 {
    60
}
fn default_claim_wait_secs() -> u64 {
    25
}
fn default_claim_waiters() -> usize {
    4096
}
fn default_worker_cert_days() -> u32 {
    365
}

/// `[secrets]`: where the master key that wraps every data key is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// 64 hexadecimal characters, mode 0600.
    pub master_key_file: PathBuf,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field: &'static str, problem: &str| Invalid::new(field, problem);
        let url = url::Url::parse(&self.public_url).map_err(|_| invalid("server.public_url", "is not a URL"))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(invalid("server.public_url", "must be an https:// URL with a host"));
        }
        for (field, path) in [
            ("server.cert_file", &self.cert_file),
            ("server.key_file", &self.key_file),
            ("server.ca_file", &self.ca_file),
        ] {
            if !path.is_absolute() {
                return Err(invalid(field, "must be an absolute path"));
            }
        }
        for (field, path) in [
            ("server.ca_key_file", &self.ca_key_file),
            ("server.tools_dir", &self.tools_dir),
            ("server.provider_mirror_dir", &self.provider_mirror_dir),
            ("server.bundles_dir", &self.bundles_dir),
            ("server.bundle_trust_dir", &self.bundle_trust_dir),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(field, "must be an absolute path"));
            }
        }
        if self.proxy_protocol_from.iter().any(|a| a.is_unspecified()) {
            return Err(invalid("server.proxy_protocol_from", "must name the balancers' own addresses, not 0.0.0.0 or ::"));
        }
        if self.proxy_protocol_from.len() > 64 {
            return Err(invalid("server.proxy_protocol_from", "may name at most 64 addresses"));
        }
        if let Some(b) = &self.broker_url {
            let ok = url::Url::parse(b).is_ok_and(|u| u.scheme() == "mqtts" && u.host_str().is_some());
            if !ok {
                return Err(invalid("server.broker_url", "must be an mqtts:// URL with a host"));
            }
        }
        if !(10..=3600).contains(&self.worker_lease_secs) {
            return Err(invalid("server.worker_lease_secs", "must be between 10 and 3600"));
        }
        if !(1..=300).contains(&self.worker_claim_wait_secs) {
            return Err(invalid("server.worker_claim_wait_secs", "must be between 1 and 300"));
        }
        if !(1..=100_000).contains(&self.worker_claim_waiters) {
            return Err(invalid("server.worker_claim_waiters", "must be between 1 and 100000"));
        }
        if !(1..=3650).contains(&self.worker_cert_days) {
            return Err(invalid("server.worker_cert_days", "must be between 1 and 3650"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid("server.max_body_bytes", "must be between 1 KiB and 64 MiB"));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024 * 1024).contains(&self.max_bundle_bytes) {
            return Err(invalid("server.max_bundle_bytes", "must be between 1 MiB and 1 TiB"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_state_bytes) {
            return Err(invalid("server.max_state_bytes", "must be between 1 KiB and 1 GiB"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_module_bytes) {
            return Err(invalid("server.max_module_bytes", "must be between 1 KiB and 1 GiB"));
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.webhook_bytes_in_flight) {
            return Err(invalid("server.webhook_bytes_in_flight", "must be between 1 MiB and 4 GiB"));
        }
        if !(2..=64).contains(&self.max_query_depth) {
            return Err(invalid("server.max_query_depth", "must be between 2 and 64"));
        }
        if !(10..=100_000).contains(&self.max_query_complexity) {
            return Err(invalid("server.max_query_complexity", "must be between 10 and 100000"));
        }
        if !(1..=24 * 90).contains(&self.session_ttl_hours) {
            return Err(invalid("server.session_ttl_hours", "must be between 1 and 2160"));
        }
        for (field, secs) in [
            ("server.handshake_timeout_secs", self.handshake_timeout_secs),
            ("server.shutdown_grace_secs", self.shutdown_grace_secs),
            ("server.git_timeout_secs", self.git_timeout_secs),
        ] {
            if !(1..=600).contains(&secs) {
                return Err(invalid(field, "must be between 1 and 600"));
            }
        }
        Ok(())
    }

    /// The CA key: as configured, or `ca.key` next to the CA certificate.
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_key_file.clone().unwrap_or_else(|| self.ca_file.with_file_name("ca.key"))
    }

    /// The broker URL handed to joining workers.
    pub fn worker_broker_url(&self) -> String {
        if let Some(b) = &self.broker_url {
            return b.clone();
        }
        let host = url::Url::parse(&self.public_url)
            .ok()
            .and_then(|u| u.host_str().map(String::from))
            .unwrap_or_default();
        format!("mqtts://{host}:1984")
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

impl SecretsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.master_key_file.is_absolute() {
            return Err(Invalid::new("secrets.master_key_file", "must be an absolute path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, String> {
        let cfg: ServerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const MINIMAL: &str = "public_url = \"https://hangar.example\"\ncert_file = \"/p/server.crt\"\n\
                           key_file = \"/p/server.key\"\nca_file = \"/p/ca.crt\"\n";

    #[test]
    fn defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.listen.port(), 1983);
        assert_eq!(cfg.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.ca_key_path(), PathBuf::from("/p/ca.key"));
        assert_eq!(cfg.worker_broker_url(), "mqtts://hangar.example:1984");
        assert_eq!((cfg.worker_claim_wait_secs, cfg.worker_claim_waiters), (25, 4096));
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&MINIMAL.replace("https://hangar.example", "http://hangar.example")).unwrap_err();
        assert!(e.contains("server.public_url"), "{e}");
        let e = parse(&format!("{MINIMAL}max_body_bytes = 10\n")).unwrap_err();
        assert!(e.contains("server.max_body_bytes"), "{e}");
        let e = parse(&format!("{MINIMAL}worker_claim_wait_secs = 0\n")).unwrap_err();
        assert!(e.contains("server.worker_claim_wait_secs"), "{e}");
        let e = parse(&format!("{MINIMAL}worker_claim_waiters = 0\n")).unwrap_err();
        assert!(e.contains("server.worker_claim_waiters"), "{e}");
        let e = parse(&MINIMAL.replace("/p/server.key", "server.key")).unwrap_err();
        assert!(e.contains("server.key_file"), "{e}");
        let e = parse(&format!("{MINIMAL}tls = false\n")).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(&format!("{MINIMAL}ca_key_file = \"ca.key\"\n")).unwrap_err();
        assert!(e.contains("server.ca_key_file"), "{e}");
        let e = parse(&format!("{MINIMAL}broker_url = \"tcp://hangar.example:1984\"\n")).unwrap_err();
        assert!(e.contains("server.broker_url"), "{e}");
        let e = parse(&format!("{MINIMAL}proxy_protocol_from = [\"0.0.0.0\"]\n")).unwrap_err();
        assert!(e.contains("server.proxy_protocol_from"), "{e}");
        let e = parse(&format!("{MINIMAL}proxy_protocol_from = [\"balancer\"]\n")).unwrap_err();
        assert!(e.contains("proxy_protocol_from"), "{e}");
        let ok = parse(&format!("{MINIMAL}proxy_protocol_from = [\"10.0.0.5\", \"fd00::5\"]\n")).unwrap();
        assert_eq!(ok.proxy_protocol_from.len(), 2);
        let e = parse(&format!("{MINIMAL}worker_lease_secs = 1\n")).unwrap_err();
        assert!(e.contains("server.worker_lease_secs"), "{e}");
        let e = parse(&format!("{MINIMAL}tools_dir = \"tools\"\n")).unwrap_err();
        assert!(e.contains("server.tools_dir"), "{e}");
    }

    #[test]
    fn the_shipped_example_documents_the_worker_settings() {
        let example: toml::Table = toml::from_str(include_str!("../hangar.example.toml")).unwrap();
        let cfg: ServerConfig = example["server"].clone().try_into().unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.ca_key_path(), PathBuf::from("/etc/hangar/pki/ca.key"));
        assert!(cfg.tools_dir.is_some() && cfg.provider_mirror_dir.is_some());
        assert!(cfg.bundles_dir.is_some() && cfg.bundle_trust_dir.is_some());
        assert_eq!(cfg.worker_broker_url(), "mqtts://hangar.example.internal:1984");
    }
}
