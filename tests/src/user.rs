//! The unprivileged user services run as. PostgreSQL refuses to run as root; the
//! appliance never runs anything as root; tests do the same.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

/// Name of the account tests run services as when started by root.
pub const TEST_SERVICE_USER: &str = "hangar-test";

/// Who services run as: `hangar-test` (created when missing) when the tests run as
/// root, otherwise the current user.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl ServiceUser {
    pub fn get() -> ServiceUser {
        if !Uid::effective().is_root() {
            let uid = Uid::current();
            let user = User::from_uid(uid).ok().flatten();
            return ServiceUser {
                name: user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
                uid,
                gid: Gid::current(),
            };
        }
        if let Some(u) = User::from_name(TEST_SERVICE_USER).ok().flatten() {
            return ServiceUser {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
            };
        }
        // Several test processes may get here at once: one creates the user while
        // the others wait on the lock, then find it.
        use nix::fcntl::{Flock, FlockArg};
        let lock_path = std::env::temp_dir().join("hangar-test-useradd.lock");
        let lock = std::fs::File::create(&lock_path).expect("create useradd lock");
        let _lock = Flock::lock(lock, FlockArg::LockExclusive).expect("take useradd lock");
        if let Some(u) = User::from_name(TEST_SERVICE_USER).ok().flatten() {
            return ServiceUser {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
            };
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(TEST_SERVICE_USER)
            .output();
        match User::from_name(TEST_SERVICE_USER).ok().flatten() {
            Some(u) => ServiceUser {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
            },
            None => panic!(
                "cannot create the test service user {TEST_SERVICE_USER}: {:?}",
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            ),
        }
    }

    /// Makes `cmd` run as this user (no-op when it is the current user).
    pub fn apply(&self, cmd: &mut Command) {
        if self.uid != Uid::effective() {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// Hands `path` (recursively) to this user.
    pub fn chown(&self, path: &Path) {
        if self.uid == Uid::effective() {
            return;
        }
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {} failed", path.display());
    }
}
