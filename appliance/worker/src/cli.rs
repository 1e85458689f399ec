//! The command line of `hangar-worker`: `join`, `run`, `status` and `update`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_CONFIG_DIR, WorkerConfig};
use crate::identity::Identity;
use crate::join::{JoinOptions, join};

#[derive(Debug, Parser)]
#[command(
    name = "hangar-worker",
    version,
    about = "Hangar's worker host: joins a pool and runs Terraform/OpenTofu for the appliance"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join a worker pool with a one-time join token and write this worker's identity.
    Join {
        /// The appliance, `https://HOST:1983`.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The one-time join token.
        #[arg(
            long,
            value_name = "JOIN_TOKEN",
            conflicts_with = "token_file",
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// A file holding the join token (instead of --token).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The appliance CA certificate (PEM): the only certificate trusted for the join.
        #[arg(long, value_name = "CA.pem")]
        ca: PathBuf,
        /// A name for operators (default: the host name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// Replace an identity already in the config directory.
        #[arg(long)]
        force: bool,
        /// How the worker learns of work: `mqtt` (the appliance's broker on
        /// 1984) or `http` (a long poll over HTTPS only, e.g. through a proxy).
        #[arg(long, value_enum, default_value = "mqtt")]
        transport: TransportArg,
    },
    /// Connect to the appliance and run what the pool is given, until SIGTERM.
    Run {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Show this worker's identity and whether the server and broker are reachable.
    Status {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Replace this hangar-worker binary with the one the appliance serves
    /// (applied from a worker bundle), checked against its SHA-256; restart
    /// the worker afterwards to run it.
    Update {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The version to install [default: the highest the appliance serves].
        #[arg(long)]
        version: Option<String>,
        /// The binary to replace [default: this one].
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
    },
}

/// `--transport`, as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    Mqtt,
    Http,
}

impl From<TransportArg> for hangar_types::worker::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Mqtt => hangar_types::worker::Transport::Mqtt,
            TransportArg::Http => hangar_types::worker::Transport::Http,
        }
    }
}

/// Failures of a command, each one line at the top.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Join(#[from] crate::join::JoinError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Update(#[from] crate::update::UpdateError),
    #[error("cannot tell where this binary is")]
    CurrentExe {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the join token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers")]
    Signals {
        #[source]
        source: std::io::Error,
    },
}

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Join {
            server,
            token,
            token_file,
            ca,
            name,
            config_dir,
            force,
            transport,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|source| CliError::TokenFile { path, source })?
                    .trim()
                    .to_string(),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let joined = join(&JoinOptions {
                server,
                token,
                ca,
                name,
                config_dir,
                force,
                transport: transport.into(),
            })
            .await?;
            println!(
                "joined pool {} as worker {}; identity written to {}",
                joined.pool_name,
                joined.worker_id,
                joined.config_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config_dir } => {
            let cfg = WorkerConfig::load(&config_dir)?;
            let identity = Identity::load(&cfg)?;
            let stop = CancellationToken::new();
            spawn_signal_handler(stop.clone())?;
            crate::agent::run(cfg, identity, stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config_dir } => {
            let cfg = WorkerConfig::load(&config_dir)?;
            let identity = Identity::load(&cfg)?;
            let (report, ok) = crate::status::status(&cfg, &identity).await;
            print!("{report}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Update {
            config_dir,
            version,
            binary,
        } => {
            let cfg = WorkerConfig::load(&config_dir)?;
            let identity = Identity::load(&cfg)?;
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().map_err(|source| CliError::CurrentExe { source })?,
            };
            let done = crate::update::update(&cfg, &identity, version.as_deref(), &binary).await?;
            if done.changed {
                println!(
                    "updated {} to hangar-worker {} (sha256 {}); restart the worker to run it",
                    done.path.display(),
                    done.version,
                    done.sha256
                );
            } else {
                println!(
                    "{} is hangar-worker {} already (sha256 {})",
                    done.path.display(),
                    done.version,
                    done.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SIGTERM and SIGINT ask the worker to stop (an apply in progress finishes first).
fn spawn_signal_handler(stop: CancellationToken) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|source| CliError::Signals { source })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| CliError::Signals { source })?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested");
        stop.cancel();
    });
    Ok(())
}
