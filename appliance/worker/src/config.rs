//! The worker's configuration, `worker.toml` in its config directory, written
//! by `hangar-worker join` and read strictly: unknown keys are refused, values
//! are checked at load time, and every error is one line naming the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_types::worker::Transport;
use serde::{Deserialize, Serialize};

/// File names inside the config directory.
pub const CONFIG_FILE: &str = "worker.toml";
pub const KEY_FILE: &str = "worker.key";
pub const CERT_FILE: &str = "worker.crt";
pub const CA_FILE: &str = "ca.crt";
pub const TOKEN_FILE: &str = "token";

/// Where a worker's configuration lives unless told otherwise.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/hangar-worker";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The appliance's id for this worker.
    pub worker_id: i64,
    pub name: String,
    pub pool_id: i64,
    pub pool_name: String,
    /// `https://host:1983`
    pub server_url: String,
    /// How the worker learns of work: `mqtt` (notifications from the broker
    /// at `broker_url`) or `http` (a long poll on `server_url`, no broker
    /// connection at all).
    #[serde(default)]
    pub transport: Transport,
    /// `mqtts://host:1984`; needed by the `mqtt` transport only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
    /// Identity files, relative to the config directory unless absolute.
    pub paths: IdentityPaths,
    /// One fresh directory per run is made under it.
    pub work_dir: PathBuf,
    /// Tool binaries and provider plugins, kept between runs.
    pub cache_dir: PathBuf,
    /// CA bundle trusted for the VCS (git's `GIT_SSL_CAINFO`).
    #[serde(default)]
    pub vcs_ca: Option<PathBuf>,
    #[serde(default)]
    pub timing: Timing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityPaths {
    pub key: PathBuf,
    pub certificate: PathBuf,
    pub ca: PathBuf,
    pub token: PathBuf,
}

impl Default for IdentityPaths {
    fn default() -> Self {
        IdentityPaths {
            key: KEY_FILE.into(),
            certificate: CERT_FILE.into(),
            ca: CA_FILE.into(),
            token: TOKEN_FILE.into(),
        }
    }
}

/// Intervals, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Between heartbeats (each renews the held run's lease).
    pub heartbeat_secs: u64,
    /// Between claims when no notification came (a safety net for lost ones).
    pub poll_secs: u64,
    /// Between SIGTERM and SIGKILL when a run's commands are stopped.
    pub stop_grace_secs: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_secs: 10,
            poll_secs: 30,
            stop_grace_secs: 10,
        }
    }
}

impl Timing {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.poll_secs)
    }
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's own message spans several lines with a snippet: only its first
    /// line and the position are kept.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// Host and port of a URL with the given scheme.
pub fn endpoint(url: &str, scheme: &str, default_port: u16) -> Result<(String, u16), String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    if u.scheme() != scheme {
        return Err(format!("{url:?} must start with {scheme}://"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{url:?} must not carry credentials"));
    }
    let host = u.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, u.port().unwrap_or(default_port)))
}

impl WorkerConfig {
    /// Reads and checks `<dir>/worker.toml`; relative paths are resolved
    /// against `dir`.
    pub fn load(dir: &Path) -> Result<WorkerConfig, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut cfg = Self::parse(&path, &text)?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        abs(&mut cfg.paths.key);
        abs(&mut cfg.paths.certificate);
        abs(&mut cfg.paths.ca);
        abs(&mut cfg.paths.token);
        abs(&mut cfg.work_dir);
        abs(&mut cfg.cache_dir);
        if let Some(p) = cfg.vcs_ca.as_mut() {
            abs(p);
        }
        Ok(cfg)
    }

    /// Parses and checks a configuration text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<WorkerConfig, ConfigError> {
        let cfg: WorkerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0),
            message: e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if self.worker_id <= 0 {
            return Err(invalid("worker_id", "must be a positive id".into()));
        }
        if self.pool_id <= 0 {
            return Err(invalid("pool_id", "must be a positive id".into()));
        }
        endpoint(&self.server_url, "https", 1983).map_err(|r| invalid("server_url", r))?;
        match (self.transport, &self.broker_url) {
            (Transport::Mqtt, None) => {
                return Err(invalid(
                    "broker_url",
                    "is required by transport = \"mqtt\"".into(),
                ));
            }
            (_, Some(url)) => {
                endpoint(url, "mqtts", 1984).map_err(|r| invalid("broker_url", r))?;
            }
            (Transport::Http, None) => {}
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err(invalid("work_dir", "must not be empty".into()));
        }
        if self.cache_dir.as_os_str().is_empty() {
            return Err(invalid("cache_dir", "must not be empty".into()));
        }
        let t = &self.timing;
        if !(1..=300).contains(&t.heartbeat_secs) {
            return Err(invalid(
                "timing.heartbeat_secs",
                "must be between 1 and 300".into(),
            ));
        }
        if !(1..=3600).contains(&t.poll_secs) {
            return Err(invalid(
                "timing.poll_secs",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(1..=600).contains(&t.stop_grace_secs) {
            return Err(invalid(
                "timing.stop_grace_secs",
                "must be between 1 and 600".into(),
            ));
        }
        Ok(())
    }

    /// The configuration as written to disk.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a worker configuration serializes");
        format!("# hangar-worker configuration, written by `hangar-worker join`.\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkerConfig {
        WorkerConfig {
            worker_id: 4,
            name: "w".into(),
            pool_id: 2,
            pool_name: "default".into(),
            server_url: "https://appliance.example:1983".into(),
            transport: Transport::Mqtt,
            broker_url: Some("mqtts://appliance.example:1984".into()),
            paths: IdentityPaths::default(),
            work_dir: "/var/lib/hangar-worker/work".into(),
            cache_dir: "/var/cache/hangar-worker".into(),
            vcs_ca: None,
            timing: Timing::default(),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let c = sample();
        assert_eq!(
            WorkerConfig::parse(Path::new("w.toml"), &c.to_toml()).unwrap(),
            c
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let p = Path::new("/etc/hangar-worker/worker.toml");
        let text = format!("{}\nsurprise = 1\n", sample().to_toml());
        let e = WorkerConfig::parse(p, &text).unwrap_err().to_string();
        assert!(e.starts_with("/etc/hangar-worker/worker.toml:"), "{e}");
        assert!(e.contains("surprise"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let bad = sample().to_toml().replace(
            "https://appliance.example:1983",
            "http://appliance.example:1983",
        );
        let e = WorkerConfig::parse(p, &bad).unwrap_err().to_string();
        assert!(e.contains("server_url") && e.contains("https://"), "{e}");

        let bad = sample()
            .to_toml()
            .replace("worker_id = 4", "worker_id = -1");
        assert!(
            WorkerConfig::parse(p, &bad)
                .unwrap_err()
                .to_string()
                .contains("worker_id")
        );

        let bad = sample()
            .to_toml()
            .replace("worker_id = 4", "worker_id = \"four\"");
        let e = WorkerConfig::parse(p, &bad).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");

        let mut c = sample();
        c.timing.heartbeat_secs = 0;
        let e = WorkerConfig::parse(p, &c.to_toml())
            .unwrap_err()
            .to_string();
        assert!(e.contains("timing.heartbeat_secs"), "{e}");
    }

    #[test]
    fn the_transport_is_mqtt_or_http_and_only_mqtt_needs_a_broker() {
        let p = Path::new("w.toml");
        let mqtt = sample().to_toml();
        assert!(!mqtt.contains("transport = \"http\""), "{mqtt}");
        // Configurations written before the choice existed are MQTT ones.
        let old: String = mqtt
            .lines()
            .filter(|l| !l.starts_with("transport"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            WorkerConfig::parse(p, &old).unwrap().transport,
            Transport::Mqtt
        );

        let mut c = sample();
        c.transport = Transport::Http;
        c.broker_url = None;
        let text = c.to_toml();
        assert!(
            text.contains("transport = \"http\"") && !text.contains("broker_url"),
            "{text}"
        );
        assert_eq!(WorkerConfig::parse(p, &text).unwrap(), c);

        c.transport = Transport::Mqtt;
        let e = WorkerConfig::parse(p, &c.to_toml())
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker_url") && e.contains("mqtt"), "{e}");

        let bad = text.replace("transport = \"http\"", "transport = \"carrier-pigeon\"");
        let e = WorkerConfig::parse(p, &bad).unwrap_err().to_string();
        assert!(e.starts_with("w.toml:") && e.contains("carrier-pigeon"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let bad = text.replace("transport = \"http\"", "transport = \"HTTP\"");
        assert!(WorkerConfig::parse(p, &bad).is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/worker.example.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        let c = WorkerConfig::parse(path, &text).unwrap();
        assert_eq!(c.paths, IdentityPaths::default());
        assert_eq!(c.timing, Timing::default());
    }

    #[test]
    fn endpoints_need_their_scheme_and_no_credentials() {
        assert_eq!(
            endpoint("https://h:1983", "https", 1983).unwrap(),
            ("h".into(), 1983)
        );
        assert_eq!(
            endpoint("mqtts://[::1]", "mqtts", 1984).unwrap(),
            ("::1".into(), 1984)
        );
        assert!(endpoint("https://u:p@h", "https", 1).is_err());
        assert!(endpoint("mqtt://h", "mqtts", 1).is_err());
        assert!(endpoint("not a url", "https", 1).is_err());
    }
}
