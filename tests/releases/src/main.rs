//! `hangar` whose migrations end in two more for the tests of a failed
//! upgrade: the first succeeds and changes the schema and the data (so that a
//! rollback has something to undo), the second fails on purpose. Every other
//! subcommand is the real `hangar`: the test bundle carrying this binary is a
//! whole release that cannot be migrated to.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const EXTRA: EmbeddedMigrations = embed_migrations!("failing-migrations");

fn main() -> ExitCode {
    hangar_certs::tls::install_default_provider();
    let cli = hangar::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hangar: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        hangar::cli::Command::Migrate { status: false } => runtime.block_on(migrate(&cli.config)),
        _ => runtime.block_on(hangar::run(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangar: error: {}", hangar_types::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The release's real migrations, then the two of this test release, each in
/// its own transaction as `hangar migrate` runs them.
async fn migrate(config: &Path) -> anyhow::Result<()> {
    let cfg = hangar_config::Config::from_file(config)?;
    let db = hangar_db::Database::from_config(&cfg.database, "hangar-migrate")?;
    let applied = hangar_db::migrate::run_pending(&db).await?;
    println!("applied {} migration(s) of the release", applied.len());
    let conn = db.connect().await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
        conn.run_pending_migrations(EXTRA).map_err(|e| anyhow::anyhow!("migrating {}: {e}", "the test release's own migrations"))?;
        Ok(())
    })
    .await?
}
