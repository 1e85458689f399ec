//! The tools area under the data directory (`<data>/tools`): the tool
//! binaries served at `/v1/tools/` and the provider mirror at
//! `<data>/tools/providers`. It outlives releases: the installer seeds it
//! from each release it installs or upgrades to (the release's `tools/` and
//! its `bin/hangar-worker`), never deleting what is there, so that versions
//! added by tools bundles stay across upgrades and rollbacks. It belongs to
//! the service user, whose server applies tools and worker bundles to it.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::InstallError;
use crate::host::{Layout, chown, ensure_dir};

/// What a seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub copied: usize,
    pub unchanged: usize,
}

/// The provider mirror inside the tools area.
pub fn mirror_dir(l: &Layout) -> PathBuf {
    l.tools.join("providers")
}

/// Copies release `version`'s tools (at `release`) into the tools area.
/// A file of the release replaces one of the same path with other bytes (the
/// release the operator installs is authoritative for its own versions);
/// nothing else is touched.
pub fn seed(l: &Layout, release: &Path, version: &str, owner: Option<(u32, u32)>) -> Result<Seeded, InstallError> {
    ensure_dir(&l.tools, 0o755, owner)?;
    ensure_dir(&mirror_dir(l), 0o755, owner)?;
    let mut done = Seeded::default();
    let from = release.join("tools");
    if from.is_dir() {
        copy_tree(&from, &l.tools, owner, &mut done)?;
    }
    let worker = release.join("bin/hangar-worker");
    if worker.is_file() {
        let dir = l.tools.join(hangar_types::worker::WORKER_TOOL).join(version);
        ensure_dir(dir.parent().expect("a parent"), 0o755, owner)?;
        ensure_dir(&dir, 0o755, owner)?;
        copy_file(&worker, &dir.join(hangar_types::worker::WORKER_TOOL), owner, &mut done)?;
    }
    Ok(done)
}

fn copy_tree(from: &Path, to: &Path, owner: Option<(u32, u32)>, done: &mut Seeded) -> Result<(), InstallError> {
    let mut entries: Vec<_> = fs::read_dir(from).map_err(InstallError::io("read", from))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let kind = e.file_type().map_err(InstallError::io("read", &src))?;
        if kind.is_dir() {
            ensure_dir(&dst, 0o755, owner)?;
            copy_tree(&src, &dst, owner, done)?;
        } else if kind.is_file() {
            copy_file(&src, &dst, owner, done)?;
        }
    }
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else { return false };
    if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// `src` as `dst`, through a temporary name and a rename.
fn copy_file(src: &Path, dst: &Path, owner: Option<(u32, u32)>, done: &mut Seeded) -> Result<(), InstallError> {
    let mode = fs::metadata(src).map_err(InstallError::io("read", src))?.permissions().mode() & 0o755;
    if same_bytes(src, dst) {
        chown(dst, owner)?;
        done.unchanged += 1;
        return Ok(());
    }
    let dir = dst.parent().expect("a file has a directory");
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.seed-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut out = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        std::io::copy(&mut fs::File::open(src)?, &mut out)?;
        out.flush()?;
        out.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(InstallError::io("write", &tmp)(e));
    }
    if let Err(e) = chown(&tmp, owner) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dst).map_err(InstallError::io("rename into place", dst))?;
    done.copied += 1;
    Ok(())
}

/// Points `tools_dir` and `provider_mirror_dir` of `hangar.toml` at the tools
/// area when they still have the values an earlier installer wrote (inside
/// the release, which an upgrade replaces). Other values are the operator's
/// and stay. The keys are the same, so an older release's strict parser
/// reads the file after a rollback. Returns whether the file changed.
pub fn move_config_to_data(l: &Layout) -> Result<bool, InstallError> {
    let text = fs::read_to_string(&l.config).map_err(InstallError::io("read", &l.config))?;
    let q = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned()).to_string();
    let moves = [
        (format!("tools_dir = {}", q(&l.current.join("tools"))), format!("tools_dir = {}", q(&l.tools))),
        (
            format!("provider_mirror_dir = {}", q(&l.current.join("tools/providers"))),
            format!("provider_mirror_dir = {}", q(&mirror_dir(l))),
        ),
    ];
    let mut section = String::new();
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare.starts_with('[') {
            section = bare.trim().to_string();
        }
        match moves.iter().find(|(old, _)| section == "[server]" && bare.trim() == old) {
            Some((_, new)) => {
                out.push_str(new);
                out.push('\n');
                changed = true;
            }
            None => out.push_str(line),
        }
    }
    if changed {
        let mode = fs::metadata(&l.config).map_err(InstallError::io("read", &l.config))?.permissions().mode() & 0o777;
        hangar_config::Config::from_toml(&out, &l.config).map_err(InstallError::Config)?;
        crate::host::write_atomic(&l.config, out.as_bytes(), mode, None)?;
    }
    Ok(changed)
}
