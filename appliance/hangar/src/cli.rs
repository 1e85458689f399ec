//! Command-line interface of `hangar`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use hangar_config::{self as config, Config};
use crate::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "hangar", version, about = "The Hangar appliance: server, drain, scheduler, supervisor")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "HANGAR_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (safe to run again; concurrent runs wait).
    Migrate {
        /// Only list applied and pending migrations.
        #[arg(long)]
        status: bool,
    },
    /// Process background jobs until SIGTERM (any number may run at once).
    Drain,
    /// Fire scheduled entries until SIGTERM (any number may run; one leads).
    Scheduler,
    /// Run and watch the appliance's services (the [supervisor] section) until SIGTERM.
    Supervise(hangar_supervisor::cli::SuperviseArgs),
    /// Control a running supervisor: status, start, stop, restart, tail.
    Ctl(hangar_supervisor::cli::CtlArgs),
    /// Terminate TLS in front of a plain-TCP service (the object store).
    TlsProxy(hangar_supervisor::cli::TlsProxyArgs),
    /// Serve HTTPS on 1983 (GraphQL API, health, readiness) until SIGTERM/SIGINT.
    Server,
    /// Administration: create users (the installer's first admin), rotate the master key.
    Admin(crate::admin_cmd::AdminArgs),
    /// Bundles on an appliance, from any machine: upload (resumable), list, apply, remove.
    Bundle(hangar_client::cli::BundleArgs),
    /// Log in to an appliance with a password; the session becomes a client profile.
    Login(hangar_client::commands::LoginArgs),
    /// Stacks on an appliance: list, show.
    Stack(hangar_client::commands::StackArgs),
    /// Runs: trigger (and follow), show, confirm, discard, cancel, review, logs.
    Run(hangar_client::commands::RunArgs),
    /// A stack's environment variables: list, set, unset.
    Env(hangar_client::commands::EnvArgs),
    /// Policies: test one against the recorded inputs of past runs.
    Policy(hangar_client::commands::PolicyArgs),
    /// The private module registry: publish a version from a git tag, list, delete.
    Module(hangar_client::modules::ModuleArgs),
    /// Spaces and the roles granted in them: list, show, create, delete, grant, revoke.
    Space(hangar_client::spaces::SpaceArgs),
    /// Evaluate one policy read from standard input, under the memory limit
    /// the server or the drain that started this process set.
    #[command(hide = true)]
    PolicyEval,
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    logging::init(cli.log_format);
    let load = || Config::from_file(&cli.config);
    match cli.command {
        Command::Migrate { status } => crate::migrate_cmd::run(&load()?, status).await,
        Command::Server => crate::server_cmd::run(&load()?, &cli.config).await,
        Command::Admin(args) => crate::admin_cmd::run(&load()?, args).await,
        Command::Bundle(args) => Ok(hangar_client::cli::bundle(args).await?),
        Command::Login(args) => Ok(hangar_client::commands::login(args).await?),
        Command::Stack(args) => Ok(hangar_client::commands::stack(args).await?),
        Command::Run(args) => Ok(hangar_client::commands::run(args).await?),
        Command::Env(args) => Ok(hangar_client::commands::env(args).await?),
        Command::Policy(args) => Ok(hangar_client::commands::policy(args).await?),
        Command::Module(args) => Ok(hangar_client::modules::module(args).await?),
        Command::Space(args) => Ok(hangar_client::spaces::space(args).await?),
        Command::Drain => crate::background_cmd::drain(&load()?).await,
        // `main` serves it before any runtime starts; here only for completeness.
        Command::PolicyEval => match hangar_policy::serve_child() {
            c if c == std::process::ExitCode::SUCCESS => Ok(()),
            _ => anyhow::bail!("the policy evaluation could not answer"),
        },
        Command::Scheduler => crate::background_cmd::scheduler(&load()?).await,
        Command::Supervise(args) => {
            let path = cli.config.clone();
            let loader: hangar_supervisor::Loader = std::sync::Arc::new(move || {
                let c = Config::from_file(&path)?;
                let objects = c.objects.as_ref().map(hangar_supervisor::S3Target::from_objects);
                Ok(hangar_supervisor::Settings::new(c.supervisor, Some(c.database)).with_objects(objects))
            });
            let (stop, reload) = (crate::signals::shutdown_token(), crate::signals::reload_signal());
            Ok(hangar_supervisor::cli::supervise(args, loader, stop, reload).await?)
        }
        Command::Ctl(args) => Ok(hangar_supervisor::cli::ctl(args, || Ok(load()?.supervisor.map(|s| s.socket))).await?),
        Command::TlsProxy(args) => {
            let (stop, reload) = (crate::signals::shutdown_token(), crate::signals::reload_signal());
            Ok(hangar_supervisor::cli::tls_proxy(args, stop, reload).await?)
        }
    }
}
