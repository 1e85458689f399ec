//! Applying `tools` and `worker` bundles to an appliance's tools area: the
//! directory of tool binaries served at `/v1/tools/` and the provider mirror
//! served at `/v1/providers/`.
//!
//! A `tools` bundle holds, and only holds:
//!
//! | entry | installed as |
//! |---|---|
//! | `terraform/<version>/terraform` (linux_amd64) | `<tools>/terraform/<version>/terraform` |
//! | `terraform/<version>/<os>_<arch>/terraform` | `<tools>/terraform/<version>/<os>_<arch>/terraform` |
//! | `opentofu/<version>/tofu`, `opentofu/<version>/<os>_<arch>/tofu` | the same under `<tools>/opentofu/` |
//! | `providers/<host>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip` | `<mirror>/<host>/<namespace>/<type>/…zip` |
//! | `providers/…/*.json` (what `terraform providers mirror` writes beside the zips) | nothing: the mirror makes its own documents |
//!
//! A `worker` bundle's `bin/hangar-worker` is installed as
//! `<tools>/hangar-worker/<bundle version>/hangar-worker`; its other files are
//! for the worker host itself and are skipped.
//!
//! Files already installed are never replaced: one with the bundle's SHA-256
//! is left as it is (applying a bundle twice changes nothing), one with
//! another SHA-256 refuses the whole bundle before anything is written (a
//! provider's hash is pinned in the lock files of the configurations using
//! it). New files are extracted from the bundle, each hashed against the
//! signed manifest as it is written, then linked into place one by one under
//! their final names: a file is either absent or complete, and an apply cut
//! short is finished by applying the bundle again.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::manifest::{Entry, Kind, Manifest};
use crate::{Bundle, BundleError, ExtractOptions};

/// The tool name under which worker binaries are kept and served.
pub const WORKER_TOOL: &str = "hangar-worker";

/// Where a bundle is applied.
#[derive(Debug, Clone, Copy)]
pub struct ToolsArea<'a> {
    /// Tool binaries (`[server] tools_dir`).
    pub tools_dir: &'a Path,
    /// The provider mirror (`[server] provider_mirror_dir`), when there is one.
    pub mirror_dir: Option<&'a Path>,
}

/// What an apply did, by the entries' paths in the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Files installed now.
    pub installed: Vec<String>,
    /// Files that were installed already, with the same SHA-256.
    pub unchanged: Vec<String>,
    /// Files the tools area has no place for (JSON documents of a provider
    /// mirror; a worker bundle's files for the worker host).
    pub skipped: Vec<String>,
}

/// Why a bundle was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}: {kind} bundles are not applied to the tools area ({hint})", path.display())]
    Kind {
        path: PathBuf,
        kind: Kind,
        hint: &'static str,
    },
    #[error("{}: entry {entry:?} {reason}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("{}: the bundle carries providers, but no provider mirror directory is configured ([server] provider_mirror_dir)", path.display())]
    NoMirror { path: PathBuf },
    #[error("{}: a worker bundle without bin/hangar-worker", path.display())]
    NoWorkerBinary { path: PathBuf },
    #[error(
        "{}: {} is installed already with SHA-256 {installed}, the bundle's entry {entry:?} has {bundled}: an installed file is never replaced",
        path.display(), target.display()
    )]
    Conflict {
        path: PathBuf,
        entry: String,
        target: PathBuf,
        installed: String,
        bundled: String,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    /// A short machine-readable word for the reason.
    pub fn code(&self) -> &'static str {
        match self {
            ApplyError::Kind { .. } => "wrong_kind",
            ApplyError::Entry { .. } => "unexpected_entry",
            ApplyError::NoMirror { .. } => "no_mirror",
            ApplyError::NoWorkerBinary { .. } => "no_worker_binary",
            ApplyError::Conflict { .. } => "conflict",
            ApplyError::Bundle(e) => e.code(),
            ApplyError::Io { .. } => "io",
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io {
        what,
        path,
        source,
    }
}

/// A version as the tools area names it: a digit first, then letters,
/// digits, `.`, `+` and `-`, never `..`.
pub fn version_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
        && !v.contains("..")
}

/// An `<os>_<arch>` platform directory (`linux_amd64`).
fn platform_ok(p: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty() && w.len() <= 16 && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    p.split_once('_').is_some_and(|(os, arch)| word(os) && word(arch))
}

/// A path segment of the provider mirror.
fn mirror_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether `name` is a provider archive of `ty`: `terraform-provider-<type>_<version>_<os>_<arch>.zip`.
fn provider_archive_ok(ty: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(&format!("terraform-provider-{ty}_"))
        .and_then(|r| r.strip_suffix(".zip"))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('_').collect();
    matches!(parts.as_slice(), [v, os, arch] if mirror_segment_ok(v) && mirror_segment_ok(os) && mirror_segment_ok(arch))
}

/// One file of the bundle and where it goes.
#[derive(Debug, Clone)]
struct Placement {
    entry: String,
    target: PathBuf,
    sha256: [u8; 32],
}

/// Where each file of the bundle goes, checking the bundle's kind and layout.
fn plan(
    m: &Manifest,
    bundle: &Path,
    area: &ToolsArea<'_>,
) -> Result<(Vec<Placement>, Vec<String>), ApplyError> {
    let mut places = Vec::new();
    let mut skipped = Vec::new();
    match m.kind {
        Kind::Appliance => {
            return Err(ApplyError::Kind {
                path: bundle.to_path_buf(),
                kind: m.kind,
                hint: "an appliance bundle is a release: upgrade with it",
            });
        }
        Kind::Worker => {
            let version = m.version.to_string();
            for e in &m.entries {
                let Entry::File { path, sha256, .. } = e else { continue };
                if path == "bin/hangar-worker" && version_ok(&version) {
                    places.push(Placement {
                        entry: path.clone(),
                        target: area.tools_dir.join(WORKER_TOOL).join(&version).join(WORKER_TOOL),
                        sha256: sha256.0,
                    });
                } else {
                    skipped.push(path.clone());
                }
            }
            if places.is_empty() {
                return Err(ApplyError::NoWorkerBinary { path: bundle.to_path_buf() });
            }
        }
        Kind::Tools => {
            for e in &m.entries {
                let Entry::File { path, sha256, .. } = e else { continue };
                let parts: Vec<&str> = path.split('/').collect();
                let bad = |reason| ApplyError::Entry {
                    path: bundle.to_path_buf(),
                    entry: path.clone(),
                    reason,
                };
                let target = match parts.as_slice() {
                    ["terraform" | "opentofu", ..] => {
                        let binary = if parts[0] == "terraform" { "terraform" } else { "tofu" };
                        match parts.as_slice() {
                            [_, v, b] if *b == binary && version_ok(v) => area.tools_dir.join(path),
                            [_, v, p, b] if *b == binary && version_ok(v) && platform_ok(p) => area.tools_dir.join(path),
                            _ => return Err(bad("is not <tool>/<version>/[<os>_<arch>/]<binary> (terraform or tofu)")),
                        }
                    }
                    ["providers", rest @ ..] => {
                        if path.ends_with(".json") && rest.iter().all(|s| mirror_segment_ok(s)) {
                            skipped.push(path.clone());
                            continue;
                        }
                        let [host, ns, ty, file] = rest else {
                            return Err(bad("is not providers/<hostname>/<namespace>/<type>/<archive>.zip"));
                        };
                        if ![host, ns, ty, file].iter().all(|s| mirror_segment_ok(s)) || !provider_archive_ok(ty, file) {
                            return Err(bad("is not providers/<hostname>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip"));
                        }
                        let Some(mirror) = area.mirror_dir else {
                            return Err(ApplyError::NoMirror { path: bundle.to_path_buf() });
                        };
                        mirror.join(host).join(ns).join(ty).join(file)
                    }
                    _ => return Err(bad("is neither a tool binary (terraform/…, opentofu/…) nor under providers/")),
                };
                places.push(Placement {
                    entry: path.clone(),
                    target,
                    sha256: sha256.0,
                });
            }
        }
    }
    Ok((places, skipped))
}

/// SHA-256 of the file at `path`, or `None` when there is none.
fn existing_hash(path: &Path) -> Result<Option<[u8; 32]>, ApplyError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(Some(out))
}

/// Sorts the placements into new and unchanged ones, refusing a conflict.
fn compare(places: Vec<Placement>, bundle: &Path) -> Result<(Vec<Placement>, Vec<String>), ApplyError> {
    let mut new = Vec::new();
    let mut unchanged = Vec::new();
    for p in places {
        match existing_hash(&p.target)? {
            None => new.push(p),
            Some(h) if h == p.sha256 => unchanged.push(p.entry),
            Some(h) => {
                return Err(ApplyError::Conflict {
                    path: bundle.to_path_buf(),
                    entry: p.entry,
                    target: p.target,
                    installed: hex::encode(h),
                    bundled: hex::encode(p.sha256),
                });
            }
        }
    }
    Ok((new, unchanged))
}

/// The extraction directory, removed however the apply ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SCRATCH_PREFIX: &str = ".apply-";

/// Applies `bundle` (opened, so its signature is checked) to `area`. The
/// caller keeps two applies from running at once.
pub fn apply(bundle: &Bundle, area: &ToolsArea<'_>) -> Result<Applied, ApplyError> {
    let path = bundle.path();
    let (places, skipped) = plan(bundle.manifest(), path, area)?;
    bundle.check_policy(&ExtractOptions {
        platform: Some(crate::host_platform()),
        ..Default::default()
    })?;
    let (new, unchanged) = compare(places, path)?;
    let mut done = Applied {
        installed: Vec::new(),
        unchanged,
        skipped,
    };
    if new.is_empty() {
        return Ok(done);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(area.tools_dir)
        .map_err(io_err("create", area.tools_dir))?;
    // Extractions of applies that were killed.
    if let Ok(entries) = fs::read_dir(area.tools_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(SCRATCH_PREFIX) || name.starts_with(&format!(".{SCRATCH_PREFIX}")) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let scratch = Scratch(area.tools_dir.join(format!(
        "{SCRATCH_PREFIX}{}",
        hex::encode(rand::random::<[u8; 8]>())
    )));
    // Every file is hashed against the signed manifest as it is written.
    bundle.extract(
        &scratch.0,
        ExtractOptions {
            platform: Some(crate::host_platform()),
            ..Default::default()
        },
    )?;
    for p in new {
        let from = scratch.0.join(&p.entry);
        if place(&from, &p.target)? {
            done.installed.push(p.entry);
        } else {
            // Another writer put it there meanwhile: the same bytes or a refusal.
            match existing_hash(&p.target)? {
                Some(h) if h == p.sha256 => done.unchanged.push(p.entry),
                h => {
                    return Err(ApplyError::Conflict {
                        path: path.to_path_buf(),
                        entry: p.entry,
                        target: p.target,
                        installed: h.map(hex::encode).unwrap_or_default(),
                        bundled: hex::encode(p.sha256),
                    });
                }
            }
        }
    }
    drop(scratch);
    Ok(done)
}

/// Links `from` into place as `to`, never replacing a file there; copies
/// first when `to` is on another file system. Returns false when `to` exists.
fn place(from: &Path, to: &Path) -> Result<bool, ApplyError> {
    let dir = to.parent().expect("a target has a directory");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("create", dir))?;
    let linked = match fs::hard_link(from, to) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = dir.join(format!(".{name}.copy-{}", hex::encode(rand::random::<[u8; 6]>())));
            let copied = fs::copy(from, &tmp)
                .and_then(|_| fs::File::open(&tmp)?.sync_all())
                .map_err(io_err("copy into", &tmp));
            let linked = copied.map(|()| fs::hard_link(&tmp, to));
            let _ = fs::remove_file(&tmp);
            linked?
        }
        other => other,
    };
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err("install", to)(e)),
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_tools_area() {
        assert!(version_ok("1.0.3") && version_ok("1.6.0-rc1+b2"));
        assert!(!version_ok("..") && !version_ok("v1.0") && !version_ok("1..2"));
        assert!(platform_ok("linux_amd64") && platform_ok("darwin_arm64"));
        assert!(!platform_ok("linux") && !platform_ok("Linux_amd64") && !platform_ok("linux_amd64_x"));
        assert!(provider_archive_ok("null", "terraform-provider-null_3.2.1_linux_amd64.zip"));
        assert!(!provider_archive_ok("null", "terraform-provider-aws_3.2.1_linux_amd64.zip"));
        assert!(!provider_archive_ok("null", "terraform-provider-null_3.2.1_linux.zip"));
        assert!(!provider_archive_ok("null", "terraform-provider-null_3.2.1_linux_amd64.tar"));
        assert!(!mirror_segment_ok(".hidden") && !mirror_segment_ok(""));
    }
}
