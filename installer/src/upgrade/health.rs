//! Health of an installed appliance, for the pre-checks and the gate after an
//! upgrade or a rollback: every supervised service ready, `/ready` answering
//! over TLS trusting only the appliance CA, and the broker's TLS handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::error::InstallError;
use hangar_types::error_chain as chain;
use crate::health::{broker_handshake, ctl_status, ready};
use crate::installed::Installation;

/// Where this host reaches a service of `inst` listening on `port`.
fn local(inst: &Installation, port: u16) -> SocketAddr {
    let listen = inst.state.listen;
    let ip = if listen.is_unspecified() {
        if listen.is_ipv4() { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from(std::net::Ipv6Addr::LOCALHOST) }
    } else {
        listen
    };
    SocketAddr::new(ip, port)
}

/// A console certificate the operator provided is not the appliance CA's:
/// its readiness is then the supervisor's own `/ready` check.
fn appliance_ca_serves_console(inst: &Installation) -> bool {
    !inst.layout.pki.join("console-provided.crt").exists()
}

/// The services now: how many, when every one is ready and `/ready` answers.
pub fn services_ready(inst: &Installation) -> Result<usize, String> {
    let l = &inst.layout;
    let status = ctl_status(l).map_err(|e| chain(&e))?;
    let waiting: Vec<String> = status.services.iter().filter(|s| s.state != "ready").map(|s| format!("{} {}", s.name, s.state)).collect();
    if status.services.is_empty() {
        return Err("the supervisor runs no service".into());
    }
    if !waiting.is_empty() {
        return Err(format!("not every service is ready: {}", waiting.join(", ")));
    }
    if appliance_ca_serves_console(inst) {
        let rt = runtime().map_err(|e| chain(&e))?;
        rt.block_on(ready(&inst.state.hostname, local(inst, inst.state.ports.server), &l.pki.join("ca.crt")))?;
    }
    Ok(status.services.len())
}

fn runtime() -> Result<tokio::runtime::Runtime, InstallError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(InstallError::io("start a runtime for", "the health gate"))
}

/// Waits until the appliance is healthy, or fails with what is not after
/// `timeout` (at once when a service is FAILED).
pub fn gate(inst: &Installation, timeout: Duration) -> Result<String, InstallError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let l = &inst.layout;
    let mut last;
    loop {
        match ctl_status(l) {
            Ok(s) => {
                if let Some(failed) = s.services.iter().find(|x| x.state == "failed") {
                    return Err(InstallError::Health {
                        what: format!("service {}", failed.name),
                        secs: started.elapsed().as_secs(),
                        detail: format!("FAILED: {} (log {})", failed.detail, l.logs.join(format!("{}.log", failed.name)).display()),
                    });
                }
                let waiting: Vec<String> =
                    s.services.iter().filter(|x| x.state != "ready").map(|x| format!("{} {} ({})", x.name, x.state, x.detail)).collect();
                if waiting.is_empty() && !s.services.is_empty() {
                    break;
                }
                last = waiting.join(", ");
            }
            Err(e) => last = chain(&e),
        }
        if Instant::now() > deadline {
            return Err(InstallError::Health { what: "the services".into(), secs: timeout.as_secs(), detail: last });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rt = runtime()?;
    let ca = l.pki.join("ca.crt");
    if appliance_ca_serves_console(inst) {
        let server = local(inst, inst.state.ports.server);
        loop {
            match rt.block_on(ready(&inst.state.hostname, server, &ca)) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(InstallError::Health { what: "/ready".into(), secs: timeout.as_secs(), detail: e });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    let broker = local(inst, inst.state.ports.broker);
    rt.block_on(broker_handshake(&inst.state.hostname, broker, &ca))
        .map_err(|detail| InstallError::Health { what: format!("the broker on {broker}"), secs: timeout.as_secs(), detail })?;
    Ok(format!("every service ready, /ready answered, broker handshake done ({:.1} s)", started.elapsed().as_secs_f64()))
}
