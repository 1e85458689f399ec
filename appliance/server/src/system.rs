//! Facts for the console's System page: the supervised services (asked of
//! the supervisor through a probe the `hangar` binary supplies, since only it
//! knows the control socket), certificate expiry dates, and the disk use of
//! the data directories.

use std::path::PathBuf;
use std::sync::Arc;

use hangar_console::{CertificateFact, DiskFact, Pending, ServiceFact, SystemFacts};

/// Asks the supervisor for its services; `Err` says why there is no answer.
pub type ServicesProbe = Arc<dyn Fn() -> Pending<'static, Result<Vec<ServiceFact>, String>> + Send + Sync>;

/// Where the System page's facts come from.
#[derive(Clone, Default)]
pub struct SystemSources {
    pub services: Option<ServicesProbe>,
    /// Certificates to show, by name.
    pub certificates: Vec<(String, PathBuf)>,
    /// Data directories whose disk use to show.
    pub data_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for SystemSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSources")
            .field("services", &self.services.is_some())
            .field("certificates", &self.certificates)
            .field("data_dirs", &self.data_dirs)
            .finish()
    }
}

/// Directory walks stop after this many entries: a page must not scan a disk.
const MAX_ENTRIES: u64 = 200_000;

impl SystemSources {
    pub(crate) async fn gather(&self) -> SystemFacts {
        let services = match &self.services {
            Some(probe) => probe().await,
            None => Err("this server was not told where the supervisor's control socket is".to_string()),
        };
        let certificates = self.certificates.iter().map(|(name, path)| certificate(name, path)).collect();
        let dirs = self.data_dirs.clone();
        let disks = tokio::task::spawn_blocking(move || dirs.iter().map(|d| disk(d)).collect())
            .await
            .unwrap_or_default();
        SystemFacts { version: env!("CARGO_PKG_VERSION").to_string(), services, certificates, disks, bundles: None, upgrades: Vec::new() }
    }
}

fn certificate(name: &str, path: &std::path::Path) -> CertificateFact {
    let parsed = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|pem| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| format!("{}: not a PEM certificate ({e})", path.display()))?;
        let cert = pem.parse_x509().map_err(|e| format!("{}: not a certificate ({e})", path.display()))?;
        let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .ok_or_else(|| format!("{}: expiry out of range", path.display()))?;
        Ok((cert.subject().to_string(), not_after))
    });
    match parsed {
        Ok((subject, not_after)) => CertificateFact { name: name.to_string(), subject, not_after: Ok(not_after) },
        Err(e) => CertificateFact { name: name.to_string(), subject: String::new(), not_after: Err(e) },
    }
}

fn disk(dir: &std::path::Path) -> DiskFact {
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .map_err(|e| format!("{e}"));
    DiskFact { path: dir.display().to_string(), used_bytes: du(dir), free_bytes: free }
}

/// Bytes of the regular files under `dir`, not following links.
fn du(dir: &std::path::Path) -> Result<u64, String> {
    let mut total = 0u64;
    let mut seen = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} files; at least {total} bytes"));
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}
