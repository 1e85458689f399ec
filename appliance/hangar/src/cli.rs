//! Command-line interface of `hangar`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
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
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    logging::init(cli.log_format);
    let load = || Config::from_file(&cli.config);
    match cli.command {
        Command::Migrate { status } => crate::migrate_cmd::run(&load()?, status).await,
        Command::Drain => crate::background_cmd::drain(&load()?).await,
        Command::Scheduler => crate::background_cmd::scheduler(&load()?).await,
    }
}
