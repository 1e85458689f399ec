//! `hangar-install backup` and `restore`: a backup made now or on the
//! schedule of `etc/hangar/backup.toml`, and a backup restored onto this
//! installation or onto a fresh host (the bundle and the answers install the
//! appliance first, with the backup's keys, so that sealed secrets stay
//! readable and workers keep their certificates). Each restore is recorded
//! in the installation's history and audit trail like an upgrade.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::answers::Prompter;
use crate::backup::{self, BackupManifest};
use crate::error::InstallError;
use hangar_types::error_chain as chain;
use crate::host::{Host, run, write_atomic};
use crate::install::{InstallOptions, install};
use crate::installed::{Installation, check_schedule};
use crate::report::Reporter;
use crate::services;
use crate::upgrade::record::{self, Outcome, Phase, Record, RecordOptions, Step};

/// A backup now, the appliance running. Returns its manifest and directory.
pub fn backup_now(host: &Host) -> Result<(BackupManifest, PathBuf), InstallError> {
    let inst = Installation::load(host)?;
    let _lock = inst.lock(Duration::from_secs(30))?;
    let m = backup::create(&inst, "manual", "manual", &[])?;
    let dir = inst.backups_dir().join(&m.id);
    Ok((m, dir))
}

/// Makes the scheduled backups until SIGTERM or SIGINT. An occurrence that
/// finds an upgrade or another backup running is skipped (and said so).
pub fn scheduled_backups(host: &Host) -> Result<(), InstallError> {
    // Started with the appliance, before the installation's health gate passed.
    let inst = Installation::find(host)?.ok_or_else(|| InstallError::NotInstalled { prefix: host.prefix.clone() })?;
    let settings = inst.backup_settings()?;
    let Some(schedule) = settings.schedule.clone() else {
        println!("no backup schedule in {}; nothing to do", crate::installed::backup_settings_path(&inst.layout).display());
        return Ok(());
    };
    let cron = check_schedule(&schedule).map_err(|problem| InstallError::State { path: crate::installed::backup_settings_path(&inst.layout), problem })?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(InstallError::io("start a runtime for", "the backup schedule"))?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(InstallError::io("watch", "SIGTERM"))?;
        println!("scheduled backups: {schedule:?} (UTC), keeping {}", settings.retention);
        loop {
            let now = chrono::Utc::now();
            let next = cron
                .find_next_occurrence(&now, false)
                .map_err(|e| InstallError::State { path: crate::installed::backup_settings_path(&inst.layout), problem: e.to_string() })?;
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            println!("next backup at {}", next.format("%Y-%m-%d %H:%M:%S UTC"));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            let inst = inst.clone();
            let made = tokio::task::spawn_blocking(move || -> Result<String, InstallError> {
                let _lock = inst.lock(Duration::ZERO)?;
                let started = Instant::now();
                let m = backup::create(&inst, "scheduled", "scheduled", &[])?;
                Ok(format!("backup {} made in {:.1} s", m.id, started.elapsed().as_secs_f64()))
            })
            .await;
            match made {
                Ok(Ok(line)) => println!("{line}"),
                Ok(Err(e)) => println!("scheduled backup skipped or failed: {}", chain(&e)),
                Err(e) => println!("scheduled backup failed: {e}"),
            }
        }
    })
}

/// Options of `hangar-install restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub from: PathBuf,
    pub trust_dirs: Vec<PathBuf>,
    pub health_timeout: Duration,
    /// A fresh host: failed preflight checks to go on past.
    pub ignore_preflight: Vec<crate::preflight::Ignorable>,
}

/// The restore's steps, in order (after an install, onto a fresh host).
pub const STEPS: &[&str] = &["backup first", "stop", "restore database", "keys", "migrate", "start", "health"];

/// Restores the backup of `opts.from`: onto the installation here, or when
/// there is none, onto a fresh one installed from `prompter`'s answers with
/// the backup's keys and certificate authority.
pub fn restore(host: &Host, prompter: Option<&mut dyn Prompter>, reporter: &dyn Reporter, opts: &RestoreOptions) -> Result<Record, InstallError> {
    let from = std::path::absolute(&opts.from).map_err(InstallError::io("resolve", &opts.from))?;
    let m = backup::verify(&from)?;
    reporter.check(true, "backup", &format!("{} of release {} from {} ({}), every checksum verified", m.id, m.release, m.hostname, m.created.format("%Y-%m-%d %H:%M UTC")));
    let fresh = Installation::find(host)?.is_none();
    if fresh {
        let Some(prompter) = prompter else {
            return Err(InstallError::NotInstalled { prefix: host.prefix.clone() });
        };
        seed_keys(host, &from, &m)?;
        reporter.info("Installing the appliance with the backup's keys");
        let done = install(
            host,
            prompter,
            reporter,
            &InstallOptions {
                trust_dirs: opts.trust_dirs.clone(),
                health_timeout: opts.health_timeout,
                danger_replace_release: false,
                external_database: false,
                ignore_preflight: opts.ignore_preflight.clone(),
            },
        )?;
        reporter.info(&format!("Release {} installed; now the backup's data", done.release));
    } else if prompter.is_some() {
        return Err(InstallError::Aborted(format!(
            "{} has an installation already: restore onto it without --answers",
            host.prefix.display()
        )));
    }
    let inst = Installation::load(host)?;
    inst.require_bundled_database("a restore")?;
    let installed: semver::Version = inst.state.release.parse().map_err(|_| InstallError::State { path: inst.layout.state_file.clone(), problem: "release is not a version".into() })?;
    if let Ok(made) = m.release.parse::<semver::Version>()
        && made.cmp_precedence(&installed).is_gt()
    {
        return Err(InstallError::Backup {
            dir: from,
            problem: format!("it was made by release {made}, newer than the installed {installed}: install {made} first"),
        });
    }
    let _lock = inst.lock(Duration::from_secs(30))?;
    let dir = inst.upgrades_dir();
    crate::host::ensure_dir(&dir, 0o755, None)?;
    let now = (host.clock)();
    let mut rec = Record {
        format: record::FORMAT,
        id: format!("{}-restore", now.format("%Y%m%d-%H%M%S")),
        kind: "restore".into(),
        from: m.release.clone(),
        to: inst.state.release.clone(),
        requested_by: format!("root on {}", crate::preflight::system_hostname()),
        bundle: None,
        bundle_sha256: None,
        options: RecordOptions { trust_dirs: opts.trust_dirs.clone(), allow_downgrade: false, health_timeout_secs: opts.health_timeout.as_secs(), apply_wait_secs: 0 },
        started_at: now,
        finished_at: None,
        phase: Phase::Forward,
        checks: Vec::new(),
        steps: Vec::new(),
        backup: Some(m.id.clone()),
        stopped: Vec::new(),
        database_changed: false,
        downtime_from: None,
        downtime_secs: None,
        outcome: Outcome::Running,
        error: None,
        rollback_error: None,
        audited: false,
    };
    rec.save(&dir)?;
    for name in STEPS {
        if *name == "backup first" && fresh {
            continue;
        }
        let t = Instant::now();
        rec.steps.push(Step { name: name.to_string(), phase: Phase::Forward, started_at: (host.clock)(), finished_at: None, ok: None, detail: String::new() });
        rec.save(&dir)?;
        reporter.step_start(name, describe(name));
        let result = restore_step(&inst, name, &from, &m, &mut rec, opts);
        let step = rec.steps.last_mut().expect("pushed above");
        step.finished_at = Some((host.clock)());
        match result {
            Ok(detail) => {
                step.ok = Some(true);
                reporter.step_done(name, &detail, t.elapsed());
                step.detail = detail;
                rec.save(&dir)?;
            }
            Err(e) => {
                step.ok = Some(false);
                step.detail = chain(&e);
                reporter.step_failed(name, &chain(&e), t.elapsed());
                rec.outcome = Outcome::Failed;
                rec.error = Some(format!("{name}: {}", chain(&e)));
                rec.finished_at = Some((host.clock)());
                rec.save(&dir)?;
                return Err(e);
            }
        }
    }
    let now = (host.clock)();
    rec.outcome = Outcome::Completed;
    rec.finished_at = Some(now);
    rec.downtime_secs = rec.downtime_from.map(|f| (now - f).num_milliseconds() as f64 / 1000.0);
    rec.save(&dir)?;
    match crate::upgrade::audit(&inst, &rec) {
        Ok(()) => {
            rec.audited = true;
            rec.save(&dir)?;
        }
        Err(e) => reporter.info(&format!("warning: the audit trail could not record this restore: {}", chain(&e))),
    }
    Ok(rec)
}

fn describe(step: &str) -> &'static str {
    match step {
        "backup first" => "a backup of what is here now, in case",
        "stop" => "stopping the appliance",
        "restore database" => "the backup's database in place of this one",
        "keys" => "the master key that sealed the backup's secrets",
        "migrate" => "bringing the database up to this release",
        "start" => "starting the appliance",
        "health" => "waiting for every service to be ready",
        _ => "",
    }
}

fn restore_step(inst: &Installation, name: &str, from: &Path, m: &BackupManifest, rec: &mut Record, opts: &RestoreOptions) -> Result<String, InstallError> {
    let l = &inst.layout;
    match name {
        "backup first" => {
            let made = backup::create(inst, &format!("before restoring backup {}", m.id), "before-restore", std::slice::from_ref(&m.id))?;
            Ok(format!("backup {}", made.id))
        }
        "stop" => {
            rec.downtime_from = Some((inst.host.clock)());
            services::stop(&inst.host, l)?;
            inst.cluster()?.stop_alone()?;
            Ok("every service stopped".into())
        }
        "restore database" => {
            let cluster = inst.cluster()?;
            cluster.start_alone()?;
            rec.database_changed = true;
            let restored = cluster.restore(&from.join(&m.database.file));
            let stopped = cluster.stop_alone();
            restored?;
            stopped?;
            Ok(format!("database of backup {} restored ({} migrations applied when it was made)", m.id, m.migrations.len()))
        }
        "keys" => restore_master_key(inst, from, m),
        "migrate" => {
            let cluster = inst.cluster()?;
            cluster.start_alone()?;
            let out = run(
                Command::new(l.bin("hangar")).env_clear().env("PATH", "/usr/bin:/bin").arg("--config").arg(&l.config).arg("migrate"),
                "migrate",
            );
            let stopped = cluster.stop_alone();
            let out = out?;
            stopped?;
            Ok(out.lines().last().unwrap_or("migrated").to_string())
        }
        "start" => services::start(&inst.host, l, false),
        "health" => crate::upgrade::gate(inst, opts.health_timeout),
        _ => Ok(String::new()),
    }
}

/// The backup's master key in place of this installation's when they differ
/// (this one is kept beside it): without it the restored secrets could not be
/// opened.
fn restore_master_key(inst: &Installation, from: &Path, m: &BackupManifest) -> Result<String, InstallError> {
    let name = crate::render::MASTER_KEY;
    let Some((_, path)) = backup::files_in(from, m, "secrets").into_iter().find(|(n, _)| n == name) else {
        return Err(InstallError::Backup { dir: from.to_path_buf(), problem: format!("it holds no {name}") });
    };
    let theirs = fs::read(&path).map_err(InstallError::io("read", &path))?;
    let here = inst.layout.secret(name);
    if fs::read(&here).ok().as_deref() == Some(theirs.as_slice()) {
        return Ok(format!("{name} is the backup's"));
    }
    let kept = inst.layout.secrets.join(format!("{name}.replaced-{}", (inst.host.clock)().format("%Y%m%d-%H%M%S")));
    if here.exists() {
        fs::copy(&here, &kept).map_err(InstallError::io("keep", &kept))?;
    }
    write_atomic(&here, &theirs, 0o600, inst.owner()?)?;
    Ok(format!("{name} of the backup in place (the previous one kept as {})", kept.display()))
}

/// Onto a fresh host: the backup's secrets, certificate authority (workers'
/// certificates stay valid) and trusted bundle keys, placed before the
/// install, which keeps what it finds.
fn seed_keys(host: &Host, from: &Path, m: &BackupManifest) -> Result<(), InstallError> {
    let etc = host.path("/etc/hangar");
    for sub in ["secrets", "pki", "trust"] {
        let dest_dir = etc.join(sub);
        for (name, path) in backup::files_in(from, m, sub) {
            let dest = dest_dir.join(&name);
            let theirs = fs::read(&path).map_err(InstallError::io("read", &path))?;
            match fs::read(&dest) {
                Ok(ours) if ours == theirs => continue,
                Ok(_) => {
                    return Err(InstallError::Backup {
                        dir: from.to_path_buf(),
                        problem: format!("{} exists and differs from the backup's: restore onto a fresh prefix, or onto the installation there", dest.display()),
                    });
                }
                Err(_) => {}
            }
            let mode = match sub {
                "trust" => 0o644,
                "pki" if name.ends_with(".crt") => 0o644,
                "pki" => 0o600,
                _ => 0o600,
            };
            let dir_mode = if sub == "secrets" { 0o700 } else { 0o755 };
            let mut missing: Vec<&Path> = dest_dir.ancestors().take_while(|d| !d.exists()).collect();
            missing.reverse();
            for d in missing {
                crate::host::ensure_dir(d, if d == dest_dir { dir_mode } else { 0o755 }, None)?;
            }
            write_atomic(&dest, &theirs, mode, None)?;
        }
    }
    Ok(())
}
