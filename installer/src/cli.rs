//! The command line of `hangar-install` and what each command does from
//! parsed arguments to exit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::InstallError;
use crate::host::{DEFAULT_SERVICE_USER, Host};
use crate::install::{InstallOptions, install};
use crate::prompt::{FilePrompter, TtyPrompter};
use crate::report::{LineReporter, Reporter, TuiReporter};

#[derive(Debug, Parser)]
#[command(
    name = "hangar-install",
    version,
    about = "Installs a Hangar appliance on this host from a signed offline bundle",
    long_about = "Installs a Hangar appliance on this host from a signed offline bundle: preflight checks, \
                  the bundle's verification, questions (or an answers file), then PostgreSQL, the object \
                  store, certificates, configuration, the administrator and the supervisor, and a health \
                  gate. Run it again at any time: it resumes, repairs or upgrades, and never clobbers data."
)]
pub struct Cli {
    /// Root under which everything is installed.
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    pub prefix: PathBuf,
    /// The unprivileged account services run as.
    #[arg(long, global = true, default_value = DEFAULT_SERVICE_USER, value_name = "USER")]
    pub service_user: String,
    /// Start the supervisor directly even when systemd runs the host.
    #[arg(long, global = true)]
    pub no_systemd: bool,
    #[command(flatten)]
    pub install: InstallArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Take every answer from this TOML file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE")]
    pub answers: Option<PathBuf>,
    /// Also trust the bundle signing keys (*.pub) in this directory.
    #[arg(long, value_name = "DIR")]
    pub trust: Vec<PathBuf>,
    /// Seconds the health gate waits for the appliance.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub health_timeout: u64,
    /// Print the time of each step at the end.
    #[arg(long)]
    pub timings: bool,
    /// Accept a different bundle of a version already on this host (a rebuild
    /// of it, or other build metadata such as 1.0.0+dev) and replace that
    /// release's files. For development builds only: otherwise a replayed old
    /// bundle of the version could swap its binaries.
    #[arg(long)]
    pub danger_replace_release: bool,
    /// Go on past this failed preflight check, reported as a warning (a test
    /// or trial host smaller than the stated minimums). Repeat for several.
    #[arg(long, value_enum, value_name = "CHECK")]
    pub ignore_preflight: Vec<crate::preflight::Ignorable>,
}

/// `hangar-install upgrade`.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The new release's appliance bundle. Without it, an unfinished upgrade
    /// (interrupted, or whose rollback failed) is taken up where it stopped.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Also trust the bundle signing keys (*.pub) in this directory.
    #[arg(long, value_name = "DIR")]
    pub trust: Vec<PathBuf>,
    /// Accept a bundle older than the installed release.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Who asked for the upgrade, for its history and the audit trail (the
    /// appliance passes the user who asked through the API).
    #[arg(long, value_name = "WHO")]
    pub requested_by: Option<String>,
    /// Seconds the health gate waits for the appliance (after the upgrade, or
    /// after a rollback).
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub health_timeout: u64,
    /// Seconds to wait for runs applying to finish before refusing (an apply
    /// is never interrupted).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub apply_wait: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install, repair or upgrade (the default).
    Install(InstallArgs),
    /// What is installed, which release, the services' states, ready or not.
    Status,
    /// Upgrade to a newer release: pre-checks, a backup, the switch, migrations
    /// and a health gate; any failure after the backup rolls back by itself.
    Upgrade(UpgradeArgs),
    /// Back up the database, the configuration and the keys now (the appliance
    /// keeps running).
    Backup {
        /// Run the scheduled backups of etc/hangar/backup.toml until SIGTERM
        /// (what the supervised `backups` service does).
        #[arg(long)]
        scheduled: bool,
    },
    /// Restore a backup: onto this installation, or onto a fresh host (with
    /// the appliance bundle and answers, as for an install).
    Restore {
        /// The backup's directory (with its manifest.json).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// A fresh host: take the install's answers from this file.
        #[arg(long, value_name = "FILE")]
        answers: Option<PathBuf>,
        /// Also trust the bundle signing keys (*.pub) in this directory.
        #[arg(long, value_name = "DIR")]
        trust: Vec<PathBuf>,
        /// Seconds the health gate waits for the appliance.
        #[arg(long, default_value_t = 180, value_name = "SECS")]
        health_timeout: u64,
        /// A fresh host: go on past this failed preflight check (as for an
        /// install).
        #[arg(long, value_enum, value_name = "CHECK")]
        ignore_preflight: Vec<crate::preflight::Ignorable>,
    },
    /// Stop everything and remove the unit, the releases and the configuration.
    Uninstall {
        /// Also remove the data directory, the secrets and the certificates.
        #[arg(long)]
        purge_data: bool,
    },
    /// Carry out the upgrades asked for from the console or the API, as root,
    /// until killed (the installer runs it as a service beside the appliance).
    UpgradeAgent,
    /// Logs and configuration in one .tar.gz, every secret value redacted.
    SupportBundle {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// How a command ended.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Failed(InstallError),
    /// Ran, and has a negative answer (status: not ready).
    Negative,
}

impl From<InstallError> for Failure {
    fn from(e: InstallError) -> Self {
        Failure::Failed(e)
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    if !cli.prefix.is_absolute() {
        return Err(Failure::Usage(format!("--prefix {} must be an absolute path", cli.prefix.display())));
    }
    let host = Host::detect(&cli.prefix, &cli.service_user, cli.no_systemd);
    if cli.command.as_ref().is_some_and(|c| !matches!(c, Command::Install(_))) && cli.install.answers.is_some() {
        return Err(Failure::Usage("--answers belongs to install, not to this command".into()));
    }
    match cli.command {
        None => run_install(&host, cli.install),
        Some(Command::Install(args)) => run_install(&host, args),
        Some(Command::Status) => {
            let (text, ready) = crate::status::status(&host)?;
            print!("{text}");
            if ready { Ok(()) } else { Err(Failure::Negative) }
        }
        Some(Command::Upgrade(args)) => run_upgrade(&host, args),
        Some(Command::Backup { scheduled: false }) => {
            let m = crate::lifecycle::backup_now(&host)?;
            println!("backup {} of release {} ({} files, {} objects referenced)", m.0.id, m.0.release, m.0.files.len(), m.0.objects.referenced);
            println!("  {}", m.1.display());
            Ok(())
        }
        Some(Command::Backup { scheduled: true }) => Ok(crate::lifecycle::scheduled_backups(&host)?),
        Some(Command::Restore { from, answers, trust, health_timeout, ignore_preflight }) => {
            let opts = crate::lifecycle::RestoreOptions { from, trust_dirs: trust, health_timeout: Duration::from_secs(health_timeout), ignore_preflight };
            run_restore(&host, answers, opts)
        }
        Some(Command::Uninstall { purge_data }) => {
            for line in crate::uninstall::uninstall(&host, purge_data)? {
                println!("{line}");
            }
            Ok(())
        }
        Some(Command::UpgradeAgent) => Ok(crate::agent::run_agent(&host)?),
        Some(Command::SupportBundle { out }) => {
            let files = crate::support::support_bundle(&host, &out)?;
            println!("wrote {} ({} files, secrets redacted)", out.display(), files.len());
            Ok(())
        }
    }
}

fn reporter() -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() { Box::new(TuiReporter::default()) } else { Box::new(LineReporter::default()) }
}

fn run_upgrade(host: &Host, args: UpgradeArgs) -> Result<(), Failure> {
    let opts = crate::upgrade::UpgradeOptions {
        bundle: args.bundle,
        trust_dirs: args.trust,
        allow_downgrade: args.allow_downgrade,
        requested_by: args.requested_by,
        health_timeout: Duration::from_secs(args.health_timeout),
        apply_wait: Duration::from_secs(args.apply_wait),
    };
    let reporter = reporter();
    let rec = crate::upgrade::upgrade(host, reporter.as_ref(), &opts)?;
    reporter.info(&format!(
        "\nHangar {} is ready: upgraded from {} ({}).\n  backup          {}\n  downtime        {:.1} s\n  steps           {}\n",
        rec.to,
        rec.from,
        rec.id,
        rec.backup.as_deref().unwrap_or("none"),
        rec.downtime_secs.unwrap_or(0.0),
        rec.steps_line(),
    ));
    Ok(())
}

fn run_restore(host: &Host, answers: Option<PathBuf>, opts: crate::lifecycle::RestoreOptions) -> Result<(), Failure> {
    let reporter = reporter();
    let rec = match answers {
        Some(path) => {
            let mut prompter = FilePrompter::load(&path)?;
            crate::lifecycle::restore(host, Some(&mut prompter), reporter.as_ref(), &opts)?
        }
        None if crate::installed::Installation::find(host)?.is_some() => crate::lifecycle::restore(host, None, reporter.as_ref(), &opts)?,
        None if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
            let mut prompter = TtyPrompter::default();
            crate::lifecycle::restore(host, Some(&mut prompter), reporter.as_ref(), &opts)?
        }
        None => return Err(Failure::Usage("no installation here and no terminal to ask on: give --answers FILE".into())),
    };
    reporter.info(&format!("\nRestored backup {} onto release {}: the appliance is ready ({}).\n", rec.backup.as_deref().unwrap_or("?"), rec.to, rec.steps_line()));
    Ok(())
}

fn run_install(host: &Host, args: InstallArgs) -> Result<(), Failure> {
    if let Some(rec) = crate::upgrade::unfinished(host)? {
        return Err(Failure::Failed(InstallError::Aborted(format!(
            "the upgrade from {} to {} is unfinished: run `hangar-install upgrade` to finish it first",
            rec.from, rec.to
        ))));
    }
    let opts = InstallOptions {
        trust_dirs: args.trust.clone(),
        health_timeout: Duration::from_secs(args.health_timeout),
        danger_replace_release: args.danger_replace_release,
        external_database: true,
        ignore_preflight: args.ignore_preflight.clone(),
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let result = match &args.answers {
        Some(path) => {
            let mut prompter = FilePrompter::load(path)?;
            let reporter = LineReporter::default();
            install(host, &mut prompter, &reporter, &opts).map(|i| (i, Box::new(reporter) as Box<dyn Reporter>))
        }
        None if terminal => {
            let mut prompter = TtyPrompter::default();
            let reporter = TuiReporter::default();
            install(host, &mut prompter, &reporter, &opts).map(|i| (i, Box::new(reporter) as Box<dyn Reporter>))
        }
        None => return Err(Failure::Usage("no terminal to ask on: give --answers FILE".into())),
    };
    let (done, reporter) = result?;
    let mut text = format!(
        "\nHangar {} is ready.\n\n  console         {}\n  administrator   {} (the password you chose)\n  appliance CA    {}\n  CA SHA-256      {}\n\n\
         Join a worker host (hangar-worker is in {}/bin of the release): sign in to the console,\n\
         open Worker pools, create a pool and a join token; the page shows the command to run on\n\
         the worker host with a copy of the CA certificate:\n\n  hangar-worker join --server {} --ca ca.crt --token JOIN_TOKEN\n",
        done.release,
        done.console_url,
        done.admin_email,
        done.ca_file.display(),
        done.ca_fingerprint,
        host.path("/opt/hangar/current").display(),
        done.console_url,
    );
    if args.timings {
        text += "\nTimings:\n";
        for (step, took) in &done.timings {
            text += &format!("  {step:<14} {:>7.2} s\n", took.as_secs_f64());
        }
    }
    reporter.info(&text);
    Ok(())
}
