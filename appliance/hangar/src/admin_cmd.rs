//! `hangar admin`: administration from the appliance host — the installer's
//! first admin user, and master-key rotation.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hangar_crypto::MasterKey;
use hangar_db::Database;
use hangar_server::admin::{self, UserOutcome};
use hangar_types::Role;

use hangar_config::Config;

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user (what the installer calls for the first admin). The password
    /// comes from a 0600 file or from standard input, never from the command line.
    #[command(group(clap::ArgGroup::new("password").required(true).args(["password_file", "password_stdin"])))]
    CreateUser {
        #[arg(long)]
        email: String,
        /// reader, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// File holding the password (mode 0600).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// If the user exists, set its role and password (and re-enable it)
        /// instead of failing.
        #[arg(long)]
        update: bool,
    },
    /// Re-wrap every data key with a new master key, in one transaction (secret
    /// values are untouched). A missing FILE is created with a fresh key (0600).
    /// Afterwards, replace the configured master key file with FILE and restart
    /// the servers.
    RotateMasterKey {
        #[arg(long)]
        new_key_file: PathBuf,
    },
    /// Make a one-time token with which one worker host joins POOL
    /// (`hangar-worker join --token`). Prints the token alone on standard output.
    CreateJoinToken {
        #[arg(long)]
        pool: String,
        /// Minutes until the token expires (at most a week).
        #[arg(long, default_value_t = 60)]
        ttl_minutes: i64,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn read_password(file: Option<&Path>, stdin: bool) -> anyhow::Result<String> {
    let raw = match (file, stdin) {
        (Some(path), _) => {
            hangar_certs::check_private_file(path)?;
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the password from standard input")?;
            s
        }
        (None, false) => bail!("give --password-file or --password-stdin"),
    };
    let password = raw.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&raw).to_string();
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

pub async fn run(cfg: &Config, args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::CreateUser { email, role, name, password_file, password_stdin, update } => {
            let password = read_password(password_file.as_deref(), password_stdin)?;
            let db = Database::from_config(&cfg.database, "hangar-admin")?;
            let mut conn = db.connect().await?;
            let outcome = admin::create_user(&mut conn, &email, &name, role, &password, update).await?;
            let verb = match outcome {
                UserOutcome::Created => "created",
                UserOutcome::Updated => "updated",
            };
            println!("{verb} user {email} ({role})");
            Ok(())
        }
        AdminCommand::CreateJoinToken { pool, ttl_minutes } => {
            let db = Database::from_config(&cfg.database, "hangar-admin")?;
            let mut conn = db.connect().await?;
            let made = hangar_server::workers::create_join_token(&mut conn, &pool, ttl_minutes, admin::CLI_ACTOR).await?;
            eprintln!("join token for pool {pool}, valid until {}", made.expires_at.to_rfc3339());
            println!("{}", made.token.expose());
            Ok(())
        }
        AdminCommand::RotateMasterKey { new_key_file } => {
            let secrets = cfg.secrets.as_ref().context("the [secrets] section is required to rotate the master key")?;
            let old = MasterKey::load(&secrets.master_key_file)?;
            let db = Database::from_config(&cfg.database, "hangar-admin")?;
            let mut conn = db.connect().await?;
            // Before any key file is written: the configured key must be the one
            // that wraps the stored data keys.
            hangar_store::secrets::SecretBox::new(old.clone()).check(&mut conn).await?;
            let new = if new_key_file.exists() {
                MasterKey::load(&new_key_file)?
            } else {
                let k = MasterKey::generate();
                k.save(&new_key_file)?;
                k
            };
            if new.id() == old.id() {
                bail!("{} holds the current master key; rotation needs a different one", new_key_file.display());
            }
            let n = admin::rotate_master_key(&mut conn, &old, &new).await?;
            println!(
                "re-wrapped {n} data key(s) with master key {}; now replace {} with {} and restart every `hangar server`",
                new.id(),
                secrets.master_key_file.display(),
                new_key_file.display()
            );
            Ok(())
        }
    }
}
