//! `GET /v1/tools/{tool}/{version}/{os}_{arch}`: the Terraform/OpenTofu
//! binaries of `[server] tools_dir`, and the `hangar-worker` binaries applied
//! from worker bundles, to authenticated workers, with their SHA-256 in
//! `x-hangar-sha256` and their version in `x-hangar-version`. For
//! `hangar-worker` the version `latest` is the highest one (by semver
//! precedence) present for the platform: `hangar-worker update` asks for it.
//! Terraform and OpenTofu have no `latest`: a run names its version, and the
//! hash it was given at its claim must still be that version's.
//!
//! Layout (as the installer and applied bundles write it):
//! `<tool>/<version>/<binary>` is the linux_amd64 build;
//! `<tool>/<version>/<os>_<arch>/<binary>` any other.
//! Every path segment is checked against a strict alphabet before it touches
//! the file system, and the file found must still lie inside `tools_dir`
//! once symbolic links are resolved.

use std::path::{Path, PathBuf};

use hangar_types::worker::{LATEST_VERSION, ToolDownload, VERSION_HEADER, WORKER_TOOL};
use warp::http::Method;

use super::{Reply2, Request, WorkerApiError, WorkerSettings};
use crate::App;

/// The binary's name inside a tool's directory.
fn binary_name(tool: &str) -> Option<&'static str> {
    match tool {
        "terraform" => Some("terraform"),
        "opentofu" => Some("tofu"),
        WORKER_TOOL => Some(WORKER_TOOL),
        _ => None,
    }
}

fn version_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
        && !v.contains("..")
}

fn word_ok(w: &str) -> bool {
    !w.is_empty() && w.len() <= 16 && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The file serving `tool` `version` for `os`/`arch`, when there is one.
pub(crate) async fn locate(settings: &WorkerSettings, tool: &str, version: &str, os: &str, arch: &str) -> Option<PathBuf> {
    locate_version(settings, tool, version, os, arch).await.map(|(path, _)| path)
}

/// As [`locate`], with the version found (`latest` resolved).
async fn locate_version(settings: &WorkerSettings, tool: &str, version: &str, os: &str, arch: &str) -> Option<(PathBuf, String)> {
    if version == LATEST_VERSION && tool == WORKER_TOOL {
        return latest(settings, tool, os, arch).await;
    }
    let root = settings.tools_dir.as_ref()?;
    let bin = binary_name(tool)?;
    if !version_ok(version) || !word_ok(os) || !word_ok(arch) {
        return None;
    }
    let dir = root.join(tool).join(version);
    let mut candidates = vec![dir.join(format!("{os}_{arch}")).join(bin)];
    if (os, arch) == ("linux", "amd64") {
        candidates.push(dir.join(bin));
    }
    let root = tokio::fs::canonicalize(root).await.ok()?;
    for c in candidates {
        if let Some(found) = inside(&root, &c).await {
            return Some((found, version.to_string()));
        }
    }
    None
}

/// The highest version of `tool` with a binary for `os`/`arch`; versions
/// that are not semver are left out.
async fn latest(settings: &WorkerSettings, tool: &str, os: &str, arch: &str) -> Option<(PathBuf, String)> {
    let root = settings.tools_dir.as_ref()?;
    binary_name(tool)?;
    let mut versions = Vec::new();
    let mut entries = tokio::fs::read_dir(root.join(tool)).await.ok()?;
    while let Ok(Some(e)) = entries.next_entry().await {
        if let Some(name) = e.file_name().to_str()
            && version_ok(name)
            && let Ok(v) = hangar_bundle::Version::parse(name)
        {
            versions.push(v);
        }
    }
    versions.sort_by(|a, b| b.cmp_precedence(a));
    for v in versions {
        if let Some(found) = Box::pin(locate_version(settings, tool, &v.to_string(), os, arch)).await {
            return Some(found);
        }
    }
    None
}

/// `path` resolved, when it is a regular file under `root` (already canonical).
async fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let real = tokio::fs::canonicalize(path).await.ok()?;
    let meta = tokio::fs::metadata(&real).await.ok()?;
    (real.starts_with(root) && meta.is_file()).then_some(real)
}

pub(crate) async fn serve(app: &App, req: Request) -> Reply2 {
    let mut conn = app.db.get().await.map_err(WorkerApiError::db)?;
    super::auth::worker(&mut conn, req.peer.as_ref(), req.auth.as_deref()).await?;
    drop(conn);
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(WorkerApiError::NotFound("tools are only downloaded with GET".into()));
    }
    let tail: Vec<&str> = req.tail.iter().map(String::as_str).collect();
    let missing = || WorkerApiError::NotFound("no such tool, version or platform".into());
    let ToolDownload { tool, version, os, arch } = ToolDownload::parse(&tail).ok_or_else(missing)?;
    let (file, version) = locate_version(&app.workers, tool, version, os, arch).await.ok_or_else(missing)?;
    let sha256 = app.workers.sha256_of(&file).await.map_err(|e| WorkerApiError::internal("hashing a tool", e))?;
    let mut r = super::files::serve_file(&file, req.method == Method::HEAD, "application/octet-stream").await?;
    if let Ok(v) = warp::http::HeaderValue::from_str(&sha256) {
        r.headers_mut().insert("x-hangar-sha256", v);
    }
    if let Ok(v) = warp::http::HeaderValue::from_str(&version) {
        r.headers_mut().insert(VERSION_HEADER, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_checked_before_any_file_is_touched() {
        assert!(version_ok("1.0.3"));
        assert!(version_ok("1.9.0-rc1+build"));
        assert!(!version_ok(".."));
        assert!(!version_ok("1..2"));
        assert!(!version_ok("1.0/../../etc"));
        assert!(!version_ok(""));
        assert!(word_ok("linux") && word_ok("amd64"));
        assert!(!word_ok("..") && !word_ok("Linux") && !word_ok(""));
        assert_eq!(binary_name("opentofu"), Some("tofu"));
        assert_eq!(binary_name("../terraform"), None);
        assert_eq!(binary_name("hangar-worker"), Some("hangar-worker"));
    }
}
