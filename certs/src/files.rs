//! Writing key material safely: private files are created 0600 from the first byte
//! and replaced atomically, so no reader ever sees a half-written or loose key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::CertError;

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, fsync, rename).
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o600)
}

/// Writes `contents` to `path` with mode 0644, atomically.
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // An existing temporary file keeps its old mode: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CertError::write(path)(e)
    })
}

/// Refuses a secret file that group or others can read or write.
pub fn check_private_file(path: &Path) -> Result<(), CertError> {
    let meta = fs::metadata(path).map_err(CertError::read(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}
