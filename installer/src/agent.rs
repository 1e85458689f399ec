//! `hangar-install upgrade-agent`: the root process that carries out the
//! upgrades asked for from the console or the API.
//!
//! The server runs as the unprivileged service user and is stopped by an
//! upgrade, so it cannot upgrade the appliance itself: it writes a request
//! naming a staged appliance bundle (see [`hangar_types::upgrade`]) and this
//! agent, started by the installer beside the supervisor (a systemd unit of
//! its own, or a detached process without systemd), takes it up:
//!
//! 1. it copies the staged bundle out of the service user's reach (never
//!    through a symbolic link) and checks the SHA-256 the server verified;
//! 2. it marks the request taken and runs `hangar-install upgrade` from the
//!    current release, as an operator would on the host, with the requester
//!    recorded; the upgrade checks the signature again and does the rest,
//!    rollback included; its output goes to
//!    `<data>/upgrades/logs/upgrade-<id>.log`, where only root writes;
//! 3. it writes how the upgrade ended, from the upgrade's own record.
//!
//! A request cannot ask for a downgrade, and a service user who forges one
//! can only ask for a release signed by a trusted key. The upgrade runs in
//! its own process: killing the agent does not interrupt it, and an agent
//! that finds a request taken but not ended waits for the lock, takes up an
//! unfinished upgrade as `hangar-install upgrade` would, and reports it.
//! When the current release is not the agent's own (after an upgrade, or a
//! rollback), the agent becomes the current release's agent.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hangar_types::upgrade::{self as contract, UpgradeDone, UpgradeOutcome, UpgradeRequest, UpgradeTaken};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::InstallError;
use crate::host::{Host, Layout, ensure_dir, live_pid, process_alive, run, write_atomic, write_if_changed};
use crate::installed::Installation;
use crate::upgrade::record::{Outcome, Record};

/// What an agent's command line contains.
const NEEDLE: &str = "upgrade-agent";
/// How often the requests are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Where the server writes requests (`[server] bundles_dir`/upgrades).
pub fn requests_dir(l: &Layout) -> PathBuf {
    crate::render::bundles_dir(l).join(contract::DIR)
}

fn pid_file(l: &Layout) -> PathBuf {
    l.data.join("upgrade-agent.pid")
}

fn unit_name(host: &Host) -> String {
    host.unit_name().replace(".service", "-upgrades.service")
}

fn unit_path(host: &Host) -> PathBuf {
    PathBuf::from("/etc/systemd/system").join(unit_name(host))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The agent's command line, as the unit and a detached start run it.
fn command(host: &Host, l: &Layout) -> Command {
    let mut cmd = Command::new(l.bin("hangar-install"));
    cmd.arg("--prefix").arg(&host.prefix).arg("--service-user").arg(&host.service_user);
    if !host.systemd {
        cmd.arg("--no-systemd");
    }
    cmd.arg(NEEDLE);
    cmd
}

/// The agent's pid, when one runs for this installation.
pub fn pid(host: &Host, l: &Layout) -> Option<i32> {
    if let Some(pid) = live_pid(&pid_file(l), NEEDLE) {
        return Some(pid);
    }
    let prefix = host.prefix.to_string_lossy().into_owned();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let ours = args.windows(2).any(|w| w[0] == "--prefix" && w[1] == prefix) && args.iter().any(|a| a == NEEDLE);
        ours.then_some(pid)
    })
}

/// Starts the agent unless it runs. With systemd it is a unit of its own
/// (not the supervisor's: an upgrade stops that one).
pub fn ensure_running(host: &Host, l: &Layout) -> Result<String, InstallError> {
    if host.systemd {
        let unit = unit_name(host);
        let changed = write_if_changed(&unit_path(host), render_unit(host, l).as_bytes(), 0o644, None)?;
        if changed {
            run(Command::new("systemctl").arg("daemon-reload"), "daemon-reload")?;
        }
        run(Command::new("systemctl").args(["enable", "--quiet", &unit]), "enable")?;
        run(Command::new("systemctl").args(["start", &unit]), "start")?;
        return Ok(format!("upgrade agent: systemd unit {unit}"));
    }
    if let Some(pid) = pid(host, l) {
        return Ok(format!("upgrade agent runs (pid {pid})"));
    }
    let dir = l.data.join("upgrades");
    ensure_dir(&dir, 0o755, None)?;
    let log = dir.join("upgrade-agent.log");
    let mut cmd = command(host, l);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LANG", "C.UTF-8").current_dir("/");
    let child = crate::install::detach(&mut cmd, &log)?;
    let pid = child.id();
    write_atomic(&pid_file(l), format!("{pid}\n").as_bytes(), 0o644, None)?;
    // It outlives the installer; it is found again by its pid file.
    std::mem::forget(child);
    Ok(format!("upgrade agent started (pid {pid}, log {})", log.display()))
}

/// Stops the agent (uninstall). An upgrade it started is not interrupted.
pub fn stop(host: &Host, l: &Layout) -> Result<(), InstallError> {
    let path = unit_path(host);
    if host.systemd && path.exists() {
        let _ = run(Command::new("systemctl").args(["disable", "--now", "--quiet", &unit_name(host)]), "disable");
        fs::remove_file(&path).map_err(InstallError::io("remove", &path))?;
        let _ = run(Command::new("systemctl").arg("daemon-reload"), "daemon-reload");
    }
    if let Some(pid) = pid(host, l) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        for _ in 0..100 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            if !process_alive(pid, NEEDLE) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = fs::remove_file(pid_file(l));
    Ok(())
}

fn render_unit(host: &Host, l: &Layout) -> String {
    let cmd = command(host, l);
    let line: Vec<String> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    format!(
        "# Written by hangar-install: takes the upgrades asked for from the console or the API.\n\
         [Unit]\nDescription=Hangar upgrade agent ({prefix})\n\n\
         [Service]\nExecStart={exec}\nRestart=always\nRestartSec=5\n\
         # A usage error: the current release has no agent (an older one after a rollback).\n\
         RestartPreventExitStatus=2\n\
         # Stopping the agent never stops an upgrade it started.\n\
         KillMode=process\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        prefix = host.prefix.display(),
        exec = line.join(" "),
    )
}

/// Runs the agent until it is killed.
pub fn run_agent(host: &Host) -> Result<(), InstallError> {
    // Started by an install before its health gate: the installation is
    // complete a little later.
    let mut waited = Duration::ZERO;
    let inst = loop {
        match Installation::load(host) {
            Ok(inst) => break inst,
            Err(e) if waited < Duration::from_secs(900) => {
                if waited.is_zero() {
                    eprintln!("waiting for the installation: {e}");
                }
                std::thread::sleep(Duration::from_secs(2));
                waited += Duration::from_secs(2);
            }
            Err(e) => return Err(e),
        }
    };
    let l = inst.layout.clone();
    let me = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
    let dir = requests_dir(&l);
    eprintln!("upgrade agent for {} watching {}", host.prefix.display(), dir.display());
    loop {
        match pending(&dir) {
            Some((req, taken)) => {
                if let Err(e) = take(&inst, &dir, &req, taken) {
                    eprintln!("upgrade {}: {}", req.id, hangar_types::error_chain(&e));
                    std::thread::sleep(POLL * 5);
                }
            }
            None => {
                // The release switched (by an upgrade, from here or from the
                // command line): its installer carries on as the agent.
                let theirs = l.bin("hangar-install").canonicalize().ok();
                if theirs.is_some() && theirs != me {
                    eprintln!("release switched: the agent of {} carries on", l.current.display());
                    let e = command(host, &l).exec();
                    return Err(InstallError::Spawn { program: l.bin("hangar-install"), source: e });
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// A file of the requests' directory: not through a link, at most 64 KiB.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let file = fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path).ok()?;
    let mut text = Vec::new();
    file.take(64 << 10).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The oldest request not ended, and whether it was taken already.
fn pending(dir: &Path) -> Option<(UpgradeRequest, Option<UpgradeTaken>)> {
    let mut found: Vec<(UpgradeRequest, Option<UpgradeTaken>)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".request.json")?.to_string();
            if !contract::id_ok(&id) || dir.join(format!("{id}.done.json")).exists() {
                return None;
            }
            let req: UpgradeRequest = read(&e.path())?;
            (req.id == id).then_some(())?;
            let taken = read(&dir.join(format!("{id}.taken.json")));
            Some((req, taken))
        })
        .collect();
    found.sort_by(|a, b| a.0.requested_at.cmp(&b.0.requested_at).then(a.0.id.cmp(&b.0.id)));
    found.into_iter().next()
}

/// Carries out one request, or follows up the one a killed agent took.
fn take(inst: &Installation, dir: &Path, req: &UpgradeRequest, taken: Option<UpgradeTaken>) -> Result<(), InstallError> {
    // Beside the records, where only root writes: never in a directory of
    // the service user's, whose links root would follow.
    let logs = inst.upgrades_dir().join("logs");
    ensure_dir(&logs, 0o700, None)?;
    let log = logs.join(format!("upgrade-{}.log", req.id));
    // Taken by an agent that was killed: the upgrade it started runs on (its
    // lock is held: later), ended, or never began (started now).
    let taken = match taken {
        Some(t) => {
            let started = DateTime::parse_from_rfc3339(&t.started_at).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now());
            if inst.lock(Duration::ZERO).is_err() {
                return Ok(());
            }
            if record_of(inst, req, started).is_some() {
                Some(started)
            } else {
                eprintln!("upgrade {}: taken, but its upgrade never began: starting it", req.id);
                None
            }
        }
        None => None,
    };
    let started = match taken {
        Some(started) => started,
        None => {
            let started = Utc::now();
            let copy = match copy_bundle(inst, req) {
                Ok(copy) => copy,
                Err(problem) => return finish(dir, req, &log, UpgradeOutcome::Refused, problem, None),
            };
            let t = UpgradeTaken { id: req.id.clone(), started_at: now(), log: log.display().to_string() };
            write_atomic(&dir.join(format!("{}.taken.json", req.id)), &serde_json::to_vec_pretty(&t).expect("serializes"), 0o644, None)?;
            eprintln!("upgrade {}: to {} for {}", req.id, req.version, req.requested_by);
            let mut cmd = installer(inst);
            cmd.arg("upgrade").arg("--bundle").arg(&copy).arg("--requested-by").arg(&req.requested_by);
            let status = run_logged(cmd, &log)?;
            let _ = fs::remove_file(&copy);
            eprintln!("upgrade {}: the installer exited ({status})", req.id);
            started
        }
    };
    // The installer has ended; one killed (with the agent, or alone) left
    // its record unfinished, and is taken up as the operator would.
    let lock = inst.lock(Duration::ZERO);
    if lock.is_err() {
        // An upgrade still runs (started by a killed agent): later.
        return Ok(());
    }
    drop(lock);
    if Record::unfinished(&inst.upgrades_dir()).is_some() {
        let mut cmd = installer(inst);
        cmd.arg("upgrade");
        run_logged(cmd, &log)?;
    }
    let rec = record_of(inst, req, started);
    let last_line = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the installer wrote nothing")
            .trim()
            .to_string()
    };
    let (outcome, message) = match &rec {
        None => (UpgradeOutcome::Refused, last_line()),
        Some(r) => match r.outcome {
            Outcome::Completed => (
                UpgradeOutcome::Completed,
                format!(
                    "Hangar {} runs: upgraded from {} (downtime {:.1} s, backup {})",
                    r.to,
                    r.from,
                    r.downtime_secs.unwrap_or(0.0),
                    r.backup.as_deref().unwrap_or("none")
                ),
            ),
            Outcome::RolledBack => (
                UpgradeOutcome::RolledBack,
                format!("{}; rolled back: Hangar {} runs again on its data", r.error.as_deref().unwrap_or("the upgrade failed"), r.from),
            ),
            Outcome::Refused => (UpgradeOutcome::Refused, r.error.clone().unwrap_or_else(last_line)),
            Outcome::Failed => (UpgradeOutcome::Failed, r.error.clone().unwrap_or_else(last_line)),
            Outcome::Running => (
                UpgradeOutcome::Failed,
                format!(
                    "unfinished: {}; run `hangar-install upgrade` on the host",
                    r.rollback_error.as_deref().or(r.error.as_deref()).unwrap_or("the installer stopped")
                ),
            ),
        },
    };
    finish(dir, req, &log, outcome, message, rec.map(|r| r.id))
}

/// The record of the upgrade request `req` made, started from `started` on.
fn record_of(inst: &Installation, req: &UpgradeRequest, started: DateTime<Utc>) -> Option<Record> {
    Record::all(&inst.upgrades_dir())
        .into_iter()
        .rev()
        .find(|r| r.requested_by == req.requested_by && r.started_at >= started - chrono::Duration::seconds(2))
}

fn finish(dir: &Path, req: &UpgradeRequest, log: &Path, outcome: UpgradeOutcome, message: String, record: Option<String>) -> Result<(), InstallError> {
    eprintln!("upgrade {}: {}: {message}", req.id, outcome.as_str());
    let done = UpgradeDone { id: req.id.clone(), outcome, message, record, finished_at: now(), log: log.display().to_string() };
    write_atomic(&dir.join(format!("{}.done.json", req.id)), &serde_json::to_vec_pretty(&done).expect("serializes"), 0o644, None)
}

/// `hangar-install` of the current release, for this installation.
fn installer(inst: &Installation) -> Command {
    let host = &inst.host;
    let mut cmd = Command::new(inst.layout.bin("hangar-install"));
    cmd.arg("--prefix").arg(&host.prefix).arg("--service-user").arg(&host.service_user);
    if !host.systemd {
        cmd.arg("--no-systemd");
    }
    cmd
}

fn run_logged(mut cmd: Command, log: &Path) -> Result<std::process::ExitStatus, InstallError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(log)
        .map_err(InstallError::io("open", log))?;
    let err = out.try_clone().map_err(InstallError::io("open", log))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // Its own process group: a signal to the agent is not one to the upgrade.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| InstallError::Spawn { program: PathBuf::from(cmd.get_program()), source })?;
    child.wait().map_err(InstallError::io("wait for", Path::new("hangar-install upgrade")))
}

/// The staged bundle copied where only root writes, its SHA-256 checked
/// against the one the server verified. An error is the refusal's reason.
fn copy_bundle(inst: &Installation, req: &UpgradeRequest) -> Result<PathBuf, String> {
    if !contract::id_ok(&req.bundle) {
        return Err(format!("the request names no staged bundle ({:?})", req.bundle));
    }
    let source = crate::render::bundles_dir(&inst.layout).join("staged").join(format!("{}.bundle", req.bundle));
    let incoming = inst.upgrades_dir().join("incoming");
    ensure_dir(&incoming, 0o700, None).map_err(|e| e.to_string())?;
    let target = incoming.join(format!("{}.bundle", req.bundle));
    let copied = (|| -> std::io::Result<String> {
        let mut from = fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&source)?;
        if !from.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut to = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&target)?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            to.write_all(&buf[..n])?;
        }
        to.sync_all()?;
        Ok(hex::encode(sha.finish()))
    })();
    match copied {
        Ok(sum) if sum == req.sha256 => Ok(target),
        Ok(sum) => {
            let _ = fs::remove_file(&target);
            Err(format!("staged bundle {} changed since it was verified (SHA-256 {sum}, not {})", req.bundle, req.sha256))
        }
        Err(e) => {
            let _ = fs::remove_file(&target);
            Err(format!("cannot read staged bundle {} ({}): {e}", req.bundle, source.display()))
        }
    }
}
