//! Hangar's test kit: starts the real things tests need — PostgreSQL 15 with TLS,
//! Garage (the S3 server standing in for MinIO), a git server over HTTP(S), and
//! Hangar's own binaries as separate processes — on free loopback ports, each in a
//! temporary directory that is kept and printed when the test fails. Also the
//! test provider packaged for Terraform's provider mirrors.

pub mod bins;
mod dir;
pub mod garage;
pub mod git;
pub mod netns;
pub mod pg;
mod ports;
pub mod provider;
pub mod terraform;
pub mod user;

pub use bins::{ChildProcess, cargo_bin};
pub use dir::TestDir;
pub use garage::Garage;
pub use git::{GitServer, WorkingCopy};
pub use netns::{NetNs, Relay};
pub use pg::{PgServer, StopMode};
pub use ports::free_port;

/// Installs ring as rustls' process-wide provider and a test-friendly log
/// subscriber (once per process).
pub fn init() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        hangar_certs::tls::install_default_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("HANGAR_TEST_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
