//! The `[objects]` section of `hangar.toml`: which S3 engine, where the appliance
//! and its workers reach it, and the files holding its credentials.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::ObjectsError;

/// The S3 server behind the endpoint. Everything Hangar does is plain S3; the
/// engine only decides defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// MinIO from the bundle (production default).
    Minio,
    /// Garage (tests and CI).
    Garage,
    /// An S3-compatible store the operator already runs.
    External,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Minio => "minio",
            Engine::Garage => "garage",
            Engine::External => "external",
        }
    }

    /// The region requests are signed for when the configuration names none.
    /// An external store has no default: guessing would make every request fail
    /// with a signature mismatch that names nothing useful.
    pub fn default_region(self) -> Option<&'static str> {
        match self {
            Engine::Minio => Some("us-east-1"),
            Engine::Garage => Some("garage"),
            Engine::External => None,
        }
    }
}

/// `[objects]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    pub engine: Engine,
    /// The URL the appliance *and its workers* use: pre-signed URLs carry this
    /// host, and the signature covers it.
    pub endpoint: String,
    #[serde(default)]
    pub region: Option<String>,
    pub bucket: String,
    /// Files holding the access key id and the secret key, each alone, mode 0600.
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    /// CA certificate(s) the endpoint's certificate must chain to. When set, it
    /// is the only trust anchor for the object store (the appliance CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept an `http://` endpoint. Credentials and pre-signed URLs then travel
    /// in clear text; only for a store on the same host during development.
    #[serde(default)]
    pub danger_plain_http: bool,
    /// Seconds a single S3 request may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_request_timeout() -> u64 {
    60
}

impl ObjectsConfig {
    /// Checks what can be checked without touching the files or the network.
    pub fn validate(&self) -> Result<(), ObjectsError> {
        let invalid = |field: &'static str, problem: String| ObjectsError::Config { field, problem };
        let url = self.endpoint_url()?;
        match url.scheme() {
            "https" => {}
            "http" if self.danger_plain_http => {}
            "http" => {
                return Err(invalid(
                    "objects.endpoint",
                    "is plain http; use https (or set danger_plain_http = true for a local development store)".into(),
                ));
            }
            other => return Err(invalid("objects.endpoint", format!("unsupported scheme {other:?}"))),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("objects.endpoint", "has no host".into()));
        }
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "objects.endpoint",
                "must be scheme://host[:port] only (no path, query or credentials)".into(),
            ));
        }
        if self.ca_file.is_some() && url.scheme() != "https" {
            return Err(invalid("objects.ca_file", "only applies to an https endpoint".into()));
        }
        // S3 bucket naming rules, so a typo fails here rather than as an opaque 400.
        let b = &self.bucket;
        let valid_bucket = (3..=63).contains(&b.len())
            && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            && b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(invalid(
                "objects.bucket",
                format!("{b:?} is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')"),
            ));
        }
        if self.region().is_none() {
            return Err(invalid("objects.region", format!("is required for engine {}", self.engine.as_str())));
        }
        for (field, path) in [
            ("objects.access_key_file", Some(&self.access_key_file)),
            ("objects.secret_key_file", Some(&self.secret_key_file)),
            ("objects.ca_file", self.ca_file.as_ref()),
        ] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                return Err(invalid(field, "must be an absolute path".into()));
            }
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > 3600 {
            return Err(invalid("objects.request_timeout_secs", "must be between 1 and 3600".into()));
        }
        Ok(())
    }

    /// The region requests are signed for.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref().filter(|r| !r.is_empty()).or(self.engine.default_region())
    }

    pub(crate) fn endpoint_url(&self) -> Result<Url, ObjectsError> {
        Url::parse(&self.endpoint).map_err(|e| ObjectsError::Config {
            field: "objects.endpoint",
            problem: format!("{:?} is not a URL ({e})", self.endpoint),
        })
    }
}

/// Reads a one-line secret file, refusing one that group or others can read.
pub(crate) fn read_secret_file(path: &Path) -> Result<String, ObjectsError> {
    hangar_certs::check_private_file(path).map_err(|source| ObjectsError::SecretFile { path: path.to_path_buf(), source })?;
    let text = std::fs::read_to_string(path).map_err(|source| ObjectsError::ReadFile { path: path.to_path_buf(), source })?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() || value.contains('\n') {
        return Err(ObjectsError::Config {
            field: "objects credentials",
            problem: format!("{} must hold exactly one non-empty line", path.display()),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ObjectsConfig {
        ObjectsConfig {
            engine: Engine::Minio,
            endpoint: "https://objects.example.internal:9000".into(),
            region: None,
            bucket: "hangar".into(),
            access_key_file: "/etc/hangar/secrets/objects-access-key".into(),
            secret_key_file: "/etc/hangar/secrets/objects-secret-key".into(),
            ca_file: Some("/etc/hangar/pki/ca.crt".into()),
            danger_plain_http: false,
            request_timeout_secs: 60,
        }
    }

    fn problem(cfg: &ObjectsConfig) -> String {
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn valid_and_defaults() {
        let cfg = base();
        cfg.validate().unwrap();
        assert_eq!(cfg.region(), Some("us-east-1"));
        let garage = ObjectsConfig { engine: Engine::Garage, ..base() };
        assert_eq!(garage.region(), Some("garage"));
    }

    #[test]
    fn plain_http_needs_the_danger_flag() {
        let cfg = ObjectsConfig { endpoint: "http://127.0.0.1:3900".into(), ca_file: None, ..base() };
        assert!(problem(&cfg).contains("danger_plain_http"), "{}", problem(&cfg));
        ObjectsConfig { danger_plain_http: true, ..cfg }.validate().unwrap();
    }

    #[test]
    fn malformed_values_are_named() {
        let cases: Vec<(ObjectsConfig, &str)> = vec![
            (ObjectsConfig { endpoint: "objects:9000".into(), ..base() }, "objects.endpoint"),
            (ObjectsConfig { endpoint: "ftp://x".into(), ..base() }, "unsupported scheme"),
            (ObjectsConfig { endpoint: "https://x:9000/bucket".into(), ..base() }, "no path"),
            (ObjectsConfig { endpoint: "https://u:p@x:9000".into(), ..base() }, "credentials"),
            (ObjectsConfig { bucket: "Bad_Bucket".into(), ..base() }, "objects.bucket"),
            (ObjectsConfig { bucket: "ab".into(), ..base() }, "objects.bucket"),
            (ObjectsConfig { engine: Engine::External, ..base() }, "objects.region"),
            (ObjectsConfig { access_key_file: "secrets/ak".into(), ..base() }, "objects.access_key_file"),
            (ObjectsConfig { request_timeout_secs: 0, ..base() }, "request_timeout_secs"),
        ];
        for (cfg, want) in cases {
            let p = problem(&cfg);
            assert!(p.contains(want), "{want}: {p}");
        }
    }
}
