//! What the resources do to the host: files and directories created, read,
//! changed and removed, each failure naming the path involved.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failure on the host, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path} already exists")]
    Exists { path: PathBuf },
    #[error("{path} cannot be made: its directory {dir} does not exist")]
    NoParent { path: PathBuf, dir: PathBuf },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is not empty: what is in it is not this resource's to remove")]
    NotEmpty { path: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HostError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HostError + use<> {
        let path = path.to_path_buf();
        move |source| HostError::Io { action, path, source }
    }

    /// The causes below this error, joined: the detail of a diagnostic.
    pub fn causes(&self) -> String {
        let mut out = Vec::new();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push(c.to_string());
            cause = c.source();
        }
        out.join(": ")
    }
}

/// A regular file as found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSeen {
    /// The content as text; bytes that are not UTF-8 read as U+FFFD, so a
    /// binary change still shows as a difference.
    pub content: String,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// SHA-256 of `content`, hex.
pub fn sha256(content: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, content.as_bytes()))
}

/// The regular file at `path`, or `None` when nothing is there. Anything
/// else at `path` (a directory, a link) is not the file either.
pub fn read_file(path: &Path) -> Result<Option<FileSeen>, HostError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostError::io("inspect", path)(e)),
    };
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostError::io("read", path)(e)),
    };
    Ok(Some(FileSeen {
        content: String::from_utf8_lossy(&bytes).into_owned(),
        mode: meta.permissions().mode() & 0o7777,
    }))
}

/// As [`read_file`], for a data source: nothing there is an error.
pub fn read_existing_file(path: &Path) -> Result<FileSeen, HostError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Err(HostError::NotAFile { path: path.into() }),
        _ => {}
    }
    read_file(path)?.ok_or_else(|| HostError::Missing { path: path.into() })
}

/// Why opening a new entry under `path` failed.
fn creating(path: &Path, e: io::Error, action: &'static str) -> HostError {
    match e.kind() {
        io::ErrorKind::AlreadyExists => HostError::Exists { path: path.into() },
        io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            HostError::NoParent { path: path.into(), dir }
        }
        _ => HostError::io(action, path)(e),
    }
}

/// Creates the file at `path`, which must not exist yet, with `content` and
/// `mode` (set after creation, so the umask does not narrow it).
pub fn create_file(path: &Path, content: &str, mode: u32) -> Result<(), HostError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| creating(path, e, "create"))?;
    f.write_all(content.as_bytes()).map_err(HostError::io("write", path))?;
    drop(f);
    set_mode(path, mode)
}

/// Replaces the content of the file at `path` and sets its mode: written
/// beside it and renamed over it, so a reader sees the old or the new file,
/// never half of one.
pub fn replace_file(path: &Path, content: &str, mode: u32) -> Result<(), HostError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.hangartest-{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    create_file(&temp, content, mode).map_err(|e| match e {
        // The temporary name is ours; what went wrong is about `path`.
        HostError::NoParent { dir, .. } => HostError::NoParent { path: path.into(), dir },
        other => other,
    })?;
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        HostError::io("replace", path)(e)
    })
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), HostError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            HostError::Missing { path: path.into() }
        } else {
            HostError::io("change the mode of", path)(e)
        }
    })
}

/// Removes the file at `path`; nothing there is fine (it is gone either way),
/// a directory there is not ours to remove.
pub fn remove_file(path: &Path) -> Result<(), HostError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io("inspect", path)(e)),
        Ok(m) if m.file_type().is_dir() => return Err(HostError::NotAFile { path: path.into() }),
        Ok(_) => {}
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(HostError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The permission bits of the directory at `path`, or `None` when there is
/// no directory there.
pub fn read_dir_mode(path: &Path) -> Result<Option<u32>, HostError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(Some(m.permissions().mode() & 0o7777)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io("inspect", path)(e)),
    }
}

/// Creates the directory at `path` (its parent must exist) with `mode`.
pub fn create_dir(path: &Path, mode: u32) -> Result<(), HostError> {
    fs::DirBuilder::new().mode(0o700).create(path).map_err(|e| creating(path, e, "create"))?;
    set_mode(path, mode)
}

/// Removes the directory at `path` if it is empty; nothing there is fine.
pub fn remove_dir(path: &Path) -> Result<(), HostError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io("inspect", path)(e)),
        Ok(m) if !m.file_type().is_dir() => return Err(HostError::NotADirectory { path: path.into() }),
        Ok(_) => {}
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Err(HostError::NotEmpty { path: path.into() }),
        Err(e) => Err(HostError::io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_created_read_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.txt");
        assert_eq!(read_file(&p).unwrap(), None);
        create_file(&p, "one", 0o640).unwrap();
        assert_eq!(read_file(&p).unwrap(), Some(FileSeen { content: "one".into(), mode: 0o640 }));
        assert!(matches!(create_file(&p, "again", 0o644), Err(HostError::Exists { .. })));
        replace_file(&p, "two", 0o600).unwrap();
        assert_eq!(read_file(&p).unwrap(), Some(FileSeen { content: "two".into(), mode: 0o600 }));
        set_mode(&p, 0o644).unwrap();
        assert_eq!(read_file(&p).unwrap().unwrap().mode, 0o644);
        remove_file(&p).unwrap();
        assert_eq!(read_file(&p).unwrap(), None);
        remove_file(&p).unwrap();
        // Only the file was ever there: no temporary left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failures_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/f.txt");
        let e = create_file(&p, "x", 0o644).unwrap_err();
        assert_eq!(e.to_string(), format!("{} cannot be made: its directory {} does not exist", p.display(), dir.path().join("missing").display()));
        let e = replace_file(&p, "x", 0o644).unwrap_err();
        assert!(matches!(&e, HostError::NoParent { path, .. } if path == &p), "{e}");
        let e = set_mode(&p, 0o644).unwrap_err();
        assert_eq!(e.to_string(), format!("{} does not exist", p.display()));
        let e = read_existing_file(&p).unwrap_err();
        assert_eq!(e.to_string(), format!("{} does not exist", p.display()));
        let e = read_existing_file(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), format!("{} is not a regular file", dir.path().display()));
        assert!(matches!(remove_file(dir.path()), Err(HostError::NotAFile { .. })));
    }

    #[test]
    fn what_is_not_a_regular_file_is_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_file(&link).unwrap(), None);
        assert_eq!(read_file(dir.path()).unwrap(), None);
    }

    #[test]
    fn non_utf8_content_still_reads_as_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        fs::write(&p, [0x66, 0xff, 0x6f]).unwrap();
        assert_eq!(read_file(&p).unwrap().unwrap().content, "f\u{fffd}o");
    }

    #[test]
    fn a_directory_is_created_and_removed_only_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        assert_eq!(read_dir_mode(&d).unwrap(), None);
        create_dir(&d, 0o750).unwrap();
        assert_eq!(read_dir_mode(&d).unwrap(), Some(0o750));
        assert!(matches!(create_dir(&d, 0o750), Err(HostError::Exists { .. })));
        fs::write(d.join("kept"), "x").unwrap();
        let e = remove_dir(&d).unwrap_err();
        assert!(matches!(e, HostError::NotEmpty { .. }), "{e}");
        fs::remove_file(d.join("kept")).unwrap();
        remove_dir(&d).unwrap();
        assert_eq!(read_dir_mode(&d).unwrap(), None);
        remove_dir(&d).unwrap();
        fs::write(&d, "a file").unwrap();
        assert_eq!(read_dir_mode(&d).unwrap(), None);
        assert!(matches!(remove_dir(&d), Err(HostError::NotADirectory { .. })));
    }

    #[test]
    fn sha256_is_of_the_content() {
        assert_eq!(sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
