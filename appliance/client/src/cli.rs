//! The client subcommands of `hangar`: `hangar bundle upload FILE`, `list`,
//! `apply ID`, `upgrade ID`, `remove ID`. Each prints a line for people, or JSON with `--json`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::bundles::{self, Progress, UploadOptions};
use crate::{Client, ClientError, ConnectArgs};

/// `hangar bundle …`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of lines for people.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Upload a bundle into the appliance's staging area (resumes an
    /// interrupted upload of the same file).
    Upload {
        file: PathBuf,
        /// Mebibytes per request.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        chunk_mib: u64,
        /// Keep no resume record (an interrupted upload starts over).
        #[arg(long)]
        no_resume: bool,
    },
    /// List the staged bundles.
    List,
    /// Apply a staged tools bundle (its Terraform/OpenTofu versions and
    /// providers) or worker bundle (its hangar-worker, for `hangar-worker
    /// update`); applying one twice changes nothing.
    Apply { id: String },
    /// Upgrade the appliance to a staged appliance bundle: the appliance
    /// backs up, switches, migrates and checks its health, and rolls back by
    /// itself on failure.
    Upgrade {
        id: String,
        /// Follow the upgrade until it ends (the appliance stops and starts
        /// again on the way); fail unless it completed.
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 1800, value_name = "SECS")]
        timeout: u64,
    },
    /// Remove a staged bundle.
    Remove { id: String },
}

/// Runs `hangar bundle …`.
pub async fn bundle(args: BundleArgs) -> Result<(), ClientError> {
    let client = Client::new(args.connect.resolve()?)?;
    match args.command {
        BundleCommand::Upload {
            file,
            chunk_mib,
            no_resume,
        } => {
            let mut options = UploadOptions {
                chunk_bytes: chunk_mib << 20,
                ..Default::default()
            };
            if no_resume {
                options.state_dir = None;
            }
            let bar = if args.json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(0)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message("uploading");
            let mut on_progress = |p: Progress| match p {
                Progress::Start { offset, size } => {
                    bar.set_length(size);
                    bar.set_position(offset);
                    bar.reset_eta();
                }
                Progress::Sent(at) => bar.set_position(at),
                Progress::Verifying => bar.set_message("verifying"),
            };
            let result = bundles::upload(&client, &file, &options, &mut on_progress).await;
            bar.finish_and_clear();
            let staged = result?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&staged).expect("serializes")
                );
            } else {
                println!(
                    "staged {} {} {} ({} bytes, sha256 {}) as {}",
                    staged.kind,
                    staged.version,
                    staged.platform,
                    staged.size,
                    staged.sha256,
                    staged.id
                );
            }
        }
        BundleCommand::List => {
            let list = bundles::list(&client).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
            } else {
                for b in list {
                    let applied = b
                        .applied
                        .as_ref()
                        .map(|a| format!("  applied {} by {}", a.applied_at, a.applied_by))
                        .unwrap_or_default();
                    println!(
                        "{}  {:<9} {:<12} {:<14} {:>12}  {}{applied}",
                        b.id, b.kind, b.version, b.platform, b.size, b.uploaded_at
                    );
                }
            }
        }
        BundleCommand::Apply { id } => {
            let done = bundles::apply(&client, &id).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&done).expect("serializes")
                );
            } else {
                for path in &done.installed {
                    println!("installed {path}");
                }
                println!(
                    "applied {} {} {}: {} file(s) installed, {} already in place, {} skipped",
                    done.bundle.kind,
                    done.bundle.version,
                    id,
                    done.installed.len(),
                    done.unchanged.len(),
                    done.skipped.len()
                );
            }
        }
        BundleCommand::Upgrade { id, wait, timeout } => {
            let accepted = bundles::upgrade(&client, &id).await?;
            let u = &accepted.upgrade;
            if !args.json {
                println!(
                    "upgrade {} to {} asked by {}: the appliance's upgrade agent takes it up",
                    u.id, u.version, u.requested_by
                );
            }
            if !wait {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(u).expect("serializes"));
                }
                return Ok(());
            }
            let json = args.json;
            let mut on_state = |s: &bundles::UpgradeState| {
                if !json {
                    println!("{}{}", s.state, s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default());
                }
            };
            let end = bundles::wait_upgrade(&client, &id, &u.id, std::time::Duration::from_secs(timeout), &mut on_state).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&end).expect("serializes"));
            }
            if end.state != "completed" {
                return Err(ClientError::UpgradeEnded {
                    version: end.version,
                    state: end.state,
                    message: end.message.unwrap_or_default(),
                });
            }
        }
        BundleCommand::Remove { id } => {
            bundles::remove(&client, &id).await?;
            if args.json {
                println!("{}", serde_json::json!({ "removed": id }));
            } else {
                println!("removed {id}");
            }
        }
    }
    Ok(())
}
