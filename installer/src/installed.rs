//! An installation as found on the host: its state file, layout, database
//! cluster and backup settings; the one lock that upgrades, backups and
//! restores take so that two never overlap; and the backup settings file the
//! installer writes from the answers.

use std::fs::{self, File};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::InstallError;
use crate::host::{Host, Layout, write_atomic};
use crate::pgtool::Cluster;
use crate::state::InstallState;

/// An installation under a prefix.
#[derive(Debug, Clone)]
pub struct Installation {
    pub host: Host,
    pub state: InstallState,
    pub layout: Layout,
}

impl Installation {
    /// The installation under the host's prefix, complete or not.
    pub fn find(host: &Host) -> Result<Option<Installation>, InstallError> {
        let probe = host.layout(Path::new("/var/lib/hangar"));
        let Some(state) = InstallState::load(&probe.state_file)? else { return Ok(None) };
        let layout = host.layout(&state.data_dir);
        Ok(Some(Installation { host: host.clone(), state, layout }))
    }

    /// The installation, which must have completed once.
    pub fn load(host: &Host) -> Result<Installation, InstallError> {
        let inst = Installation::find(host)?.ok_or_else(|| InstallError::NotInstalled { prefix: host.prefix.clone() })?;
        if inst.state.ready_at.is_none() {
            return Err(InstallError::Aborted(format!(
                "the installation of release {} in {} is unfinished: run hangar-install to finish it first",
                inst.state.release,
                host.prefix.display()
            )));
        }
        Ok(inst)
    }

    /// Refuses `what` (a backup, a restore, an upgrade) on an installation
    /// whose database is external: these drive the bundled PostgreSQL's own
    /// tools, and an external server is backed up by its operator.
    pub fn require_bundled_database(&self, what: &str) -> Result<(), InstallError> {
        match &self.state.external_database {
            None => Ok(()),
            Some(target) => Err(InstallError::Aborted(format!(
                "{what} works on the bundled PostgreSQL only; this installation's database is external ({target}): \
                 back it up and restore it with that server's own tools"
            ))),
        }
    }

    pub fn cluster(&self) -> Result<Cluster, InstallError> {
        Cluster::new(&self.layout, self.state.ports.database, &self.state.service_user)
    }

    /// The service user's uid and gid.
    pub fn owner(&self) -> Result<Option<(u32, u32)>, InstallError> {
        crate::host::user_ids(&self.state.service_user)
    }

    /// Where backups are kept.
    pub fn backups_dir(&self) -> PathBuf {
        self.layout.data.join("backups")
    }

    /// Where the upgrade records (the journal of the one in progress and the
    /// history of the others) are kept.
    pub fn upgrades_dir(&self) -> PathBuf {
        self.layout.data.join("upgrades")
    }

    pub fn backup_settings(&self) -> Result<BackupSettings, InstallError> {
        BackupSettings::load(&backup_settings_path(&self.layout))
    }

    /// The lock of upgrades, backups and restores, waiting at most `wait`
    /// for whoever holds it.
    pub fn lock(&self, wait: Duration) -> Result<Flock<File>, InstallError> {
        let path = self.layout.data.join("lifecycle.lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(nix::unistd::geteuid().is_root())
            .create(nix::unistd::geteuid().is_root())
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(InstallError::io("open", &path))?;
        let _ = file.set_permissions(fs::Permissions::from_mode(0o644));
        let deadline = Instant::now() + wait;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(InstallError::Aborted(format!(
                        "another upgrade, backup or restore of this installation is running (it holds {})",
                        path.display()
                    )));
                }
                Err((_, e)) => return Err(InstallError::io("lock", &path)(std::io::Error::from(e))),
            }
        }
    }
}

/// `etc/hangar/backup.toml`.
pub fn backup_settings_path(l: &Layout) -> PathBuf {
    l.etc.join("backup.toml")
}

/// When backups are made on their own and how many are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// A cron expression (five fields, UTC); none: no scheduled backups.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Backups kept (the newest ones); older ones are removed after each new one.
    pub retention: u32,
}

/// What an installation gets unless the answers say otherwise.
pub const DEFAULT_SCHEDULE: &str = "0 3 * * *";
pub const DEFAULT_RETENTION: u32 = 7;

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings { schedule: Some(DEFAULT_SCHEDULE.into()), retention: DEFAULT_RETENTION }
    }
}

impl BackupSettings {
    /// The settings in `path`; the defaults when the file does not exist (an
    /// installation made before there were any).
    pub fn load(path: &Path) -> Result<BackupSettings, InstallError> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let s: BackupSettings = toml::from_str(&text)
                    .map_err(|e| InstallError::State { path: path.to_path_buf(), problem: e.message().to_string() })?;
                s.validate().map_err(|problem| InstallError::State { path: path.to_path_buf(), problem })?;
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BackupSettings::default()),
            Err(source) => Err(InstallError::Io { action: "read", path: path.to_path_buf(), source }),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.schedule {
            check_schedule(s)?;
        }
        if self.retention == 0 {
            return Err("retention must keep at least one backup".into());
        }
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Backups, written by hangar-install from the answers (backup_schedule,\n\
             # backup_retention). Run the installer again to change them.\n",
        );
        match &self.schedule {
            Some(cron) => s += &format!("schedule = {}\n", toml::Value::String(cron.clone())),
            None => s += "# No scheduled backups.\n",
        }
        s += &format!("retention = {}\n", self.retention);
        s
    }

    pub fn save(&self, path: &Path) -> Result<bool, InstallError> {
        crate::host::write_if_changed(path, self.render().as_bytes(), 0o644, None)
    }
}

/// A cron expression of five fields (minute hour day month weekday), or six
/// with the seconds first; UTC.
pub fn check_schedule(s: &str) -> Result<croner::Cron, String> {
    let fields = s.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!("{s:?} is not a cron expression of five fields (minute hour day month weekday)"));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(s)
        .map_err(|e| format!("{s:?} is not a valid cron expression: {e}"))
}

/// Writes a JSON record atomically, readable by the service user (the server
/// shows them).
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), InstallError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| InstallError::State { path: path.to_path_buf(), problem: e.to_string() })?;
    write_atomic(path, &text, 0o644, None)
}
