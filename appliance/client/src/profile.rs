//! Where the appliance is and how to talk to it: a profile from the client
//! configuration file, overridden by flags and environment variables.
//!
//! The file (`$HANGAR_CLIENT_CONFIG`, else `$XDG_CONFIG_HOME/hangar/client.toml`,
//! else `~/.config/hangar/client.toml`) holds named profiles:
//!
//! ```toml
//! [profiles.default]
//! server = "https://hangar.example.internal:1983"
//! ca_file = "/etc/hangar/ca.crt"
//! api_key_file = "/home/me/.config/hangar/api-key"
//! ```
//!
//! The API key itself is never in the file: it is read from `api_key_file`
//! or from `HANGAR_API_KEY`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// The connection flags every client subcommand takes.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// The profile of the client configuration file to use.
    #[arg(long, global = true, env = "HANGAR_PROFILE")]
    pub profile: Option<String>,
    /// The appliance's URL (`https://host:1983`).
    #[arg(long, global = true, env = "HANGAR_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The appliance CA certificate (PEM) to trust instead of the system's roots.
    #[arg(long, global = true, env = "HANGAR_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the API key (or set HANGAR_API_KEY).
    #[arg(long, global = true, env = "HANGAR_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    profiles: BTreeMap<String, ProfileFile>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_file: Option<PathBuf>,
}

/// Writes profile `name` (server, CA, key file) into the client configuration
/// file, keeping its other profiles; the key itself goes to `key_file`, 0600.
/// Returns the configuration file's path.
pub fn save_profile(
    name: &str,
    profile: &Profile,
    key_file: &Path,
) -> Result<PathBuf, ClientError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path().ok_or_else(|| {
        ClientError::Config("no HOME: cannot place the client configuration".into())
    })?;
    let mut config = read_config(&path)?.unwrap_or_default();
    config.profiles.insert(
        name.to_string(),
        ProfileFile {
            server: Some(profile.server.to_string()),
            ca_file: profile.ca_file.clone(),
            api_key_file: Some(key_file.to_path_buf()),
        },
    );
    let write = |p: &Path, bytes: &[u8], mode: u32| -> Result<(), ClientError> {
        let werr = |source| ClientError::Write {
            path: p.to_path_buf(),
            source,
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let tmp = p.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(werr)?;
        std::fs::rename(&tmp, p).map_err(werr)
    };
    write(key_file, format!("{}\n", profile.api_key).as_bytes(), 0o600)?;
    let text = toml::to_string(&config)
        .map_err(|e| ClientError::Config(format!("cannot write {}: {e}", path.display())))?;
    write(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// A resolved profile: everything a [`crate::Client`] needs.
#[derive(Clone)]
pub struct Profile {
    pub server: url::Url,
    /// `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub api_key: String,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The client configuration file's path.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HANGAR_CLIENT_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("hangar").join("client.toml"))
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ClientError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ClientError::Config(format!("{}: {}", path.display(), e.message())))
}

impl ConnectArgs {
    /// The profile these flags and the configuration file give.
    pub fn resolve(&self) -> Result<Profile, ClientError> {
        let file = match config_path() {
            Some(p) => read_config(&p)?.map(|c| (p, c)),
            None => None,
        };
        let name = self.profile.clone();
        let from_file = match (&file, &name) {
            (Some((_, c)), Some(n)) => Some(c.profiles.get(n).cloned().ok_or_else(|| {
                ClientError::Config(format!("no profile {n:?} in the client configuration"))
            })?),
            (None, Some(n)) => {
                return Err(ClientError::Config(format!(
                    "no profile {n:?}: there is no client configuration file"
                )));
            }
            (Some((_, c)), None) => c.profiles.get("default").cloned(),
            (None, None) => None,
        }
        .unwrap_or_default();
        let server = self.server.clone().or(from_file.server).ok_or_else(|| {
            ClientError::Config("no server: give --server URL, HANGAR_SERVER or a profile".into())
        })?;
        let server = url::Url::parse(&server)
            .map_err(|e| ClientError::Config(format!("--server {server:?}: {e}")))?;
        if server.scheme() != "https" || server.host_str().is_none() {
            return Err(ClientError::Config(format!(
                "--server {server}: must be an https:// URL with a host"
            )));
        }
        let api_key = match std::env::var("HANGAR_API_KEY") {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                let path = self
                    .api_key_file
                    .clone()
                    .or(from_file.api_key_file)
                    .ok_or_else(|| {
                        ClientError::Config(
                            "no API key: set HANGAR_API_KEY, give --api-key-file FILE or a profile"
                                .into(),
                        )
                    })?;
                let text = std::fs::read_to_string(&path).map_err(|source| ClientError::Read {
                    path: path.clone(),
                    source,
                })?;
                let key = text.trim().to_string();
                if key.is_empty() {
                    return Err(ClientError::Config(format!(
                        "{}: the API key file is empty",
                        path.display()
                    )));
                }
                key
            }
        };
        Ok(Profile {
            server,
            ca_file: self.ca_file.clone().or(from_file.ca_file),
            api_key,
        })
    }
}
