//! `hangar-install status`: what is installed under the prefix, which release,
//! the services' states and whether the appliance answers `/ready`.

use std::fmt::Write;
use std::time::Duration;

use crate::error::InstallError;
use crate::host::Host;
use crate::install::current_release;
use crate::state::InstallState;
use crate::upgrade::record::{Outcome, Phase};
use crate::{health, services};

/// Upgrades in progress and past (the newest first), and the backups.
fn lifecycle(host: &Host, out: &mut String) {
    let Ok(Some(inst)) = crate::installed::Installation::find(host) else { return };
    let records = crate::upgrade::history(&inst);
    if let Some(r) = records.iter().rev().find(|r| r.outcome == Outcome::Running && r.kind == "upgrade") {
        let at = r.steps.last().map(|s| format!("{}{}", if s.phase == Phase::Rollback { "rollback: " } else { "" }, s.name)).unwrap_or_default();
        let _ = writeln!(out, "upgrade         UNFINISHED {} -> {} ({}), at {at}: run `hangar-install upgrade` to finish it", r.from, r.to, r.id);
        if let Some(e) = &r.rollback_error {
            let _ = writeln!(out, "                the rollback failed at {e}");
        }
    }
    if !records.is_empty() {
        let _ = writeln!(out, "history         (newest first)");
        for r in records.iter().rev().take(HISTORY) {
            let _ = writeln!(out, "  {}", r.summary());
            if !r.steps.is_empty() {
                let _ = writeln!(out, "      steps: {}", r.steps_line());
            }
            if let Some(e) = &r.error {
                let _ = writeln!(out, "      failed at {e}");
            }
        }
    }
    let backups = crate::backup::list(&inst);
    let settings = inst.backup_settings().unwrap_or_default();
    let schedule = match &settings.schedule {
        Some(s) => format!("scheduled {s:?} (UTC)"),
        None => "no schedule".into(),
    };
    match backups.last() {
        Some((dir, m)) => {
            let _ = writeln!(
                out,
                "backups         {} kept (at most {}), {schedule}; newest {} ({})",
                backups.len(),
                settings.retention,
                m.id,
                dir.display()
            );
        }
        None => {
            let _ = writeln!(out, "backups         none yet (at most {} kept), {schedule}", settings.retention);
        }
    }
}

/// Records of upgrades and restores shown.
const HISTORY: usize = 10;

/// The report, and whether everything is ready.
pub fn status(host: &Host) -> Result<(String, bool), InstallError> {
    let probe = host.layout(std::path::Path::new("/var/lib/hangar"));
    let state = InstallState::load(&probe.state_file)?.ok_or_else(|| InstallError::NotInstalled { prefix: host.prefix.clone() })?;
    let l = host.layout(&state.data_dir);
    let mut out = String::new();
    let _ = writeln!(out, "prefix          {}", host.prefix.display());
    let _ = writeln!(out, "release         {} (current -> {})", state.release, current_release(&l).unwrap_or_else(|| "nothing".into()));
    let _ = writeln!(
        out,
        "installation    {}",
        match state.ready_at {
            Some(t) => format!("complete, ready at {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
            None => format!("unfinished (steps done: {})", if state.completed.is_empty() { "none".into() } else { state.completed.join(", ") }),
        }
    );
    let _ = writeln!(out, "console         https://{}:{}", state.hostname, state.ports.server);
    let _ = writeln!(
        out,
        "database        {}",
        match &state.external_database {
            None => format!("bundled PostgreSQL on port {}", state.ports.database),
            Some(target) => format!("external {target} (backed up by its operator)"),
        }
    );
    let running = services::running(host, &l);
    let _ = writeln!(
        out,
        "supervisor      {}",
        match (running, services::supervisor_pid(&l)) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            (true, None) => format!("running ({})", host.unit_name()),
            (false, _) => "not running".into(),
        }
    );
    let _ = writeln!(
        out,
        "upgrade agent   {}",
        match crate::agent::pid(host, &l) {
            Some(pid) => format!("running (pid {pid}): takes the upgrades asked for from the console or the API"),
            None => "not running: upgrades from the console or the API wait for it".into(),
        }
    );
    let mut ready = running;
    if running {
        match health::ctl_status(&l) {
            Ok(s) => {
                for svc in &s.services {
                    let _ = writeln!(out, "  {:<12}  {:<9} {}", svc.name, svc.state, svc.detail);
                    ready &= svc.state == "ready";
                }
            }
            Err(e) => {
                ready = false;
                let _ = writeln!(out, "  (no status: {})", hangar_types::error_chain(&e));
            }
        }
        let ca = l.pki.join("ca.crt");
        let server = std::net::SocketAddr::new(
            if state.listen.is_unspecified() { [127, 0, 0, 1].into() } else { state.listen },
            state.ports.server,
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(InstallError::io("start a runtime for", "status"))?;
        let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), health::ready(&state.hostname, server, &ca)).await });
        let line = match r {
            Ok(Ok(_)) => "ready".to_string(),
            Ok(Err(e)) => {
                ready = false;
                format!("not ready: {e}")
            }
            Err(_) => {
                ready = false;
                "no answer in 10 s".into()
            }
        };
        let _ = writeln!(out, "/ready          {line}");
    }
    lifecycle(host, &mut out);
    let _ = writeln!(out, "overall         {}", if ready { "READY" } else { "NOT READY" });
    Ok((out, ready))
}
