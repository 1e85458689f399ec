//! A fresh PostgreSQL 15 cluster per test: `initdb` and `pg_ctl` as the
//! unprivileged service user, TLS with a certificate from a test CA, scram-sha-256,
//! and `hostssl` lines only (a plaintext connection is refused).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_db::{Database, Password};
use rand::Rng;

use crate::user::ServiceUser;
use crate::{TestDir, free_port};

/// How to stop the server (pg_ctl's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running PostgreSQL server. Stopped (immediate) when dropped.
#[derive(Debug)]
pub struct PgServer {
    pub port: u16,
    bin_dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pki: PathBuf,
    superuser_password: String,
    app_password: String,
    user: ServiceUser,
    running: bool,
    // Last, so the directory outlives the server during drop.
    dir: TestDir,
}

/// Where the PostgreSQL 15 server binaries are.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HANGAR_PG_BIN") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian;
    }
    panic!(
        "PostgreSQL 15 server binaries not found: install postgresql-15 \
         or set HANGAR_PG_BIN to the directory holding initdb and pg_ctl"
    );
}

fn random_secret(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Knobs for a test cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Durable writes (fsync, synchronous commit). Off by default: tests want speed;
    /// benchmarks turn it on to measure what an appliance would see.
    pub durable: bool,
    pub max_connections: u32,
    /// TLS on (the default). Off: a server that speaks only plain text, which
    /// a Hangar client must refuse; it then has no `hangar` role or database
    /// (they are made over TLS, and nothing is meant to get that far).
    pub tls: bool,
    /// `listen_addresses`: loopback addresses only (the certificate names
    /// `localhost` and `127.0.0.1`, so another address is one a verifying
    /// client must refuse).
    pub listen_addresses: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            durable: false,
            max_connections: 200,
            tls: true,
            listen_addresses: "127.0.0.1".into(),
        }
    }
}

impl PgServer {
    /// Starts a new cluster with a `hangar` database owned by a `hangar` role.
    pub async fn start() -> PgServer {
        Self::start_with(PgOptions::default()).await
    }

    pub async fn start_with(opts: PgOptions) -> PgServer {
        crate::init();
        let dir = TestDir::new("pg");
        let user = ServiceUser::get();
        let bin_dir = pg_bin_dir();
        let data = dir.path().join("data");
        let run = dir.subdir("run");
        let pki = dir.path().join("pki");
        let log = dir.path().join("postgres.log");

        // The server certificate comes from a test CA like the appliance's own.
        let store = CertStore::open_or_create(&pki, &CaOptions::default()).expect("test CA");
        store
            .ensure(
                "db",
                &LeafRequest::server("postgres", &["localhost", "127.0.0.1"]),
                time::Duration::days(1),
            )
            .expect("issue the database certificate");

        let superuser_password = random_secret(32);
        let pwfile = dir.path().join("superuser.pw");
        fs::write(&pwfile, &superuser_password).expect("write password file");
        user.chown(dir.path());

        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        user.apply(&mut initdb);
        run_ok(initdb, "initdb", &dir);
        let _ = fs::remove_file(&pwfile);

        let (fsync, sync_commit) = if opts.durable {
            ("on", "on")
        } else {
            ("off", "off")
        };
        let conf = format!(
            "\n# test cluster\n\
             listen_addresses = '{listen}'\n\
             unix_socket_directories = '{run}'\n\
             ssl = {ssl}\n\
             ssl_cert_file = '{cert}'\n\
             ssl_key_file = '{key}'\n\
             ssl_min_protocol_version = 'TLSv1.2'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = {maxc}\n\
             fsync = {fsync}\n\
             synchronous_commit = {sync_commit}\n\
             full_page_writes = {fsync}\n\
             log_min_messages = warning\n\
             log_connections = off\n",
            run = run.display(),
            cert = store.cert_path("db").display(),
            key = store.key_path("db").display(),
            maxc = opts.max_connections,
            ssl = if opts.tls { "on" } else { "off" },
            listen = opts.listen_addresses,
        );
        append(&data.join("postgresql.conf"), &conf);
        let hba = if opts.tls {
            "# Only TLS over loopback, only scram-sha-256.\n\
             local   all all                 scram-sha-256\n\
             hostssl all all 127.0.0.1/32    scram-sha-256\n\
             hostssl all all ::1/128         scram-sha-256\n"
        } else {
            "# Plain text only.\n\
             local   all all                 scram-sha-256\n\
             host    all all 127.0.0.1/32    scram-sha-256\n\
             host    all all ::1/128         scram-sha-256\n"
        };
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        user.chown(dir.path());

        let mut server = PgServer {
            port: 0,
            bin_dir,
            data,
            log,
            pki,
            superuser_password,
            app_password: random_secret(32),
            user,
            running: false,
            dir,
        };
        server.start_on_free_port();
        if opts.tls {
            server.create_app_database().await;
        }
        server
    }

    fn start_on_free_port(&mut self) {
        for attempt in 0..5 {
            self.port = free_port();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(e) if attempt < 4 => {
                    eprintln!("postgres did not start on {}: {e}; retrying", self.port)
                }
                Err(e) => panic!("postgres did not start (log: {}): {e}", self.log.display()),
            }
        }
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        self.user.apply(&mut cmd);
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server again on the same port (after `stop`).
    pub fn start_again(&mut self) {
        self.pg_ctl_start().unwrap_or_else(|e| {
            panic!(
                "postgres did not restart (log: {}): {e}",
                self.log.display()
            )
        });
    }

    /// Stops the server with pg_ctl's `mode`.
    pub fn stop(&mut self, mode: StopMode) {
        let mut cmd = Command::new(self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", mode.arg(), "stop"]);
        self.user.apply(&mut cmd);
        let out = cmd.output().expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Stops and starts again.
    pub fn restart(&mut self, mode: StopMode) {
        self.stop(mode);
        self.start_again();
    }

    async fn create_app_database(&self) {
        use diesel_async::RunQueryDsl;
        let mut conn = self
            .superuser("postgres")
            .connect()
            .await
            .expect("connect as superuser");
        diesel::sql_query(format!(
            "CREATE ROLE hangar LOGIN PASSWORD '{}'",
            self.app_password
        ))
        .execute(&mut conn)
        .await
        .expect("create role");
        diesel::sql_query("CREATE DATABASE hangar OWNER hangar")
            .execute(&mut conn)
            .await
            .expect("create database");
    }

    /// Creates another empty database owned by `hangar`, for tests that need several.
    pub async fn create_database(&self, name: &str) -> Database {
        use diesel_async::RunQueryDsl;
        let mut conn = self
            .superuser("postgres")
            .connect()
            .await
            .expect("connect as superuser");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\" OWNER hangar"))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.database().with_dbname(name)
    }

    /// The CA that issued the server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.pki.join("ca.crt")).expect("read test CA")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.pki.join("ca.crt")
    }

    /// The `hangar` database as the `hangar` role.
    pub fn database(&self) -> Database {
        Database::new(
            "127.0.0.1",
            self.port,
            "hangar",
            "hangar",
            Password::new(self.app_password.clone()),
            &self.ca_pem(),
            "hangar-test",
        )
        .expect("database settings")
    }

    /// `dbname` as the `postgres` superuser.
    pub fn superuser(&self, dbname: &str) -> Database {
        Database::new(
            "127.0.0.1",
            self.port,
            dbname,
            "postgres",
            Password::new(self.superuser_password.clone()),
            &self.ca_pem(),
            "hangar-test",
        )
        .expect("database settings")
    }

    pub fn app_password(&self) -> &str {
        &self.app_password
    }

    /// Writes a `[database]` configuration with a password file (0600) into `dir`,
    /// as a Hangar process would be given it.
    pub fn write_config(&self, dir: &Path) -> hangar_db::DbConfig {
        let password_file = dir.join("db.password");
        hangar_certs::write_private_file(&password_file, self.app_password.as_bytes())
            .expect("write password file");
        hangar_db::DbConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            name: "hangar".into(),
            user: "hangar".into(),
            password_file,
            ca_file: self.ca_path(),
            pool_size: 8,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = Command::new(self.bin_dir.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "10", "-m", "immediate", "stop"]);
            self.user.apply(&mut cmd);
            let _ = cmd.output();
        }
    }
}

fn run_ok(mut cmd: Command, what: &str, dir: &TestDir) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed in {}: {}{}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// Waits until the server accepts TLS connections as `hangar` (after a restart).
pub async fn wait_ready(db: &Database, timeout: Duration) {
    crate::wait_for("postgres to accept connections", timeout, || async {
        db.connect().await.ok().map(|_| ())
    })
    .await
}
