//! Embedded, append-only migrations from the workspace's `migrations/` folder.

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{Database, DbError};

/// Every migration, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key held while migrating, so two processes starting at once do
/// not race (any 64-bit constant unique to this purpose).
const MIGRATION_LOCK: i64 = 0x4841_4e47_4152_0001;

/// The versions of all embedded migrations, oldest first.
pub fn known_versions() -> Vec<String> {
    let migrations: Vec<Box<dyn Migration<Pg>>> =
        MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap_or_default();
    migrations.iter().map(|m| m.name().version().to_string()).collect()
}

/// Applies every pending migration and returns the versions applied now.
pub async fn run_pending(db: &Database) -> Result<Vec<String>, DbError> {
    run_up_to(db, None).await
}

/// Applies pending migrations up to and including `last` (every one when `None`).
/// Used by tests to build a database at each earlier version.
pub async fn run_up_to(db: &Database, last: Option<&str>) -> Result<Vec<String>, DbError> {
    let conn = db.connect().await?;
    let last = last.map(str::to_owned);
    tokio::task::spawn_blocking(move || -> Result<Vec<String>, DbError> {
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
        use diesel::RunQueryDsl;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)?;
        let result = (|| {
            let mut applied = Vec::new();
            loop {
                let pending = conn.pending_migrations(MIGRATIONS).map_err(DbError::Migration)?;
                let Some(next) = pending.first() else { break };
                let version = next.name().version().to_string();
                if last.as_ref().is_some_and(|last| version.as_str() > last.as_str()) {
                    break;
                }
                conn.run_migration(next.as_ref()).map_err(DbError::Migration)?;
                applied.push(version);
            }
            Ok(applied)
        })();
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn)?;
        result
    })
    .await?
}

/// Versions recorded as applied in the database, oldest first.
pub async fn applied_versions(db: &Database) -> Result<Vec<String>, DbError> {
    let conn = db.connect().await?;
    tokio::task::spawn_blocking(move || -> Result<Vec<String>, DbError> {
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
        let mut v: Vec<String> = conn
            .applied_migrations()
            .map_err(DbError::Migration)?
            .into_iter()
            .map(|v| v.to_string())
            .collect();
        v.sort();
        Ok(v)
    })
    .await?
}
