//! Garage, the S3 server standing in for MinIO in tests: one node, layout applied,
//! an access key and a bucket, all made by `server --single-node --default-bucket`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;

use crate::user::ServiceUser;
use crate::{ChildProcess, TestDir, free_port};

/// The S3 region Garage signs with; clients must use the same.
pub const REGION: &str = "garage";

/// A running Garage node. Killed when dropped.
#[derive(Debug)]
pub struct Garage {
    pub s3_port: u16,
    pub admin_port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub admin_token: String,
    process: ChildProcess,
    dir: TestDir,
}

/// Where the garage binary is: `HANGAR_GARAGE_BIN`, else `garage` on PATH, else
/// `~/.cargo/bin/garage`. When tests run as root and the binary sits where the
/// service user cannot reach it (`/root/.cargo/bin`, `/root/.cache/…`), a copy in a
/// root-owned, world-readable directory is returned instead.
pub fn garage_bin() -> PathBuf {
    crate::bins::runnable_by_service_user(find_garage())
}

fn find_garage() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_GARAGE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("garage");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = PathBuf::from(home).join(".cargo/bin/garage");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the garage binary was not found: run `cargo install garage --version 2.5.0 --locked` \
         (what .ci/run does) or set HANGAR_GARAGE_BIN"
    );
}

fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill(&mut b[..]);
    ::hex::encode(b)
}

impl Garage {
    pub async fn start() -> Garage {
        crate::init();
        let dir = TestDir::new("garage");
        let user = ServiceUser::get();
        let bin = garage_bin();
        let access_key = format!("GK{}", hex(12));
        let secret_key = hex(32);
        let admin_token = hex(32);
        let bucket = "hangar".to_string();
        let mut last_err = String::new();
        for _ in 0..5 {
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            let config = dir.path().join("garage.toml");
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\n\
                     data_dir = \"{data}\"\n\
                     db_engine = \"sqlite\"\n\
                     replication_factor = 1\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     [s3_api]\n\
                     s3_region = \"{REGION}\"\n\
                     api_bind_addr = \"127.0.0.1:{s3}\"\n\
                     [admin]\n\
                     api_bind_addr = \"127.0.0.1:{admin}\"\n\
                     admin_token = \"{admin_token}\"\n",
                    meta = dir.path().join("meta").display(),
                    data = dir.path().join("data").display(),
                ),
            )
            .expect("write garage.toml");
            user.chown(dir.path());
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&config)
                .args(["server", "--single-node", "--default-bucket"])
                .env("GARAGE_RPC_SECRET", hex(32))
                .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
                .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
                .env("GARAGE_DEFAULT_BUCKET", &bucket)
                .env("RUST_LOG", "garage=warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null());
            user.apply(&mut cmd);
            let mut process = ChildProcess::spawn(cmd, "garage", dir.path());
            // The S3 port opens only once the layout, key and bucket exist.
            let up = async {
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", s3))
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                    if process.try_exited().is_some() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            match tokio::time::timeout(Duration::from_secs(20), up).await {
                Ok(true) => {
                    return Garage {
                        s3_port: s3,
                        admin_port: admin,
                        access_key,
                        secret_key,
                        bucket,
                        admin_token,
                        process,
                        dir,
                    };
                }
                Ok(false) => last_err = process.output_tail(),
                Err(_) => last_err = format!("no S3 port after 20 s: {}", process.output_tail()),
            }
            process.kill();
        }
        panic!(
            "garage did not start in {}: {last_err}",
            dir.path().display()
        );
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The bucket as a rust-s3 client sees it (path style, Garage's region).
    pub fn bucket(&self) -> Box<s3::Bucket> {
        let region = s3::Region::Custom {
            region: REGION.into(),
            endpoint: self.endpoint(),
        };
        let creds = s3::creds::Credentials::new(
            Some(&self.access_key),
            Some(&self.secret_key),
            None,
            None,
            None,
        )
        .expect("credentials");
        s3::Bucket::new(&self.bucket, region, creds)
            .expect("bucket handle")
            .with_path_style()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the node (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
