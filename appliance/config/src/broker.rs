//! The `[broker]` section of `hangar.toml`: where the MQTT listener binds, its
//! certificate files, and the limits that keep one misbehaving client (or ten
//! thousand well-behaved ones) from taking the broker down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Invalid;

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address of the MQTT-over-TLS listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The broker's certificate chain (PEM), issued by the appliance CA.
    pub cert_file: PathBuf,
    /// Its private key; must not be readable by group or others.
    pub key_file: PathBuf,
    /// CA certificate(s) worker client certificates must chain to. Every
    /// certificate in the file is trusted (a CA rotation lists old and new).
    pub ca_file: PathBuf,
    #[serde(default)]
    pub limits: BrokerLimits,
}

/// `[broker.limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerLimits {
    /// Connected workers at most; one more is refused with "server unavailable".
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections between accept and CONNACK (TLS handshake, CONNECT,
    /// authentication) at most; more are closed at once.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Seconds a client has from TCP accept to a complete CONNECT.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Largest MQTT packet a client may send, in bytes. Workers only subscribe
    /// and ping, so this stays small.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_connections: default_max_connections(),
            max_pending: default_max_pending(),
            connect_timeout_secs: default_connect_timeout(),
            max_packet_size: default_max_packet_size(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1984))
}

fn default_max_connections() -> usize {
    12_000
}

fn default_max_pending() -> usize {
    1_024
}

fn default_connect_timeout() -> u64 {
    10
}

fn default_max_packet_size() -> usize {
    4_096
}

impl BrokerConfig {
    /// Checks what can be checked without touching the files or the network.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field: &'static str, problem: &str| Invalid::new(field, problem);
        for (field, path) in [
            ("broker.cert_file", &self.cert_file),
            ("broker.key_file", &self.key_file),
            ("broker.ca_file", &self.ca_file),
        ] {
            if !path.is_absolute() {
                return Err(invalid(field, "must be an absolute path"));
            }
        }
        let l = &self.limits;
        if !(1..=100_000).contains(&l.max_connections) {
            return Err(invalid("broker.limits.max_connections", "must be between 1 and 100000"));
        }
        if !(1..=65_536).contains(&l.max_pending) {
            return Err(invalid("broker.limits.max_pending", "must be between 1 and 65536"));
        }
        if !(1..=300).contains(&l.connect_timeout_secs) {
            return Err(invalid("broker.limits.connect_timeout_secs", "must be between 1 and 300"));
        }
        if !(256..=1_048_576).contains(&l.max_packet_size) {
            return Err(invalid("broker.limits.max_packet_size", "must be between 256 and 1048576 bytes"));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.connect_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BrokerConfig, String> {
        let cfg: BrokerConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const FILES: &str = r#"
        cert_file = "/etc/hangar/pki/broker.crt"
        key_file = "/etc/hangar/pki/broker.key"
        ca_file = "/etc/hangar/pki/ca.crt"
    "#;

    #[test]
    fn defaults_suit_ten_thousand_workers() {
        let cfg = parse(FILES).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:1984".parse().unwrap());
        assert!(cfg.limits.max_connections >= 10_000);
        assert_eq!(cfg.connect_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = parse(&FILES.replace("/etc/hangar/pki/broker.key", "broker.key")).unwrap_err();
        assert_eq!(e, "broker.key_file: must be an absolute path");
        let e = parse(&format!("{FILES}\n[limits]\nmax_packet_size = 10\n")).unwrap_err();
        assert_eq!(e, "broker.limits.max_packet_size: must be between 256 and 1048576 bytes");
        let e = parse(&format!("{FILES}\n[limits]\nmax_connections = 0\n")).unwrap_err();
        assert!(e.contains("max_connections"), "{e}");
        let e = parse(&format!("{FILES}\nport = 1984\n")).unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
        let e = parse(&format!("{FILES}\n[limits]\nmax_conections = 5\n")).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(&format!("{FILES}\nlisten = \"localhost\"\n")).unwrap_err();
        assert!(e.contains("invalid socket address"), "{e}");
    }
}
