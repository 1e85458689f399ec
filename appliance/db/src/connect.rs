//! Connections to PostgreSQL: always TLS, verified against the appliance CA,
//! with the password read from a 0600 file.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use futures::FutureExt;
use serde::Deserialize;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::DbError;

/// A pooled connection.
pub type PooledConn = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;
/// The connection pool every appliance process uses.
pub type DbPool = Pool<AsyncPgConnection>;

/// The `[database]` section of `hangar.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub name: String,
    pub user: String,
    /// File holding the password; must not be readable by group or others.
    pub password_file: PathBuf,
    /// CA certificate the server's certificate must chain to.
    pub ca_file: PathBuf,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_port() -> u16 {
    5432
}

fn default_pool_size() -> usize {
    16
}

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(p: impl Into<String>) -> Self {
        Password(p.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Everything needed to open connections: resolved settings and the TLS client.
#[derive(Clone)]
pub struct Database {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    target: String,
    pool_size: usize,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Resolves a `[database]` section: reads the password file (refusing loose
    /// permissions) and the CA certificate.
    pub fn from_config(cfg: &DbConfig, application: &str) -> Result<Database, DbError> {
        hangar_certs::check_private_file(&cfg.password_file).map_err(DbError::secret)?;
        let password = std::fs::read_to_string(&cfg.password_file)
            .map_err(|source| DbError::ReadFile {
                path: cfg.password_file.clone(),
                source,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string();
        let ca_pem = std::fs::read(&cfg.ca_file).map_err(|source| DbError::ReadFile {
            path: cfg.ca_file.clone(),
            source,
        })?;
        let mut db = Database::new(
            &cfg.host,
            cfg.port,
            &cfg.name,
            &cfg.user,
            Password::new(password),
            &ca_pem,
            application,
        )?;
        db.pool_size = cfg.pool_size;
        Ok(db)
    }

    /// Settings given directly (tests, the installer).
    pub fn new(
        host: &str,
        port: u16,
        dbname: &str,
        user: &str,
        password: Password,
        ca_pem: &[u8],
        application: &str,
    ) -> Result<Database, DbError> {
        let roots = hangar_certs::tls::roots_from_pem(ca_pem).map_err(DbError::secret)?;
        let client = hangar_certs::tls::client_config(roots, None).map_err(DbError::secret)?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .dbname(dbname)
            .user(user)
            .password(password.expose())
            .ssl_mode(SslMode::Require)
            .application_name(application)
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        Ok(Database {
            pg,
            tls: MakeRustlsConnect::new(client),
            target: format!("{user}@{host}:{port}/{dbname}"),
            pool_size: default_pool_size(),
        })
    }

    /// `user@host:port/db`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The same settings for another database on the same server.
    pub fn with_dbname(&self, dbname: &str) -> Database {
        let mut other = self.clone();
        other.pg.dbname(dbname);
        let (head, _) = self.target.rsplit_once('/').unwrap_or((&self.target, ""));
        other.target = format!("{head}/{dbname}");
        other
    }

    /// Opens one TLS connection.
    pub async fn connect(&self) -> Result<AsyncPgConnection, DbError> {
        self.connect_raw().await.map_err(|source| DbError::Connect {
            target: self.target.clone(),
            source,
        })
    }

    async fn connect_raw(&self) -> Result<AsyncPgConnection, ConnectionError> {
        let (client, conn) = self
            .pg
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectionError::BadConnection(hangar_types::error_chain(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, conn).await
    }

    /// A pool of `size` connections (the configured size when `None`).
    pub fn pool(&self, size: Option<usize>) -> Result<DbPool, DbError> {
        let this = Arc::new(self.clone());
        let mut cfg = ManagerConfig::<AsyncPgConnection>::default();
        // A connection whose socket closed (server restart) is detected by the pool
        // itself; no test query per checkout is needed.
        cfg.recycling_method = RecyclingMethod::Fast;
        cfg.custom_setup = Box::new(move |_url| {
            let this = this.clone();
            async move { this.connect_raw().await }.boxed()
        });
        let manager = AsyncDieselConnectionManager::new_with_config(self.target.clone(), cfg);
        Pool::builder(manager)
            .max_size(size.unwrap_or(self.pool_size))
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| DbError::Pool {
                target: self.target.clone(),
                reason: e.to_string(),
            })
    }
}

/// A connection from `pool`, queueing up to `wait` for one to be free (the
/// pool's own wait is 10 s). For callers that would rather queue than fail: a
/// fleet's claims and heartbeats arriving together wait their turn instead of
/// being answered 503 and asking again.
pub async fn connection_within(
    pool: &DbPool,
    wait: Duration,
) -> Result<PooledConn, diesel_async::pooled_connection::deadpool::PoolError> {
    let mut timeouts = pool.timeouts();
    timeouts.wait = Some(wait);
    pool.timeout_get(&timeouts).await
}
