//! `hangar-worker update`: replaces this host's `hangar-worker` binary with
//! the one the appliance serves (applied from a worker bundle), in one
//! command. The download uses the worker's own credentials, must have the
//! SHA-256 the appliance announces, and must run on this host (`--version`)
//! before it is renamed over the old binary: an update cut short at any
//! point leaves the old binary in place. The running worker keeps its old
//! image until it is restarted.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_types::worker::{LATEST_VERSION, ToolDownload, WORKER_TOOL};

use crate::api::{Api, ApiError};
use crate::config::WorkerConfig;
use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the binary downloaded from {url} does not run on this host: {problem}")]
    DoesNotRun { url: String, problem: String },
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The binary replaced (or found up to date).
    pub path: PathBuf,
    /// The version the appliance served.
    pub version: String,
    pub sha256: String,
    /// False when the binary had that SHA-256 already.
    pub changed: bool,
}

/// This host's platform as the appliance names it (`linux_amd64`).
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// Downloads `version` (default: the latest the appliance serves) and puts
/// it in place of `binary`.
pub async fn update(
    cfg: &WorkerConfig,
    identity: &Identity,
    version: Option<&str>,
    binary: &Path,
) -> Result<Updated, UpdateError> {
    let api = Api::new(&cfg.server_url, identity)?;
    let (os, arch) = platform();
    let path = ToolDownload {
        tool: WORKER_TOOL,
        version: version.unwrap_or(LATEST_VERSION),
        os,
        arch,
    }
    .path();
    let url = format!("{}{path}", api.base());
    let dir = binary.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".hangar-worker.update-{}", std::process::id()));
    let result = fetch_and_check(&api, &url, &tmp).await;
    let (served, sha256) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if sha256_file(binary).ok().as_deref() == Some(sha256.as_str()) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Updated {
            path: binary.to_path_buf(),
            version: served,
            sha256,
            changed: false,
        });
    }
    if let Err(source) = std::fs::rename(&tmp, binary) {
        let _ = std::fs::remove_file(&tmp);
        return Err(UpdateError::Io {
            what: "replace",
            path: binary.to_path_buf(),
            source,
        });
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Updated {
        path: binary.to_path_buf(),
        version: served,
        sha256,
        changed: true,
    })
}

/// Downloads `url` into `tmp` (checked against the announced SHA-256),
/// makes it executable and runs `tmp --version`; returns the version served
/// and the hash.
async fn fetch_and_check(api: &Api, url: &str, tmp: &Path) -> Result<(String, String), UpdateError> {
    let fetched = api.fetch_announced(url, tmp).await?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        UpdateError::Io {
            what: "make executable",
            path: tmp.to_path_buf(),
            source,
        }
    })?;
    let mut cmd = tokio::process::Command::new(tmp);
    cmd.arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await;
    let problem = match out {
        Err(_) => Some("`--version` did not answer within 30 s".to_string()),
        Ok(Err(e)) => Some(format!("it cannot be started ({e})")),
        Ok(Ok(o)) if !o.status.success() => Some(format!("`--version` exited with {}", o.status)),
        Ok(Ok(o)) if !String::from_utf8_lossy(&o.stdout).starts_with("hangar-worker ") => Some(format!(
            "`--version` printed {:?}, not hangar-worker's version",
            String::from_utf8_lossy(&o.stdout).chars().take(80).collect::<String>()
        )),
        Ok(Ok(_)) => None,
    };
    if let Some(problem) = problem {
        return Err(UpdateError::DoesNotRun {
            url: url.to_string(),
            problem,
        });
    }
    Ok((fetched.version, fetched.sha256))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}
