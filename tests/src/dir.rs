//! A test's working directory: removed when the test passes, kept (and its path
//! printed) when it fails, so the logs of every process it started can be read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A temporary directory under `$TMPDIR/hangar-tests/`.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    /// Creates `$TMPDIR/hangar-tests/<label>-<random>`, readable by the
    /// unprivileged service user that runs PostgreSQL and Garage.
    pub fn new(label: &str) -> TestDir {
        let root = std::env::temp_dir().join("hangar-tests");
        std::fs::create_dir_all(&root).expect("create test root");
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let path = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&root)
            .expect("create test dir")
            .keep();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        TestDir {
            path,
            keep: std::env::var_os("HANGAR_TEST_KEEP").is_some(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path()/name`, created.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create test subdir");
        p
    }

    /// Keep the directory even if the test passes.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep {
            eprintln!("test files kept in {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
