//! `hangar-install upgrade`: from one release to the next with a backup first
//! and an automatic rollback.
//!
//! Forward: pre-checks (each named, changing nothing) → release (the bundle
//! verified and unpacked beside the running one) → backup (the services that
//! write stop first, so that nothing written after the backup can be lost by
//! a rollback) → switch (everything stops; `current` points to the new
//! release, the previous one stays) → migrate → start → health gate. A
//! failure from the switch on rolls back: stop → switch back → restore the
//! database from the backup (migrations need not be reversible) → start →
//! health gate.
//!
//! Every step is recorded in the upgrade's record before it starts and when it
//! ends (see [`record`]); each is idempotent, so a run killed anywhere is taken
//! up by the next `hangar-install upgrade` at the step it was in, forward or
//! back: the appliance never stays on a mix of two releases. Once the new
//! release is unpacked, its own installer carries on (this one hands over by
//! exec), so that a release is always switched, migrated and rolled back by
//! the installer that knows it.

pub mod checks;
mod health;
pub mod record;

pub use health::gate;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hangar_bundle::{Bundle, ExtractOptions, TrustStore};

use crate::backup;
use crate::error::InstallError;
use hangar_types::error_chain as chain;
use crate::host::{Host, ensure_dir, run, write_atomic};
use crate::install::{current_release, marker_path, trust_store};
use crate::installed::Installation;
use crate::report::Reporter;
use crate::services;
use record::{Outcome, Phase, Record, RecordOptions, Step};

/// The steps forward, in order.
pub const FORWARD: &[&str] = &["pre-checks", "release", "backup", "switch", "migrate", "start", "health"];
/// The steps of a rollback, in order.
pub const ROLLBACK: &[&str] = &["stop", "switch back", "restore database", "start", "health"];
/// Forward steps before this one leave the appliance as it was when they fail.
const FIRST_CHANGE: usize = 3;

/// What `hangar-install upgrade` was asked.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// The appliance bundle; `None` takes up an unfinished upgrade.
    pub bundle: Option<PathBuf>,
    /// More directories of trusted bundle signing keys.
    pub trust_dirs: Vec<PathBuf>,
    pub allow_downgrade: bool,
    /// Who asked (the API passes its user); root on this host otherwise.
    pub requested_by: Option<String>,
    pub health_timeout: Duration,
    /// How long to wait for runs applying before refusing.
    pub apply_wait: Duration,
}

/// Upgrades the installation under `host`'s prefix, or takes up the
/// unfinished upgrade. Returns the final record; an upgrade that did not
/// complete is an error (after its rollback, when there was one).
pub fn upgrade(host: &Host, reporter: &dyn Reporter, opts: &UpgradeOptions) -> Result<Record, InstallError> {
    let inst = Installation::load(host)?;
    // Its rollback restores the database from the backup made before.
    inst.require_bundled_database("an upgrade")?;
    let dir = inst.upgrades_dir();
    ensure_dir(&dir, 0o755, None)?;
    let lock = inst.lock(Duration::from_secs(15))?;
    crate::signals::catch_interrupt(host);
    let rec = match Record::unfinished(&dir) {
        Some(rec) => {
            if let Some(path) = &opts.bundle {
                let trust = trust_store(&inst.layout, &rec.options.trust_dirs)?;
                let digest = crate::install::manifest_digest(&Bundle::open(path, &trust)?);
                if rec.bundle_sha256.as_deref() != Some(digest.as_str()) {
                    return Err(InstallError::Aborted(format!(
                        "the upgrade from {} to {} ({}) is unfinished: run `hangar-install upgrade` without --bundle to finish it first",
                        rec.from, rec.to, rec.id
                    )));
                }
            }
            let at = rec.steps.last().map(|s| format!("{}{}", if s.phase == Phase::Rollback { "rollback: " } else { "" }, s.name)).unwrap_or_default();
            reporter.info(&format!("Taking up the unfinished {} from {} to {} ({}), at {at}", rec.kind, rec.from, rec.to, rec.id));
            rec
        }
        None => {
            let Some(path) = &opts.bundle else {
                return Err(InstallError::Aborted("no unfinished upgrade here: give the new release's bundle with --bundle FILE".into()));
            };
            let path = std::path::absolute(path).map_err(InstallError::io("resolve", path))?;
            new_record(&inst, &path, opts)?
        }
    };
    let mut u = Upgrade { inst, reporter, dir, rec, bundle: None, lock: Some(lock) };
    u.rec.save(&u.dir)?;
    u.drive()
}

fn new_record(inst: &Installation, bundle: &Path, opts: &UpgradeOptions) -> Result<Record, InstallError> {
    let now = (inst.host.clock)();
    // The version comes from the bundle once its signature is checked; the
    // record names the file until then.
    let requested_by = opts.requested_by.clone().unwrap_or_else(|| format!("root on {}", crate::preflight::system_hostname()));
    Ok(Record {
        format: record::FORMAT,
        id: format!("{}-upgrade", now.format("%Y%m%d-%H%M%S")),
        kind: "upgrade".into(),
        from: inst.state.release.clone(),
        to: String::new(),
        requested_by,
        bundle: Some(bundle.to_path_buf()),
        bundle_sha256: None,
        options: RecordOptions {
            trust_dirs: opts.trust_dirs.clone(),
            allow_downgrade: opts.allow_downgrade,
            health_timeout_secs: opts.health_timeout.as_secs(),
            apply_wait_secs: opts.apply_wait.as_secs(),
        },
        started_at: now,
        finished_at: None,
        phase: Phase::Forward,
        checks: Vec::new(),
        steps: Vec::new(),
        backup: None,
        stopped: Vec::new(),
        database_changed: false,
        downtime_from: None,
        downtime_secs: None,
        outcome: Outcome::Running,
        error: None,
        rollback_error: None,
        audited: false,
    })
}

struct Upgrade<'a> {
    inst: Installation,
    reporter: &'a dyn Reporter,
    dir: PathBuf,
    rec: Record,
    /// The bundle, once the pre-checks opened it.
    bundle: Option<Bundle>,
    /// Held until this process ends or hands over.
    lock: Option<nix::fcntl::Flock<fs::File>>,
}

impl Upgrade<'_> {
    fn save(&self) -> Result<(), InstallError> {
        self.rec.save(&self.dir)
    }

    fn interrupted(&self) -> bool {
        self.inst.host.interrupted.load(Ordering::SeqCst)
    }

    fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.rec.options.health_timeout_secs)
    }

    fn drive(&mut self) -> Result<Record, InstallError> {
        if self.rec.phase == Phase::Rollback {
            return self.rollback();
        }
        let start = match self.rec.last_step(Phase::Forward) {
            None => 0,
            Some(last) => {
                let i = FORWARD.iter().position(|s| *s == last.name).unwrap_or(0);
                match last.ok {
                    Some(true) => i + 1,
                    // Nothing was changed yet: begin again with the checks.
                    _ if i < 2 => 0,
                    _ => i,
                }
            }
        };
        for (i, name) in FORWARD.iter().enumerate().skip(start) {
            if i >= 2 {
                self.hand_over()?;
            }
            if self.interrupted() {
                // Before the switch starts nothing has changed yet.
                let e = InstallError::Interrupted { step: name.to_string() };
                return if i <= FIRST_CHANGE { self.abandon(name, e) } else { self.begin_rollback(name, e) };
            }
            if let Err(e) = self.step(name, Phase::Forward) {
                return if i < FIRST_CHANGE { self.abandon(name, e) } else { self.begin_rollback(name, e) };
            }
        }
        self.complete()
    }

    /// Runs one step, recording it before and after.
    fn step(&mut self, name: &str, phase: Phase) -> Result<(), InstallError> {
        let label = match phase {
            Phase::Forward => name.to_string(),
            Phase::Rollback => format!("rollback: {name}"),
        };
        self.rec.steps.push(Step { name: name.to_string(), phase, started_at: (self.inst.host.clock)(), finished_at: None, ok: None, detail: String::new() });
        self.save()?;
        let t = Instant::now();
        self.reporter.step_start(&label, describe(name, phase));
        let result = match phase {
            Phase::Forward => self.forward(name),
            Phase::Rollback => self.back(name),
        };
        let now = (self.inst.host.clock)();
        let step = self.rec.steps.last_mut().expect("pushed above");
        step.finished_at = Some(now);
        match &result {
            Ok(detail) => {
                step.ok = Some(true);
                step.detail = detail.clone();
                self.reporter.step_done(&label, detail, t.elapsed());
            }
            Err(e) => {
                step.ok = Some(false);
                step.detail = chain(e);
                self.reporter.step_failed(&label, &chain(e), t.elapsed());
            }
        }
        self.save()?;
        result.map(|_| ())
    }

    fn forward(&mut self, name: &str) -> Result<String, InstallError> {
        match name {
            "pre-checks" => self.pre_checks(),
            "release" => self.stage_release(),
            "backup" => self.backup(),
            "switch" => self.switch(),
            "migrate" => self.migrate(),
            "start" => services::start(&self.inst.host, &self.inst.layout, false),
            "health" => health::gate(&self.inst, self.health_timeout()),
            _ => Ok(String::new()),
        }
    }

    fn back(&mut self, name: &str) -> Result<String, InstallError> {
        match name {
            "stop" => self.stop_everything(),
            "switch back" => self.point_current(&self.rec.from.clone()),
            "restore database" => self.restore_database(),
            "start" => services::start(&self.inst.host, &self.inst.layout, false),
            "health" => health::gate(&self.inst, self.health_timeout()),
            _ => Ok(String::new()),
        }
    }

    fn trust(&self) -> Result<TrustStore, InstallError> {
        trust_store(&self.inst.layout, &self.rec.options.trust_dirs)
    }

    fn bundle_path(&self) -> Result<PathBuf, InstallError> {
        self.rec.bundle.clone().ok_or_else(|| InstallError::Aborted(format!("the record {} names no bundle", self.rec.id)))
    }

    fn pre_checks(&mut self) -> Result<String, InstallError> {
        let path = self.bundle_path()?;
        let trust = self.trust()?;
        let mut list = checks::Checklist::new(self.reporter);
        let flag = self.inst.host.interrupted.clone();
        let result = checks::run(
            &self.inst,
            &mut list,
            &path,
            &trust,
            self.rec.options.allow_downgrade,
            Duration::from_secs(self.rec.options.apply_wait_secs),
            &|| flag.load(Ordering::SeqCst),
        );
        self.rec.checks = list.checks;
        let checked = result?;
        self.rec.to = checked.bundle.manifest().version.to_string();
        self.rec.bundle_sha256 = Some(checked.digest);
        self.bundle = Some(checked.bundle);
        Ok(format!("{} checks passed", self.rec.checks.len()))
    }

    /// Unpacks the verified bundle beside the running release.
    fn stage_release(&mut self) -> Result<String, InstallError> {
        if self.bundle.is_none() {
            let trust = self.trust()?;
            self.bundle = Some(Bundle::open(&self.bundle_path()?, &trust)?);
        }
        let bundle = self.bundle.as_ref().expect("opened above");
        let l = &self.inst.layout;
        let version = self.rec.to.clone();
        let digest = self.rec.bundle_sha256.clone().unwrap_or_default();
        if crate::install::manifest_digest(bundle) != digest {
            return Err(InstallError::Aborted(format!("{} changed since the pre-checks", bundle.path().display())));
        }
        let dest = l.releases.join(&version);
        let marker = marker_path(l, &version);
        let recorded = fs::read_to_string(&marker).ok();
        if dest.is_dir() && recorded.as_deref().is_some_and(|m| m.trim() == digest) {
            return Ok(format!("release {version} already unpacked in {}", dest.display()));
        }
        if dest.symlink_metadata().is_ok() {
            return Err(InstallError::Aborted(format!("{} exists and was not unpacked from this bundle", dest.display())));
        }
        // Staging directories of an extraction that was killed.
        for entry in fs::read_dir(&l.releases).map_err(InstallError::io("read", &l.releases))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        write_atomic(&marker, format!("{digest}\n").as_bytes(), 0o644, None)?;
        let reporter = self.reporter;
        let mut progress = |p: hangar_bundle::Progress| reporter.progress(p.done, p.total);
        let flag = self.inst.host.interrupted.clone();
        let extracted = bundle.extract(
            &dest,
            ExtractOptions {
                // The version policy is the pre-checks'.
                installed_version: None,
                platform: Some(hangar_bundle::host_platform()),
                progress: Some(&mut progress),
                interrupt: Some(&flag),
                ..Default::default()
            },
        );
        match extracted {
            Ok(s) => Ok(format!("verified and unpacked {} files ({} MiB) into {}", s.files, s.bytes >> 20, dest.display())),
            Err(e) => {
                let _ = fs::remove_file(&marker);
                Err(e.into())
            }
        }
    }

    /// From here on the new release's installer does the work: this process
    /// becomes it. Returns when this process is that installer.
    fn hand_over(&mut self) -> Result<(), InstallError> {
        let target = self.inst.layout.releases.join(&self.rec.to).join("bin/hangar-install");
        let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
        let it = target.canonicalize().map_err(InstallError::io("find the new release's installer", &target))?;
        if me.as_deref() == Some(it.as_path()) {
            return Ok(());
        }
        self.reporter.info(&format!("handing over to the installer of release {} ({})", self.rec.to, target.display()));
        let host = &self.inst.host;
        let mut cmd = Command::new(&target);
        cmd.arg("--prefix").arg(&host.prefix).arg("--service-user").arg(&host.service_user);
        if !host.systemd {
            cmd.arg("--no-systemd");
        }
        cmd.args(["upgrade", "--health-timeout", &self.rec.options.health_timeout_secs.to_string()]);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // The lock goes with this process image; the new one takes it again.
        self.lock = None;
        let e = cmd.exec();
        Err(InstallError::Spawn { program: target, source: e })
    }

    /// The services that write (everything but the database and the object
    /// store) stop, then the database is backed up.
    fn backup(&mut self) -> Result<String, InstallError> {
        let l = &self.inst.layout;
        let writers: Vec<String> = crate::health::ctl_status(l)?
            .services
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !matches!(n.as_str(), "postgres" | "garage" | "objects-tls" | "minio"))
            .collect();
        for name in &writers {
            if !self.rec.stopped.contains(name) {
                self.rec.stopped.push(name.clone());
            }
        }
        if self.rec.downtime_from.is_none() {
            self.rec.downtime_from = Some((self.inst.host.clock)());
        }
        self.save()?;
        for name in &writers {
            ctl(l, &["stop", name])?;
        }
        // A run may have begun applying between the check and the stop.
        let cluster = self.inst.cluster()?;
        let busy = checks::applying(&cluster)?;
        if !busy.is_empty() {
            return Err(InstallError::Refused {
                check: "runs applying".into(),
                problem: format!("run(s) {} began applying while the appliance was stopping; it was not interrupted: upgrade when it finishes", busy.join(", ")),
            });
        }
        let protect: Vec<String> = self.rec.backup.iter().cloned().collect();
        let m = backup::create(&self.inst, &format!("before the upgrade from {} to {}", self.rec.from, self.rec.to), "upgrade", &protect)?;
        self.rec.backup = Some(m.id.clone());
        self.save()?;
        let dump = m.files.iter().find(|f| f.path == m.database.file).map(|f| f.size).unwrap_or(0);
        Ok(format!(
            "stopped {}; backup {} ({} KiB database dump, {} objects referenced)",
            writers.join(", "),
            m.id,
            dump >> 10,
            m.objects.referenced
        ))
    }

    fn stop_everything(&mut self) -> Result<String, InstallError> {
        if self.rec.downtime_from.is_none() {
            self.rec.downtime_from = Some((self.inst.host.clock)());
            self.save()?;
        }
        services::stop(&self.inst.host, &self.inst.layout)?;
        // A cluster an interrupted migration or restore started on its own.
        self.inst.cluster()?.stop_alone()?;
        Ok("every service stopped".into())
    }

    fn switch(&mut self) -> Result<String, InstallError> {
        self.stop_everything()?;
        let tools = self.seed_tools()?;
        let to = self.rec.to.clone();
        self.point_current(&to).map(|d| format!("every service stopped; {tools}; {d}"))
    }

    /// The tools area gets the tools of both releases (the previous one's
    /// too, for an appliance that kept them inside its release until now),
    /// and the configuration points at it. A rollback leaves both as they
    /// are: the keys are the same, and nothing was removed.
    fn seed_tools(&self) -> Result<String, InstallError> {
        let l = &self.inst.layout;
        let owner = crate::host::user_ids(&self.inst.host.service_user)?;
        let mut copied = 0;
        for version in [&self.rec.from, &self.rec.to] {
            let release = l.releases.join(version);
            if release.is_dir() {
                copied += crate::tools::seed(l, &release, version, owner)?.copied;
            }
        }
        let moved = crate::tools::move_config_to_data(l)?;
        Ok(format!(
            "tools area {}: {copied} file(s) copied{}",
            l.tools.display(),
            if moved { ", the configuration now points at it" } else { "" }
        ))
    }

    /// Points `current` at `version` atomically.
    fn point_current(&self, version: &str) -> Result<String, InstallError> {
        let l = &self.inst.layout;
        let target = PathBuf::from("releases").join(version);
        if !l.releases.join(version).join("bin/hangar").is_file() {
            return Err(InstallError::Aborted(format!("release {version} is not on this host ({})", l.releases.join(version).display())));
        }
        if fs::read_link(&l.current).ok().as_deref() == Some(target.as_path()) {
            return Ok(format!("current -> {} already", target.display()));
        }
        let tmp = l.opt.join(format!(".current.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(InstallError::io("create the link", &tmp))?;
        fs::rename(&tmp, &l.current).map_err(InstallError::io("switch", &l.current))?;
        if let Ok(d) = fs::File::open(&l.opt) {
            let _ = d.sync_all();
        }
        Ok(format!("current -> {}", target.display()))
    }

    fn migrate(&mut self) -> Result<String, InstallError> {
        let l = &self.inst.layout;
        let cluster = self.inst.cluster()?;
        cluster.start_alone()?;
        self.rec.database_changed = true;
        self.save()?;
        let out = run(
            Command::new(l.bin("hangar")).env_clear().env("PATH", "/usr/bin:/bin").arg("--config").arg(&l.config).arg("migrate"),
            "migrate",
        );
        let stopped = cluster.stop_alone();
        let out = out?;
        stopped?;
        Ok(out.lines().last().unwrap_or("migrated").to_string())
    }

    fn restore_database(&mut self) -> Result<String, InstallError> {
        if !self.rec.database_changed {
            return Ok("the database was not touched: nothing to restore".into());
        }
        let id = self.rec.backup.clone().ok_or_else(|| InstallError::Aborted("no backup to restore the database from".into()))?;
        let dir = self.inst.backups_dir().join(&id);
        let m = backup::verify(&dir)?;
        let cluster = self.inst.cluster()?;
        cluster.start_alone()?;
        let restored = cluster.restore(&dir.join(&m.database.file));
        let stopped = cluster.stop_alone();
        restored?;
        stopped?;
        Ok(format!("database restored from backup {id}"))
    }

    /// Before anything changed: the writers run again, the outcome is final.
    fn abandon(&mut self, step: &str, e: InstallError) -> Result<Record, InstallError> {
        let l = self.inst.layout.clone();
        let mut restart_problem = None;
        if !self.rec.stopped.is_empty() {
            let stopped = self.rec.stopped.clone();
            let result = if services::running(&self.inst.host, &l) {
                stopped.iter().try_for_each(|name| ctl(&l, &["start", name]).map(|_| ()))
            } else {
                services::start(&self.inst.host, &l, false).map(|_| ())
            };
            if let Err(r) = result {
                restart_problem = Some(chain(&r));
            }
            if self.rec.downtime_from.is_some() {
                self.rec.downtime_secs = self.rec.downtime_from.map(|f| ((self.inst.host.clock)() - f).num_milliseconds() as f64 / 1000.0);
            }
        }
        self.rec.outcome = if matches!(e, InstallError::Refused { .. }) { Outcome::Refused } else { Outcome::Failed };
        self.rec.error = Some(format!("{step}: {}", chain(&e)));
        self.rec.finished_at = Some((self.inst.host.clock)());
        self.save()?;
        self.audit();
        let kept = match restart_problem {
            Some(p) => format!("the appliance was not changed, but restarting its stopped services failed: {p}"),
            None => format!("the appliance was not changed; release {} runs", self.rec.from),
        };
        let to = if self.rec.to.is_empty() { "the new release".to_string() } else { self.rec.to.clone() };
        Err(InstallError::UpgradeFailed { to, failure: format!("{step}: {}", chain(&e)), after: kept })
    }

    fn begin_rollback(&mut self, step: &str, e: InstallError) -> Result<Record, InstallError> {
        self.rec.error = Some(format!("{step}: {}", chain(&e)));
        self.rec.phase = Phase::Rollback;
        self.save()?;
        self.reporter.info(&format!("The upgrade failed at {step}: {}. Rolling back to {}.", chain(&e), self.rec.from));
        self.rollback()
    }

    fn rollback(&mut self) -> Result<Record, InstallError> {
        // Interruptions no longer stop anything: the rollback runs to its end.
        let start = match self.rec.last_step(Phase::Rollback) {
            None => 0,
            Some(last) => {
                let i = ROLLBACK.iter().position(|s| *s == last.name).unwrap_or(0);
                if last.ok == Some(true) { i + 1 } else { i }
            }
        };
        self.hand_over()?;
        for name in ROLLBACK.iter().skip(start) {
            if let Err(e) = self.step(name, Phase::Rollback) {
                self.rec.rollback_error = Some(format!("{name}: {}", chain(&e)));
                self.save()?;
                return Err(InstallError::UpgradeFailed {
                    to: self.rec.to.clone(),
                    failure: self.rec.error.clone().unwrap_or_default(),
                    after: format!(
                        "the rollback failed at {name}: {}; run `hangar-install upgrade` again to retry it (record {})",
                        chain(&e),
                        Record::path(&self.dir, &self.rec.id).display()
                    ),
                });
            }
        }
        let now = (self.inst.host.clock)();
        self.rec.outcome = Outcome::RolledBack;
        self.rec.rollback_error = None;
        self.rec.finished_at = Some(now);
        self.rec.downtime_secs = self.rec.downtime_from.map(|f| (now - f).num_milliseconds() as f64 / 1000.0);
        self.save()?;
        self.audit();
        let db = if self.rec.database_changed {
            format!("the database restored from backup {}", self.rec.backup.clone().unwrap_or_default())
        } else {
            "the database untouched".to_string()
        };
        Err(InstallError::UpgradeFailed {
            to: self.rec.to.clone(),
            failure: self.rec.error.clone().unwrap_or_default(),
            after: format!("rolled back: release {} runs again, {db}, and passed the health gate", self.rec.from),
        })
    }

    fn complete(&mut self) -> Result<Record, InstallError> {
        let now = (self.inst.host.clock)();
        let state_file = self.inst.layout.state_file.clone();
        let mut state = self.inst.state.clone();
        state.previous_release = Some(self.rec.from.clone());
        state.release = self.rec.to.clone();
        state.ready_at = Some(now);
        state.save(&state_file)?;
        self.inst.state = state;
        self.rec.outcome = Outcome::Completed;
        self.rec.finished_at = Some(now);
        self.rec.downtime_secs = self.rec.downtime_from.map(|f| (now - f).num_milliseconds() as f64 / 1000.0);
        self.save()?;
        self.audit();
        for removed in prune_releases(&self.inst) {
            self.reporter.info(&format!("removed release {removed} (neither current nor previous)"));
        }
        Ok(self.rec.clone())
    }

    /// The outcome in the audit trail, now that the database is final.
    fn audit(&mut self) {
        if self.rec.audited {
            return;
        }
        match audit(&self.inst, &self.rec) {
            Ok(()) => {
                self.rec.audited = true;
                let _ = self.save();
            }
            Err(e) => self.reporter.info(&format!("warning: the audit trail could not record this {}: {}", self.rec.kind, chain(&e))),
        }
    }
}

/// `hangar ctl ARGS` of the current release.
fn ctl(l: &crate::host::Layout, args: &[&str]) -> Result<String, InstallError> {
    run(Command::new(l.bin("hangar")).env_clear().arg("--config").arg(&l.config).arg("ctl").args(args), &format!("ctl {}", args.join(" ")))
}

/// Writes the record's outcome to the audit trail: `appliance.upgrade`, and
/// `appliance.rollback` when it rolled back.
pub fn audit(inst: &Installation, rec: &Record) -> Result<(), InstallError> {
    let cluster = inst.cluster()?;
    let details = serde_json::json!({
        "record": rec.id,
        "from": rec.from,
        "to": rec.to,
        "outcome": rec.outcome.as_str(),
        "backup": rec.backup,
        "error": rec.error,
        "downtime_secs": rec.downtime_secs,
        "steps": rec.steps.iter().map(|s| serde_json::json!({
            "name": s.name,
            "phase": if s.phase == Phase::Rollback { "rollback" } else { "forward" },
            "ok": s.ok,
            "secs": s.secs(),
        })).collect::<Vec<_>>(),
    });
    let mut sql = String::from("INSERT INTO audit_events (actor, action, target, details) VALUES (:'actor', :'action', :'target', :'details'::jsonb);\n");
    if rec.outcome == Outcome::RolledBack {
        sql += "INSERT INTO audit_events (actor, action, target, details) VALUES (:'actor', 'appliance.rollback', :'back', :'details'::jsonb);\n";
    }
    let action = format!("appliance.{}", rec.kind);
    let target = format!("release:{}", if rec.to.is_empty() { "?" } else { &rec.to });
    let back = format!("release:{}", rec.from);
    let details = details.to_string();
    cluster.psql(
        crate::render::DB_NAME,
        &sql,
        &[("actor", &rec.requested_by), ("action", &action), ("target", &target), ("back", &back), ("details", &details)],
    )?;
    Ok(())
}

/// Removes releases that are neither current nor the previous one (and the
/// markers of releases no longer there).
fn prune_releases(inst: &Installation) -> Vec<String> {
    let l = &inst.layout;
    let keep: Vec<String> = [current_release(l), inst.state.previous_release.clone()].into_iter().flatten().collect();
    let mut removed = Vec::new();
    for e in fs::read_dir(&l.releases).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_dir() || keep.contains(&name) || name.parse::<semver::Version>().is_err() {
            continue;
        }
        if fs::remove_dir_all(e.path()).is_ok() {
            let _ = fs::remove_file(marker_path(l, &name));
            removed.push(name);
        }
    }
    removed
}

fn describe(step: &str, phase: Phase) -> &'static str {
    match (phase, step) {
        (Phase::Forward, "pre-checks") => "signature, kind, version, upgrade path, disk, services, applies",
        (Phase::Forward, "release") => "verifying and unpacking the new release beside the running one",
        (Phase::Forward, "backup") => "stopping the services that write, then backing up the database and keys",
        (Phase::Forward, "switch") => "stopping the appliance and switching to the new release",
        (Phase::Forward, "migrate") => "migrating the database",
        (Phase::Forward, "start") => "starting the new release",
        (Phase::Forward, "health") => "waiting for every service to be ready",
        (Phase::Rollback, "stop") => "stopping the new release",
        (Phase::Rollback, "switch back") => "switching back to the previous release",
        (Phase::Rollback, "restore database") => "restoring the database from the backup",
        (Phase::Rollback, "start") => "starting the previous release",
        (Phase::Rollback, "health") => "waiting for every service to be ready",
        _ => "",
    }
}

/// The records under `dir`, for `status`.
pub fn history(inst: &Installation) -> Vec<Record> {
    Record::all(&inst.upgrades_dir())
}

/// Whether `hangar-install` (install or repair) must wait: an upgrade is
/// unfinished.
pub fn unfinished(host: &Host) -> Result<Option<Record>, InstallError> {
    Ok(Installation::find(host)?.and_then(|i| Record::unfinished(&i.upgrades_dir())))
}
