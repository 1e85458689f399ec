//! `hangar-install status`: what is installed under the prefix, which release,
//! the services' states and whether the appliance answers `/ready`.

use std::fmt::Write;
use std::time::Duration;

use crate::error::InstallError;
use crate::host::Host;
use crate::install::current_release;
use crate::state::InstallState;
use crate::{health, services};

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
    let _ = writeln!(out, "overall         {}", if ready { "READY" } else { "NOT READY" });
    Ok((out, ready))
}
