//! The three commands as the `hangar` binary exposes them: their arguments and
//! what each does from parsed arguments to exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::DEFAULT_SOCKET;
use crate::ctl::CtlClient;
use crate::protocol::{Request, ServiceStatus, State, now_ms};
use crate::{CtlError, Loader, ProxyConfig, ProxyError, Supervisor, SupervisorError, TlsProxy};

/// `hangar supervise`: runs the services of `[supervisor]` until SIGTERM.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Runs the appliance's services as configured in [supervisor]: starts them in dependency \
                  order once their dependencies are ready, restarts them with back-off, writes each one's \
                  output to <log_dir>/<service>.log. SIGHUP reloads the configuration and reopens the logs; \
                  SIGTERM stops everything in reverse dependency order. Under systemd use Type=notify."
)]
pub struct SuperviseArgs {}

/// `hangar ctl`: talks to a running `hangar supervise`.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The supervisor's control socket [default: supervisor.socket of the configuration].
    #[arg(long, env = "HANGAR_CTL_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Every service: state, pid, uptime, restarts, last exit, readiness.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped or FAILED service and wait until it is ready.
    Start {
        service: String,
        /// Return once the start is under way.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a service (its stop signal, then SIGKILL after its timeout); it stays down.
    Stop { service: String },
    /// Stop and start a service now, and wait until it is ready.
    Restart {
        service: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the end of a service's log.
    Tail {
        service: String,
        /// Lines to print.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what the service writes.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

/// `hangar tls-proxy`: TLS in front of a plain-TCP service (the object store).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsProxyArgs {
    /// Address to listen on (host:port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The plain-TCP service to relay to (host:port).
    #[arg(long)]
    pub to: String,
    /// Certificate chain (PEM) presented to clients.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM); must not be readable by group or others.
    #[arg(long)]
    pub key: PathBuf,
}

/// Runs the supervisor until `shutdown`; every change of `reload` re-reads the
/// configuration through `load`.
pub async fn supervise(
    _args: SuperviseArgs,
    load: Loader,
    shutdown: CancellationToken,
    mut reload: watch::Receiver<u64>,
) -> Result<(), SupervisorError> {
    let settings = load().map_err(SupervisorError::Load)?;
    let handle = Supervisor::start(settings).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = reload.changed() => {
                if changed.is_err() {
                    // No more SIGHUPs can come; keep running until told to stop.
                    shutdown.cancelled().await;
                    break;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let result = match load() {
                    Ok(s) => handle.reload(s).await,
                    Err(e) => handle.reload_failed(SupervisorError::Load(e)).await,
                };
                if let Err(SupervisorError::Gone) = result {
                    break;
                }
            }
        }
    }
    handle.shutdown();
    handle.wait().await;
    Ok(())
}

/// Runs one `hangar ctl` command; `socket_from_config` is asked only when no
/// `--socket` was given.
pub async fn ctl(
    args: CtlArgs,
    socket_from_config: impl FnOnce() -> Result<Option<PathBuf>, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(), CtlError> {
    let socket = match args.socket {
        Some(s) => s,
        None => socket_from_config()
            .map_err(CtlError::Config)?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
    };
    let client = CtlClient::new(socket);
    match args.command {
        CtlCommand::Status { json } => {
            let (services, reload_error) = client.status().await?;
            if json {
                let doc = serde_json::json!({ "services": services, "reload_error": reload_error });
                println!("{doc}");
            } else {
                print!("{}", status_table(&services, now_ms()));
                if let Some(e) = reload_error {
                    println!("last configuration reload failed: {e}");
                }
            }
        }
        CtlCommand::Start { service, no_wait } => {
            let r = client.request(Request::Start { service, wait: !no_wait }).await?;
            println!("{}", r.message.unwrap_or_default());
        }
        CtlCommand::Restart { service, no_wait } => {
            let r = client.request(Request::Restart { service, wait: !no_wait }).await?;
            println!("{}", r.message.unwrap_or_default());
        }
        CtlCommand::Stop { service } => {
            let r = client.request(Request::Stop { service }).await?;
            println!("{}", r.message.unwrap_or_default());
        }
        CtlCommand::Tail { service, lines, follow } => {
            use std::io::Write;
            client
                .tail(&service, lines, follow, |d| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(d.as_bytes());
                    let _ = out.flush();
                })
                .await?;
        }
    }
    Ok(())
}

/// `3d4h`, `2h05m`, `4m07s`, `12s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The table `hangar ctl status` prints.
pub fn status_table(services: &[ServiceStatus], now_ms: i64) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "STATE".into(),
        "PID".into(),
        "UPTIME".into(),
        "RESTARTS".into(),
        "LAST EXIT".into(),
        "DETAIL".into(),
    ]];
    for s in services {
        let running = s.pid.is_some() && !matches!(s.state, State::Stopped | State::Failed | State::Backoff);
        let uptime = match (running, s.started_at_ms) {
            (true, Some(t)) => human_duration(Duration::from_millis((now_ms - t).max(0) as u64)),
            _ => "-".into(),
        };
        let last_exit = match (s.last_exit, s.last_exit_at_ms) {
            (Some(e), Some(at)) => format!("{e}, {} ago", human_duration(Duration::from_millis((now_ms - at).max(0) as u64))),
            _ => "-".into(),
        };
        rows.push([
            s.name.clone(),
            s.state.to_string(),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime,
            s.restarts.to_string(),
            last_exit,
            s.detail.replace('\n', " "),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", r[i], w = *w));
        }
        out.push_str(&r[6]);
        out.push('\n');
    }
    out
}

/// Runs the proxy until `shutdown`; every change of `reload` re-reads the
/// certificate and key.
pub async fn tls_proxy(
    args: TlsProxyArgs,
    shutdown: CancellationToken,
    mut reload: watch::Receiver<u64>,
) -> Result<(), ProxyError> {
    let handle = TlsProxy::start(ProxyConfig::new(args.listen, args.to, args.cert, args.key)).await?;
    // On stderr for whoever started the proxy on port 0.
    eprintln!("tls-proxy listening on {}", handle.local_addr());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = reload.changed() => {
                if changed.is_err() {
                    shutdown.cancelled().await;
                    break;
                }
                match handle.reload_certificate() {
                    Ok(()) => tracing::info!("certificate reloaded"),
                    Err(e) => tracing::error!(error = %hangar_types::error_chain(&e), "certificate reload failed; keeping the previous one"),
                }
            }
        }
    }
    handle.shutdown();
    handle.wait().await;
    Ok(())
}
