//! Running the appliance: a systemd unit for `hangar supervise` when systemd
//! is PID 1, otherwise the supervisor started detached by the installer, its
//! pid in `<data>/supervise.pid`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::InstallError;
use crate::host::{Host, Layout, live_pid, run, write_atomic, write_if_changed};
use crate::install::detach;
use crate::render;

/// What a supervisor's command line contains.
const NEEDLE: &str = "supervise";

fn unit_path(host: &Host) -> PathBuf {
    PathBuf::from("/etc/systemd/system").join(host.unit_name())
}

/// Whether the appliance's supervisor runs.
pub fn running(host: &Host, l: &Layout) -> bool {
    if host.systemd && unit_path(host).exists() {
        return Command::new("systemctl").args(["is-active", "--quiet", &host.unit_name()]).status().is_ok_and(|s| s.success());
    }
    supervisor_pid(l).is_some()
}

/// The supervisor's pid, when the installer started it. One whose pid file
/// was never written (its starter was killed right after starting it) is
/// found by its command line and recorded.
pub fn supervisor_pid(l: &Layout) -> Option<i32> {
    if let Some(pid) = live_pid(&l.supervisor_pid_file(), NEEDLE) {
        return Some(pid);
    }
    let config = l.config.to_string_lossy().into_owned();
    let found = fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.iter().any(|a| a == &config) && args.iter().any(|a| a == NEEDLE)).then_some(pid)
    })?;
    let _ = write_atomic(&l.supervisor_pid_file(), format!("{found}\n").as_bytes(), 0o644, None);
    Some(found)
}

/// Starts the supervisor, or restarts it when its configuration changed,
/// and the upgrade agent beside it.
pub fn start(host: &Host, l: &Layout, config_changed: bool) -> Result<String, InstallError> {
    let started = start_supervisor(host, l, config_changed)?;
    let agent = crate::agent::ensure_running(host, l)?;
    Ok(format!("{started}; {agent}"))
}

fn start_supervisor(host: &Host, l: &Layout, config_changed: bool) -> Result<String, InstallError> {
    if host.systemd {
        let unit = host.unit_name();
        let changed = write_if_changed(&unit_path(host), render::systemd_unit(l).as_bytes(), 0o644, None)?;
        if changed {
            run(Command::new("systemctl").arg("daemon-reload"), "daemon-reload")?;
        }
        run(Command::new("systemctl").args(["enable", "--quiet", &unit]), "enable")?;
        let verb = if config_changed || changed { "restart" } else { "start" };
        run(Command::new("systemctl").args([verb, &unit]), verb)?;
        return Ok(format!("systemd unit {unit} ({verb}ed)"));
    }
    if let Some(pid) = supervisor_pid(l) {
        if !config_changed {
            return Ok(format!("the supervisor runs (pid {pid}); configuration unchanged"));
        }
        stop(host, l)?;
    }
    let log = l.logs.join("supervise.log");
    let mut cmd = Command::new(l.bin("hangar"));
    // A clean environment: nothing of the installer's (or the operator's
    // shell) reaches the services.
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .arg("--config")
        .arg(&l.config)
        .arg("supervise")
        .current_dir(&l.data);
    let mut child = detach(&mut cmd, &log)?;
    let pid = child.id();
    write_atomic(&l.supervisor_pid_file(), format!("{pid}\n").as_bytes(), 0o644, None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !l.socket().exists() {
        // Asked of the child itself: right after exec, /proc/<pid>/cmdline can
        // still read empty, which a pid-file check would take for an exit.
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(InstallError::Health {
                what: "the supervisor".into(),
                secs: 0,
                detail: format!("it exited ({status}): {last} (log {})", log.display()),
            });
        }
        if Instant::now() > deadline {
            return Err(InstallError::Health { what: "the supervisor's control socket".into(), secs: 30, detail: l.socket().display().to_string() });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The supervisor is not the installer's to wait for: it outlives it.
    std::mem::forget(child);
    Ok(format!("no systemd: started the supervisor directly (pid {pid}, log {})", log.display()))
}

/// Stops the supervisor (it stops every service first) and waits until it is gone.
pub fn stop(host: &Host, l: &Layout) -> Result<(), InstallError> {
    if host.systemd && unit_path(host).exists() {
        let _ = run(Command::new("systemctl").args(["stop", &host.unit_name()]), "stop");
    }
    let Some(pid) = supervisor_pid(l) else { return Ok(()) };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::host::process_alive(pid, NEEDLE) {
        if Instant::now() > deadline {
            // Whatever is left of its group.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            break;
        }
        reap(pid);
        std::thread::sleep(Duration::from_millis(50));
    }
    reap(pid);
    let _ = fs::remove_file(l.supervisor_pid_file());
    Ok(())
}

/// Collects the exit of a supervisor this process started (a zombie otherwise).
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// Removes the systemd unit (uninstall).
pub fn remove_unit(host: &Host) -> Result<(), InstallError> {
    let path = unit_path(host);
    if host.systemd && path.exists() {
        let _ = run(Command::new("systemctl").args(["disable", "--now", "--quiet", &host.unit_name()]), "disable");
        fs::remove_file(&path).map_err(InstallError::io("remove", &path))?;
        let _ = run(Command::new("systemctl").arg("daemon-reload"), "daemon-reload");
    }
    Ok(())
}
