//! Readiness checks: a child counts as ready only when it answers a real request
//! of its own protocol — a query over TLS for PostgreSQL, a signed S3 request for
//! the object store, an HTTPS GET for the server — or a TCP connect or a command.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use hangar_types::error_chain;

use crate::config::{ReadyCheck, RunAs, S3Target};
use crate::reaper::{self, Launch, Reaper};

/// Time one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one service's check; cheap to clone into a task.
#[derive(Debug, Clone)]
pub struct Checker {
    check: Arc<ReadyCheck>,
    run_as: Arc<RunAs>,
    reaper: Reaper,
}

impl Checker {
    pub fn new(check: &ReadyCheck, run_as: &RunAs, reaper: Reaper) -> Checker {
        Checker {
            check: Arc::new(check.clone()),
            run_as: Arc::new(run_as.clone()),
            reaper,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(*self.check, ReadyCheck::None)
    }

    /// One attempt: `Ok(detail)` when the child answered, `Err(detail)` otherwise.
    pub async fn check(self, pid: i32) -> Result<String, String> {
        let fut = async {
            match &*self.check {
                ReadyCheck::None => Ok("running (no readiness check)".to_string()),
                ReadyCheck::Postgres(db) => postgres(db).await,
                ReadyCheck::S3(t) => s3(t).await,
                ReadyCheck::Https { url, ca_file } => https(url, ca_file).await,
                ReadyCheck::Tcp { address } => tcp(address).await,
                ReadyCheck::Heartbeat {
                    database,
                    process,
                    max_age,
                } => heartbeat(database, process, pid, *max_age).await,
                ReadyCheck::Exec { command, args } => self.exec(command, args).await,
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("{} check timed out after {ATTEMPT_TIMEOUT:?}", self.check.kind())),
        }
    }

    async fn exec(&self, command: &Path, args: &[String]) -> Result<String, String> {
        let env = Default::default();
        let working_dir = if self.run_as.home.is_dir() { self.run_as.home.as_path() } else { Path::new("/") };
        let mut cmd = reaper::command(Launch {
            program: command,
            args,
            env: &env,
            working_dir,
            run_as: &self.run_as,
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        });
        let spawned = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot run {}: {e}", command.display()))?;
        let pid = spawned.pid;
        // A check that overruns its attempt must not linger: kill its group on drop.
        struct KillOnDrop(i32, bool);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                if !self.1 {
                    reaper::signal_group(self.0, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let mut guard = KillOnDrop(pid, false);
        let exit = spawned.exit.await.map_err(|_| "the check command vanished".to_string())?;
        guard.1 = true;
        reaper::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        if exit.code == Some(0) {
            Ok(format!("{} exited 0", command.display()))
        } else {
            Err(format!("{} {exit}", command.display()))
        }
    }
}

async fn postgres(cfg: &hangar_db::DbConfig) -> Result<String, String> {
    let db = hangar_db::Database::from_config(cfg, "hangar-supervise").map_err(|e| error_chain(&e))?;
    let mut conn = db.connect().await.map_err(|e| error_chain(&e))?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("SELECT 1 on {}: {}", db.target(), error_chain(&e)))?;
    Ok(format!("SELECT 1 on {} over TLS", db.target()))
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// A fresh heartbeat row of this very child (same host, same pid).
async fn heartbeat(cfg: &hangar_db::DbConfig, process: &str, pid: i32, max_age: Duration) -> Result<String, String> {
    use diesel::sql_types::{Double, Integer, Text};
    let db = hangar_db::Database::from_config(cfg, "hangar-supervise").map_err(|e| error_chain(&e))?;
    let mut conn = db.connect().await.map_err(|e| error_chain(&e))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let Count { n } = diesel::sql_query(
        "SELECT count(*) AS n FROM processes WHERE kind = $1 AND pid = $2 AND hostname = $3 \
         AND last_seen_at > now() - make_interval(secs => $4)",
    )
    .bind::<Text, _>(process)
    .bind::<Integer, _>(pid)
    .bind::<Text, _>(&host)
    .bind::<Double, _>(max_age.as_secs_f64())
    .get_result(&mut conn)
    .await
    .map_err(|e| format!("reading heartbeats on {}: {}", db.target(), error_chain(&e)))?;
    if n > 0 {
        Ok(format!("{process} heartbeat of pid {pid} is fresh"))
    } else {
        Err(format!("no {process} heartbeat from pid {pid} in the last {}s", max_age.as_secs()))
    }
}

/// Splits an endpoint into (https?, the Host header value, the bucket URL).
pub fn s3_url(t: &S3Target) -> Result<(bool, String, String), String> {
    let (tls, rest) = if let Some(r) = t.endpoint.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = t.endpoint.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{:?} is not an http:// or https:// URL", t.endpoint));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('@') || host.contains('?') {
        return Err(format!("{:?} must be scheme://host[:port] with no path", t.endpoint));
    }
    if t.bucket.is_empty() {
        return Err("the bucket name is empty".into());
    }
    let path = format!("/{}", crate::sigv4::encode_segment(&t.bucket));
    let scheme = if tls { "https" } else { "http" };
    Ok((tls, host.to_string(), format!("{scheme}://{host}{path}")))
}

fn read_secret(path: &Path) -> Result<String, String> {
    hangar_certs::check_private_file(path).map_err(|e| error_chain(&e))?;
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn tls_client(ca_file: &Path) -> Result<reqwest::Client, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let roots = hangar_certs::tls::roots_from_pem(&pem).map_err(|e| format!("{}: {}", ca_file.display(), error_chain(&e)))?;
    let config = hangar_certs::tls::client_config(roots, None).map_err(|e| error_chain(&e))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .map_err(|e| error_chain(&e))
}

async fn s3(t: &S3Target) -> Result<String, String> {
    let (tls, host, url) = s3_url(t)?;
    let access_key = read_secret(&t.access_key_file)?;
    let secret_key = read_secret(&t.secret_key_file)?;
    let client = match (&t.ca_file, tls) {
        (Some(ca), true) => tls_client(ca)?,
        (None, true) => return Err("an https endpoint needs ca_file".into()),
        (_, false) => reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| error_chain(&e))?,
    };
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let path = format!("/{}", crate::sigv4::encode_segment(&t.bucket));
    let auth = crate::sigv4::authorization(&crate::sigv4::Request {
        method: "HEAD",
        host: &host,
        path: &path,
        region: &t.region,
        access_key: &access_key,
        secret_key: &secret_key,
        amz_date: &amz_date,
    });
    let resp = client
        .head(&url)
        .header("host", &host)
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", crate::sigv4::EMPTY_SHA256)
        .header("authorization", auth)
        .send()
        .await
        .map_err(|e| format!("HEAD {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        Ok(format!("HEAD {url}: {status}"))
    } else {
        Err(format!("HEAD {url}: {status}"))
    }
}

async fn https(url: &str, ca_file: &Path) -> Result<String, String> {
    let resp = tls_client(ca_file)?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        Ok(format!("GET {url}: {status}"))
    } else {
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).filter(|c| !c.is_control()).collect();
        Err(format!("GET {url}: {status} {body}").trim_end().to_string())
    }
}

async fn tcp(address: &str) -> Result<String, String> {
    tokio::net::TcpStream::connect(address)
        .await
        .map(|_| format!("{address} accepts connections"))
        .map_err(|e| format!("connect {address}: {e}"))
}
