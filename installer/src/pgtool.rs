//! The installed PostgreSQL cluster, driven with the current release's own
//! tools: `pg_ctl`, `psql`, `pg_dump` and `pg_restore` as the service user
//! over the cluster's unix socket, connecting as the `postgres` superuser
//! through the peer map the installer wrote. No password is involved and
//! nothing listens beyond what the cluster already does.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::InstallError;
use crate::host::{Layout, run, run_with_input, user_ids};
use crate::render::{DB_NAME, DB_ROLE};

/// The cluster of one installation.
#[derive(Debug, Clone)]
pub struct Cluster {
    layout: Layout,
    port: u16,
    /// The service user's ids when running as root; `None` when this process
    /// is the service user already (the scheduled backups).
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// The cluster of `layout`, listening on `port`, owned by `service_user`.
    /// Only root or the service user itself may drive it.
    pub fn new(layout: &Layout, port: u16, service_user: &str) -> Result<Cluster, InstallError> {
        let ids = user_ids(service_user)?
            .ok_or_else(|| InstallError::User { user: service_user.to_string(), problem: "does not exist".into() })?;
        let me = nix::unistd::geteuid().as_raw();
        let owner = if me == 0 {
            Some(ids)
        } else if me == ids.0 {
            None
        } else {
            return Err(InstallError::User {
                user: service_user.to_string(),
                problem: format!("the database is reached as root or as {service_user}, not as uid {me}"),
            });
        };
        Ok(Cluster { layout: layout.clone(), port, owner })
    }

    /// The service user's ids, when this process changes to it for the tools.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// A tool of the current release's PostgreSQL, run as the service user in
    /// a clean environment.
    pub fn command(&self, name: &str) -> Command {
        let l = &self.layout;
        let mut cmd = Command::new(l.pg_bin(name));
        cmd.env_clear()
            .env("LD_LIBRARY_PATH", l.pg_lib())
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(&l.data);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// `-h <socket dir> -p <port> -U postgres -d <db>`.
    fn connect_args(&self, db: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.layout.pg_run.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            db.into(),
        ]
    }

    /// Whether the cluster's postmaster runs (under the supervisor or not).
    pub fn running(&self) -> bool {
        run(self.command("pg_ctl").arg("status").arg("-D").arg(&self.layout.postgres), "status").is_ok()
    }

    /// Starts the cluster outside the supervisor (for migrations and restores
    /// while the appliance is stopped). Returns whether it was started now.
    /// Either way, it returns once the cluster accepts connections.
    pub fn start_alone(&self) -> Result<bool, InstallError> {
        let started = !self.running() && {
            let l = &self.layout;
            let start = run(
                self.command("pg_ctl")
                    .arg("start")
                    .arg("-D")
                    .arg(&l.postgres)
                    .arg("-l")
                    .arg(l.logs.join("postgres-install.log"))
                    .args(["-w", "-t", "120"]),
                "start",
            );
            match start {
                Ok(_) => true,
                // A start that a killed run began took the lock file first.
                Err(_) if self.running() => false,
                Err(e) => return Err(e),
            }
        };
        self.wait_accepting(Duration::from_secs(120))?;
        Ok(started)
    }

    /// Waits until the cluster answers a query: one still starting (or
    /// recovering after a kill) refuses connections for a while.
    fn wait_accepting(&self, limit: Duration) -> Result<(), InstallError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.psql("postgres", "SELECT 1", &[]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Stops a cluster started with [`Cluster::start_alone`] (fast mode).
    pub fn stop_alone(&self) -> Result<(), InstallError> {
        if !self.running() {
            return Ok(());
        }
        run(
            self.command("pg_ctl").arg("stop").arg("-D").arg(&self.layout.postgres).args(["-m", "fast", "-w", "-t", "120"]),
            "stop",
        )
        .map(|_| ())
    }

    /// Runs `sql` in `db` as the superuser; `vars` become psql variables
    /// (`:'name'` quotes one as a literal). Returns the unaligned output.
    pub fn psql(&self, db: &str, sql: &str, vars: &[(&str, &str)]) -> Result<String, InstallError> {
        let mut cmd = self.command("psql");
        cmd.args(self.connect_args(db)).args(["-v", "ON_ERROR_STOP=1", "-qAtX"]);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        // Through standard input, so that nothing of it shows on a command line.
        run_with_input(&mut cmd, "(SQL)", Some(sql.as_bytes()))
    }

    /// Runs `sql` in the appliance's database.
    pub fn query(&self, sql: &str) -> Result<String, InstallError> {
        self.psql(DB_NAME, sql, &[])
    }

    /// `pg_dump` of the appliance's database in the custom format into `out`
    /// (in a directory the service user may write).
    pub fn dump(&self, out: &Path) -> Result<(), InstallError> {
        let mut cmd = self.command("pg_dump");
        cmd.args(self.connect_args(DB_NAME)).args(["--format=custom", "--compress=6", "--file"]).arg(out);
        run(&mut cmd, "(dump the database)").map(|_| ())
    }

    /// Restores the dump `file` as the appliance's database, atomically for
    /// its readers: into a fresh database first, which then takes the name.
    /// Run again after an interruption, it ends in the same place: the old
    /// database stays until the restored one is complete.
    pub fn restore(&self, file: &Path) -> Result<(), InstallError> {
        let restore = format!("{DB_NAME}_restore");
        let before = format!("{DB_NAME}_before_restore");
        // Every other session ends first, whichever database it is in, and is
        // waited for: with the services stopped, one left is a killed run's
        // (a `CREATE DATABASE` still copying, say), which would race this run.
        let terminate = "SELECT count(pg_terminate_backend(pid, 30000)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();\n"
            .to_string();
        let exists = |name: &str| -> Result<bool, InstallError> {
            Ok(self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"), &[])?.trim() == "1")
        };
        if !exists(DB_NAME)? && exists(&before)? && exists(&restore)? {
            // Interrupted between the two renames: the restored one is whole.
            self.psql("postgres", &format!("{terminate}ALTER DATABASE {restore} RENAME TO {DB_NAME};\n"), &[])?;
        } else {
            self.psql(
                "postgres",
                &format!("{terminate}DROP DATABASE IF EXISTS {restore};\nCREATE DATABASE {restore} OWNER {DB_ROLE};\n"),
                &[],
            )?;
            let mut cmd = self.command("pg_restore");
            cmd.args(self.connect_args(&restore)).args(["--exit-on-error", "--single-transaction"]).arg(file);
            run(&mut cmd, "(restore the database)")?;
            let mut swap = terminate.clone();
            swap += &format!("DROP DATABASE IF EXISTS {before};\n");
            if exists(DB_NAME)? {
                swap += &format!("ALTER DATABASE {DB_NAME} RENAME TO {before};\n");
            }
            swap += &format!("ALTER DATABASE {restore} RENAME TO {DB_NAME};\n");
            self.psql("postgres", &swap, &[])?;
        }
        self.psql("postgres", &format!("{terminate}DROP DATABASE IF EXISTS {before};\n"), &[])?;
        Ok(())
    }

    /// The size of the appliance's database in bytes.
    pub fn database_size(&self) -> Result<u64, InstallError> {
        let out = self.query(&format!("SELECT pg_database_size('{DB_NAME}')"))?;
        out.trim().parse().map_err(|_| InstallError::Aborted(format!("unexpected database size {:?}", out.trim())))
    }

    /// The PostgreSQL server version (`15.8`, say).
    pub fn server_version(&self) -> Result<String, InstallError> {
        Ok(self.query("SHOW server_version")?.trim().to_string())
    }
}

/// Kills what is left of processes whose command line names `path` (a
/// `pg_dump` writing a backup an interrupted run began, say) and waits for
/// them to be gone.
pub fn kill_users_of(path: &Path) {
    let needle = path.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
            && pid != std::process::id() as i32
            && crate::host::process_alive(pid, &needle)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    crate::host::wait_until_unused(path, std::time::Duration::from_secs(30));
}

/// The PostgreSQL major version a release's binaries are (from their
/// directory `embedded/postgres/usr/lib/postgresql/<major>`).
pub fn release_major(release: &Path) -> Option<String> {
    let dir = release.join("embedded/postgres/usr/lib/postgresql");
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n.parse::<u32>().is_ok())
}

/// The PostgreSQL major version of the cluster's data directory.
pub fn cluster_major(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("PG_VERSION")).ok().map(|s| s.trim().to_string())
}
