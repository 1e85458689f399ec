//! Backups of an installation, under `<data>/backups/<id>/`: the database
//! (`pg_dump` in PostgreSQL's custom format, from the bundled PostgreSQL),
//! the configuration and the key files (the master key that seals the
//! secrets, the CA), the list of object-store keys the database references
//! (the objects themselves stay in the object store), a manifest with every
//! file's size and SHA-256, and `SHA256SUMS` for `sha256sum -c`. A backup is
//! written under a hidden name and renamed into place when complete; older
//! ones are removed beyond the retention count.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InstallError;
use crate::host::{chown, ensure_dir, write_atomic};
use crate::installed::Installation;
use crate::pgtool::{Cluster, kill_users_of};

/// The backup format this installer writes and reads.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const DUMP: &str = "database.dump";
pub const OBJECTS: &str = "objects.txt";
pub const SUMS: &str = "SHA256SUMS";
/// The configuration and key files, relative to `etc/hangar`, kept in a backup
/// under `files/`.
const ETC_FILES: &[&str] = &["hangar.toml", "garage.toml", "install-state.json", "backup.toml"];
const ETC_DIRS: &[&str] = &["secrets", "pki", "trust"];

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    pub format: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    /// Why it was made: `manual`, `scheduled`, `before the upgrade from 0.1.0 to 0.2.0`.
    pub reason: String,
    /// The release installed when it was made.
    pub release: String,
    pub hostname: String,
    /// The database migrations applied, oldest first.
    pub migrations: Vec<String>,
    pub database: DatabaseDump,
    /// Every file of the backup but the manifest, with its checksum.
    pub files: Vec<FileSum>,
    pub objects: ObjectRefs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseDump {
    /// The dump's file in the backup.
    pub file: String,
    /// `pg_dump` custom format, restored with `pg_restore`.
    pub format: String,
    pub server_version: String,
    /// Size of the live database when dumped.
    pub database_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    /// Relative to the backup's directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The original file's mode (for the key and configuration files).
    pub mode: String,
}

/// The object-store data the database refers to. The objects are not copied:
/// the bucket is backed up (or kept) with the object store's own tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRefs {
    pub engine: String,
    pub endpoint: String,
    pub bucket: String,
    /// How many keys `file` lists.
    pub referenced: u64,
    /// One key per line.
    pub file: String,
}

/// Makes a backup of `inst` (whose cluster must be running) and removes the
/// oldest beyond the retention count, never one named in `protect`. The
/// caller holds the installation's lock.
pub fn create(inst: &Installation, reason: &str, tag: &str, protect: &[String]) -> Result<BackupManifest, InstallError> {
    inst.require_bundled_database("a backup")?;
    let cluster = inst.cluster()?;
    let svc = cluster.owner().or(inst.owner()?);
    let root = inst.backups_dir();
    ensure_dir(&root, 0o700, svc)?;
    clear_partials(&root)?;
    let now = (inst.host.clock)();
    let base = format!("{}-{tag}", now.format("%Y%m%d-%H%M%S"));
    let mut id = base.clone();
    let mut n = 2;
    while root.join(&id).exists() {
        id = format!("{base}-{n}");
        n += 1;
    }
    let partial = root.join(format!(".{id}.partial"));
    ensure_dir(&partial, 0o700, svc)?;
    let result = fill(inst, &cluster, &partial, &id, reason, now);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    let dest = root.join(&id);
    fs::rename(&partial, &dest).map_err(InstallError::io("rename into place", &dest))?;
    sync_dir(&root);
    prune(inst, protect)?;
    Ok(manifest)
}

fn fill(inst: &Installation, cluster: &Cluster, dir: &Path, id: &str, reason: &str, now: DateTime<Utc>) -> Result<BackupManifest, InstallError> {
    let svc = cluster.owner().or(inst.owner()?);
    let database_bytes = cluster.database_size()?;
    let server_version = cluster.server_version()?;
    cluster.dump(&dir.join(DUMP))?;
    let migrations: Vec<String> = cluster
        .query("SELECT version FROM __diesel_schema_migrations ORDER BY version")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    // After the dump: an object the dump names was referenced when it was
    // listed, unless retention removed it in between.
    let keys = cluster.query(OBJECT_KEYS_SQL)?;
    let referenced = keys.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    write_atomic(&dir.join(OBJECTS), keys.as_bytes(), 0o600, svc)?;
    let etc = &inst.layout.etc;
    let mut modes = BTreeMap::new();
    for name in ETC_FILES {
        let from = etc.join(name);
        if from.is_file() {
            copy_private(&from, dir, &format!("files/{name}"), svc, &mut modes)?;
        }
    }
    for sub in ETC_DIRS {
        let from = etc.join(sub);
        let Ok(entries) = fs::read_dir(&from) else { continue };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        names.sort();
        for p in names {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            copy_private(&p, dir, &format!("files/{sub}/{name}"), svc, &mut modes)?;
        }
    }
    let objects = match hangar_config::Config::from_file(&inst.layout.config).ok().and_then(|c| c.objects) {
        Some(o) => ObjectRefs {
            engine: format!("{:?}", o.engine).to_lowercase(),
            endpoint: o.endpoint,
            bucket: o.bucket,
            referenced,
            file: OBJECTS.into(),
        },
        None => ObjectRefs { engine: "none".into(), endpoint: String::new(), bucket: String::new(), referenced, file: OBJECTS.into() },
    };
    let mut files = Vec::new();
    for rel in walk_files(dir)? {
        let path = dir.join(&rel);
        let (size, sha256) = sha256_file(&path)?;
        let mode = modes.get(&rel).copied().unwrap_or(0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(InstallError::io("chmod", &path))?;
        chown(&path, svc)?;
        files.push(FileSum { path: rel, size, sha256, mode: format!("{mode:04o}") });
    }
    let manifest = BackupManifest {
        format: FORMAT,
        id: id.to_string(),
        created: now,
        reason: reason.to_string(),
        release: inst.state.release.clone(),
        hostname: inst.state.hostname.clone(),
        migrations,
        database: DatabaseDump { file: DUMP.into(), format: "pg_dump custom".into(), server_version, database_bytes },
        files,
        objects,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| InstallError::State { path: dir.join(MANIFEST), problem: e.to_string() })?;
    write_atomic(&dir.join(MANIFEST), &text, 0o600, svc)?;
    let mut sums = String::new();
    for f in &manifest.files {
        sums += &format!("{}  {}\n", f.sha256, f.path);
    }
    sums += &format!("{}  {MANIFEST}\n", hex::encode(ring::digest::digest(&ring::digest::SHA256, &text)));
    write_atomic(&dir.join(SUMS), sums.as_bytes(), 0o600, svc)?;
    let d = fs::File::open(dir).map_err(InstallError::io("open", dir))?;
    nix::unistd::syncfs(&d).map_err(|e| InstallError::io("sync", dir)(std::io::Error::from(e)))?;
    chown(dir, svc)?;
    Ok(manifest)
}

/// Every object key the database names: state versions, saved plans, errored
/// states and stored log chunks (`runs/{run}/logs/{phase}/{seq:08}`).
const OBJECT_KEYS_SQL: &str = "SELECT object_key FROM state_versions \
     UNION ALL SELECT plan_key FROM runs WHERE plan_key IS NOT NULL \
     UNION ALL SELECT errored_state_key FROM runs WHERE errored_state_key IS NOT NULL \
     UNION ALL SELECT format('runs/%s/logs/%s/%s', run_id, phase, lpad(seq::text, 8, '0')) FROM run_log_chunks WHERE stored \
     ORDER BY 1";

/// Copies `from` into the backup `dir` as `rel` (private), noting its mode.
fn copy_private(from: &Path, dir: &Path, rel: &str, owner: Option<(u32, u32)>, modes: &mut BTreeMap<String, u32>) -> Result<(), InstallError> {
    let to = dir.join(rel);
    if let Some(parent) = to.parent() {
        let mut missing: Vec<&Path> = parent.ancestors().take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            ensure_dir(d, 0o700, owner)?;
        }
    }
    let bytes = fs::read(from).map_err(InstallError::io("read", from))?;
    write_atomic(&to, &bytes, 0o600, owner)?;
    modes.insert(rel.to_string(), fs::metadata(from).map(|m| m.mode() & 0o7777).unwrap_or(0o600));
    Ok(())
}

/// The files under `dir`, relative, sorted; the manifest and sums excluded.
fn walk_files(dir: &Path) -> Result<Vec<String>, InstallError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(InstallError::io("read", &d))?.flatten() {
            let p = e.path();
            let t = e.file_type().map_err(InstallError::io("read", &p))?;
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
                if rel != MANIFEST && rel != SUMS {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Size and SHA-256 of a file, read in large chunks.
pub fn sha256_file(path: &Path) -> Result<(u64, String), InstallError> {
    let mut f = fs::File::open(path).map_err(InstallError::io("read", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(InstallError::io("read", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(ctx.finish())))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes what an interrupted backup left (its writer, if still running, first).
fn clear_partials(root: &Path) -> Result<(), InstallError> {
    for e in fs::read_dir(root).map_err(InstallError::io("read", root))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".partial") {
            kill_users_of(&e.path());
            fs::remove_dir_all(e.path()).map_err(InstallError::io("remove", e.path()))?;
        }
    }
    Ok(())
}

/// Reads a backup's manifest and checks every file against it.
pub fn verify(dir: &Path) -> Result<BackupManifest, InstallError> {
    let bad = |problem: String| InstallError::Backup { dir: dir.to_path_buf(), problem };
    let path = dir.join(MANIFEST);
    let text = fs::read(&path).map_err(InstallError::io("read", &path))?;
    let m: BackupManifest = serde_json::from_slice(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format {} (this installer reads format {FORMAT})", m.format)));
    }
    let listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    for needed in [m.database.file.as_str(), m.objects.file.as_str()] {
        if !listed.contains(&needed) {
            return Err(bad(format!("{needed} is not in the manifest")));
        }
    }
    for f in &m.files {
        if f.path.split('/').any(|c| c.is_empty() || c == "." || c == "..") || f.path.starts_with('/') {
            return Err(bad(format!("unsafe path {:?} in the manifest", f.path)));
        }
        let p = dir.join(&f.path);
        let (size, sha) = sha256_file(&p).map_err(|_| bad(format!("{} is missing or unreadable", f.path)))?;
        if size != f.size || sha != f.sha256 {
            return Err(bad(format!("{} does not match its checksum (damaged or changed)", f.path)));
        }
    }
    Ok(m)
}

/// The complete backups of `inst`, oldest first.
pub fn list(inst: &Installation) -> Vec<(PathBuf, BackupManifest)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(inst.backups_dir()) else { return out };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if let Ok(text) = fs::read(p.join(MANIFEST))
            && let Ok(m) = serde_json::from_slice::<BackupManifest>(&text)
        {
            out.push((p, m));
        }
    }
    out.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.1.id.cmp(&b.1.id)));
    out
}

/// Removes the oldest backups beyond the retention count; those in `protect`
/// stay whatever their age. Returns the ids removed.
pub fn prune(inst: &Installation, protect: &[String]) -> Result<Vec<String>, InstallError> {
    let keep = inst.backup_settings()?.retention.max(1) as usize;
    let all = list(inst);
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (path, m) in all.into_iter().take(excess) {
        if protect.contains(&m.id) {
            continue;
        }
        fs::remove_dir_all(&path).map_err(InstallError::io("remove", &path))?;
        removed.push(m.id);
    }
    Ok(removed)
}

/// Files of a backup's `files/<sub>/` directory: (name, path in the backup).
pub fn files_in(dir: &Path, m: &BackupManifest, sub: &str) -> Vec<(String, PathBuf)> {
    let prefix = format!("files/{sub}/");
    m.files
        .iter()
        .filter_map(|f| f.path.strip_prefix(&prefix).filter(|n| !n.contains('/')).map(|n| (n.to_string(), dir.join(&f.path))))
        .collect()
}
