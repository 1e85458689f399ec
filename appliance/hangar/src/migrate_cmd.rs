//! `hangar migrate`: applies the embedded migrations and says what it did.

use anyhow::Context;
use hangar_db::{Database, migrate};

use hangar_config::Config;

pub async fn run(cfg: &Config, status_only: bool) -> anyhow::Result<()> {
    let db = Database::from_config(&cfg.database, "hangar-migrate")?;
    let known = migrate::known_versions();
    if status_only {
        let applied = migrate::applied_versions(&db)
            .await
            .with_context(|| format!("reading migration status of {}", db.target()))?;
        for v in &known {
            let mark = if applied.contains(v) { "applied" } else { "pending" };
            println!("{v}  {mark}");
        }
        return Ok(());
    }
    let applied = migrate::run_pending(&db)
        .await
        .with_context(|| format!("migrating {}", db.target()))?;
    if applied.is_empty() {
        println!("database {} is up to date ({} migrations)", db.target(), known.len());
    } else {
        println!(
            "applied {} migration(s) to {}: {}",
            applied.len(),
            db.target(),
            applied.join(", ")
        );
    }
    Ok(())
}
