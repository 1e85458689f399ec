//! `hangar-install uninstall`: stops everything and removes the unit, the
//! releases and the configuration. The data directory, the secrets and the
//! certificates stay unless `--purge-data` says otherwise.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::error::InstallError;
use crate::host::{Host, Layout, live_pid, run};
use crate::services;
use crate::state::InstallState;

pub fn uninstall(host: &Host, purge_data: bool) -> Result<Vec<String>, InstallError> {
    let probe = host.layout(Path::new("/var/lib/hangar"));
    let state = InstallState::load(&probe.state_file)?.ok_or_else(|| InstallError::NotInstalled { prefix: host.prefix.clone() })?;
    let l = host.layout(&state.data_dir);
    let mut done = Vec::new();
    crate::agent::stop(host, &l)?;
    services::stop(host, &l)?;
    services::remove_unit(host)?;
    done.push("stopped the appliance".to_string());
    stop_stray_postgres(&l, &state.service_user);
    let remove = |path: &Path, done: &mut Vec<String>| -> Result<(), InstallError> {
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        if meta.is_dir() {
            fs::remove_dir_all(path).map_err(InstallError::io("remove", path))?;
        } else {
            fs::remove_file(path).map_err(InstallError::io("remove", path))?;
        }
        done.push(format!("removed {}", path.display()));
        Ok(())
    };
    remove(&l.current, &mut done)?;
    remove(&l.releases, &mut done)?;
    let _ = fs::remove_dir(&l.opt);
    remove(&l.config, &mut done)?;
    remove(&l.garage_config, &mut done)?;
    remove(&l.logs, &mut done)?;
    if let Some(target) = &state.external_database {
        // The operator's server: neither stopped nor emptied here.
        done.push(format!("left the external database {target} as it is"));
    }
    if purge_data {
        remove(&l.data, &mut done)?;
        remove(&l.etc, &mut done)?;
    } else {
        remove(&l.supervisor, &mut done)?;
        remove(&l.supervisor_pid_file(), &mut done)?;
        remove(&l.state_file, &mut done)?;
        done.push(format!("kept the data in {} and the secrets and certificates in {}", l.data.display(), l.etc.display()));
    }
    Ok(done)
}

/// A PostgreSQL the installer started and could not stop (it was killed).
fn stop_stray_postgres(l: &Layout, service_user: &str) {
    let pid_file = l.postgres.join("postmaster.pid");
    let Some(pid) = live_pid(&pid_file, "postgres") else { return };
    let mut cmd = Command::new(l.pg_bin("pg_ctl"));
    cmd.env_clear().env("LD_LIBRARY_PATH", l.pg_lib()).arg("stop").arg("-D").arg(&l.postgres).args(["-m", "fast", "-w"]);
    if let Ok(Some((uid, gid))) = crate::host::user_ids(service_user) {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    if run(&mut cmd, "stop").is_err() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
    }
}
