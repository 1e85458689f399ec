//! The health gate: the installation counts as done only when `/ready` answers
//! over TLS trusting only the appliance's CA, the broker completes a TLS
//! handshake, and the supervisor reports every service ready.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::answers::Answers;
use crate::error::InstallError;
use crate::host::{Host, Layout, run};

#[derive(Debug, Deserialize)]
pub struct CtlStatus {
    pub services: Vec<ServiceLine>,
}

#[derive(Debug, Deserialize)]
pub struct ServiceLine {
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub detail: String,
}

/// `hangar ctl status --json` of the current release.
pub fn ctl_status(l: &Layout) -> Result<CtlStatus, InstallError> {
    let out = run(
        Command::new(l.bin("hangar")).env_clear().arg("--config").arg(&l.config).args(["ctl", "status", "--json"]),
        "ctl status",
    )?;
    serde_json::from_str(&out).map_err(|e| InstallError::Health { what: "the supervisor".into(), secs: 0, detail: format!("unreadable status: {e}") })
}

/// The CA a client of the console must trust.
pub fn console_ca(answers: &Answers, l: &Layout) -> PathBuf {
    match &answers.tls {
        Some(t) => t.ca_file.clone().unwrap_or_else(|| crate::render::server_cert(answers, l).0),
        None => l.pki.join("ca.crt"),
    }
}

/// GET `/ready` at `addr`, presenting `hostname`, trusting only `ca`.
pub async fn ready(hostname: &str, addr: std::net::SocketAddr, ca: &Path) -> Result<serde_json::Value, String> {
    let cfg = crate::tls::client_config(ca)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .resolve(hostname, addr)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("https://{hostname}:{}/ready", addr.port());
    let resp = client.get(&url).send().await.map_err(|e| hangar_types::error_chain(&e))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() { Ok(body) } else { Err(format!("{url} answered {status}: {body}")) }
}

/// A TLS handshake with the broker, trusting only `ca`.
pub async fn broker_handshake(hostname: &str, addr: std::net::SocketAddr, ca: &Path) -> Result<(), String> {
    let cfg = crate::tls::client_config(ca)?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(hostname.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub fn gate(answers: &Answers, l: &Layout, host: &Host, timeout: Duration) -> Result<String, InstallError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let secs = timeout.as_secs();
    // Every supervised service ready.
    let mut last;
    loop {
        host.check_interrupt("health")?;
        match ctl_status(l) {
            Ok(s) => {
                let waiting: Vec<String> = s.services.iter().filter(|x| x.state != "ready").map(|x| format!("{} {} ({})", x.name, x.state, x.detail)).collect();
                if waiting.is_empty() && !s.services.is_empty() {
                    break;
                }
                if let Some(failed) = s.services.iter().find(|x| x.state == "failed") {
                    return Err(InstallError::Health {
                        what: format!("service {}", failed.name),
                        secs: started.elapsed().as_secs(),
                        detail: format!("FAILED: {} (log {})", failed.detail, l.logs.join(format!("{}.log", failed.name)).display()),
                    });
                }
                last = waiting.join(", ");
            }
            Err(e) => last = hangar_types::error_chain(&e),
        }
        if Instant::now() > deadline {
            return Err(InstallError::Health { what: "the services".into(), secs, detail: last });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(InstallError::io("start a runtime for", "the health gate"))?;
    let ca = console_ca(answers, l);
    let server = answers.local_addr(answers.ports.server);
    loop {
        host.check_interrupt("health")?;
        match rt.block_on(ready(&answers.hostname, server, &ca)) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(InstallError::Health { what: "/ready".into(), secs, detail: e }),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    let broker = answers.local_addr(answers.ports.broker);
    rt.block_on(broker_handshake(&answers.hostname, broker, &l.pki.join("ca.crt")))
        .map_err(|detail| InstallError::Health { what: format!("the broker on {broker}"), secs, detail })?;
    Ok("every service ready, /ready answered, broker handshake done".into())
}
