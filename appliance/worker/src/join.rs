//! `hangar-worker join`: makes the worker's key pair and CSR on this host,
//! presents the one-time join token over HTTPS (trusting only the CA the
//! operator gave), and writes the identity the appliance issued into the
//! config directory. The key never leaves the host; key and token are 0600.

use std::path::{Path, PathBuf};

use hangar_types::worker::{HostInfo, JoinRequest, JoinResponse, WorkerRoute};

use crate::api::{self, ApiError};
use crate::config::{self, IdentityPaths, Timing, WorkerConfig};

/// What `join` was asked to do.
#[derive(Clone)]
pub struct JoinOptions {
    /// `https://host:1983`
    pub server: String,
    pub token: String,
    /// The appliance CA the operator trusts (PEM).
    pub ca: PathBuf,
    pub name: Option<String>,
    pub config_dir: PathBuf,
    /// Replace an existing identity.
    pub force: bool,
    /// How the worker will learn of work (written to its configuration).
    pub transport: hangar_types::worker::Transport,
}

impl std::fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOptions")
            .field("server", &self.server)
            .field("ca", &self.ca)
            .field("config_dir", &self.config_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--server {url:?}: {reason}")]
    BadServer { url: String, reason: String },
    #[error("the CA file {path} is unusable")]
    BadCa {
        path: PathBuf,
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("{dir} already holds the identity of worker {worker}; pass --force to replace it")]
    Exists { dir: PathBuf, worker: String },
    #[error("cannot write to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the worker's key and CSR")]
    Csr {
        #[source]
        source: hangar_certs::CertError,
    },
    #[error("cannot reach the appliance at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("TLS with the appliance at {url} failed (is {ca} the appliance's CA?)")]
    Tls {
        url: String,
        ca: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("the appliance refused to join this worker: {reason} (HTTP {status})")]
    Refused { status: u16, reason: String },
    #[error("the appliance's answer to the join is unusable: {reason}")]
    BadAnswer { reason: String },
    #[error(transparent)]
    Client(#[from] ApiError),
}

/// What a successful join produced.
#[derive(Debug, Clone)]
pub struct Joined {
    pub worker_id: i64,
    pub pool_name: String,
    pub config_dir: PathBuf,
}

/// The host's name, for workers joined without `--name`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

pub async fn join(opts: &JoinOptions) -> Result<Joined, JoinError> {
    let server = opts.server.trim_end_matches('/').to_string();
    config::endpoint(&server, "https", 1983).map_err(|reason| JoinError::BadServer {
        url: server.clone(),
        reason,
    })?;
    let ca_pem = std::fs::read(&opts.ca).map_err(|source| JoinError::BadCa {
        path: opts.ca.clone(),
        source: hangar_certs::CertError::Read {
            path: opts.ca.clone(),
            source,
        },
    })?;
    let roots = hangar_certs::tls::roots_from_pem(&ca_pem).map_err(|source| JoinError::BadCa {
        path: opts.ca.clone(),
        source,
    })?;

    let dir = &opts.config_dir;
    refuse_existing(dir, opts.force)?;
    // Fail on an unwritable directory now, before the one-time token is spent.
    prepare_dir(dir)?;

    let name = opts.name.clone().unwrap_or_else(hostname);
    let (key_pem, csr_pem) =
        hangar_certs::worker_csr(&name).map_err(|source| JoinError::Csr { source })?;
    let request = JoinRequest {
        token: opts.token.clone(),
        name: name.clone(),
        csr_pem,
        host: HostInfo {
            hostname: hostname(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    let tls = hangar_certs::tls::client_config(roots, None).map_err(|source| JoinError::BadCa {
        path: opts.ca.clone(),
        source,
    })?;
    let http = api::https_client(tls)?;
    let url = format!("{server}{}", WorkerRoute::Join.path());
    let resp = http
        .post(&url)
        .timeout(std::time::Duration::from_secs(30))
        .json(&request)
        .send()
        .await
        .map_err(|source| {
            if is_tls_failure(&source) {
                JoinError::Tls {
                    url: server.clone(),
                    ca: opts.ca.clone(),
                    source,
                }
            } else {
                JoinError::Unreachable {
                    url: server.clone(),
                    source,
                }
            }
        })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|source| JoinError::Unreachable {
            url: server.clone(),
            source,
        })?;
    if !status.is_success() {
        return Err(JoinError::Refused {
            status: status.as_u16(),
            reason: api::server_reason(&body),
        });
    }
    let answer: JoinResponse = serde_json::from_slice(&body).map_err(|e| JoinError::BadAnswer {
        reason: format!("not a join response ({e})"),
    })?;
    check_answer(&answer, &key_pem, &ca_pem)?;

    let paths = IdentityPaths::default();
    let ca_out = if hangar_certs::tls::parse_certs(answer.ca_pem.as_bytes()).is_some() {
        answer.ca_pem.clone().into_bytes()
    } else {
        ca_pem.clone()
    };
    write(dir, &paths.key, key_pem.as_bytes(), true)?;
    write(
        dir,
        &paths.certificate,
        answer.certificate_pem.as_bytes(),
        false,
    )?;
    write(dir, &paths.ca, &ca_out, false)?;
    write(
        dir,
        &paths.token,
        format!("{}\n", answer.worker_token).as_bytes(),
        true,
    )?;
    let cfg = WorkerConfig {
        worker_id: answer.worker_id,
        name,
        pool_id: answer.pool_id,
        pool_name: answer.pool_name.clone(),
        server_url: if answer.server_url.is_empty() {
            server.clone()
        } else {
            answer.server_url.clone()
        },
        transport: opts.transport,
        // A worker on the HTTP transport never reaches the broker: its
        // configuration does not name one.
        broker_url: (opts.transport == hangar_types::worker::Transport::Mqtt)
            .then(|| answer.broker_url.clone()),
        paths,
        work_dir: PathBuf::from("/var/lib/hangar-worker/work"),
        cache_dir: PathBuf::from("/var/cache/hangar-worker"),
        vcs_ca: None,
        timing: Timing::default(),
    };
    // Written last: its presence marks a complete identity.
    write(
        dir,
        Path::new(config::CONFIG_FILE),
        cfg.to_toml().as_bytes(),
        false,
    )?;
    Ok(Joined {
        worker_id: answer.worker_id,
        pool_name: answer.pool_name,
        config_dir: dir.clone(),
    })
}

fn refuse_existing(dir: &Path, force: bool) -> Result<(), JoinError> {
    if force {
        return Ok(());
    }
    let cfg = dir.join(config::CONFIG_FILE);
    let key = dir.join(config::KEY_FILE);
    if cfg.exists() || key.exists() {
        let worker = std::fs::read_to_string(&cfg)
            .ok()
            .and_then(|t| WorkerConfig::parse(&cfg, &t).ok())
            .map(|c| format!("{} ({})", c.worker_id, c.name))
            .unwrap_or_else(|| "(incomplete)".into());
        return Err(JoinError::Exists {
            dir: dir.to_path_buf(),
            worker,
        });
    }
    Ok(())
}

fn prepare_dir(dir: &Path) -> Result<(), JoinError> {
    use std::os::unix::fs::DirBuilderExt;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JoinError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(werr(dir))?;
    let probe = dir.join(format!(".join-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(werr(dir))?;
    std::fs::remove_file(&probe).map_err(werr(dir))?;
    Ok(())
}

fn write(dir: &Path, name: &Path, contents: &[u8], private: bool) -> Result<(), JoinError> {
    let path = dir.join(name);
    let r = if private {
        hangar_certs::write_private_file(&path, contents)
    } else {
        hangar_certs::write_public_file(&path, contents)
    };
    r.map_err(|e| match e {
        hangar_certs::CertError::Write { path, source } => JoinError::Write { path, source },
        other => JoinError::Write {
            path: path.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

fn check_answer(a: &JoinResponse, key_pem: &str, ca_pem: &[u8]) -> Result<(), JoinError> {
    let bad = |reason: String| JoinError::BadAnswer { reason };
    if a.worker_id <= 0 || a.pool_id <= 0 {
        return Err(bad("worker or pool id missing".into()));
    }
    if a.worker_token.trim().is_empty() || a.worker_token.contains(['\n', '\r']) {
        return Err(bad("no usable worker token".into()));
    }
    config::endpoint(&a.broker_url, "mqtts", 1984).map_err(|r| bad(format!("broker_url: {r}")))?;
    if !a.server_url.is_empty() {
        config::endpoint(&a.server_url, "https", 1983)
            .map_err(|r| bad(format!("server_url: {r}")))?;
    }
    // The certificate must be for this key and chain to the trusted CA: a
    // client configuration over them is built the way `run` builds it.
    let chain = hangar_certs::tls::parse_certs(a.certificate_pem.as_bytes())
        .ok_or_else(|| bad("no certificate".into()))?;
    let key = {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| bad("own key unreadable".into()))?
    };
    let roots = hangar_certs::tls::roots_from_pem(ca_pem).map_err(|e| bad(e.to_string()))?;
    hangar_certs::tls::client_config(roots.clone(), Some((chain.clone(), key)))
        .map_err(|_| bad("the certificate is not for this worker's key".into()))?;
    verify_chain(&chain, roots).map_err(|e| {
        bad(format!(
            "the certificate does not chain to the trusted CA ({e})"
        ))
    })?;
    Ok(())
}

fn verify_chain(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    roots: std::sync::Arc<rustls::RootCertStore>,
) -> Result<(), rustls::Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots,
        hangar_certs::tls::provider(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let (end, rest) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_client_cert(end, rest, rustls::pki_types::UnixTime::now())
        .map(|_| ())
}

/// Whether a request failed in the TLS handshake (untrusted or mismatched
/// certificate) rather than in reaching the host. The rustls error is wrapped
/// in I/O errors whose `source()` skips it, so the chain's text is checked too.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        let text = c.to_string();
        if text.contains("peer certificate")
            || text.contains("handshake")
            || text.contains("received fatal alert")
        {
            return true;
        }
        cur = c.source();
    }
    false
}
