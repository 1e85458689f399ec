//! What the console asks of the server process that mounts it: things that
//! live with the server's own machinery (the log store and its live hub, git,
//! the worker CA's join tokens) or that only the host knows (the System page).

use std::future::Future;
use std::pin::Pin;

use hangar_types::worker::Phase;
use tokio::sync::broadcast;

/// A boxed future borrowing the backend.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a session belongs to, as the API resolves it.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub email: String,
    /// The role held in the root space, and so everywhere.
    pub role: hangar_types::Role,
    /// The role in each space, with the grants counted.
    pub access: std::sync::Arc<hangar_store::spaces::SpaceAccess>,
}

/// An operation the API refused or could not do: its GraphQL error code
/// (`FORBIDDEN`, `BAD_USER_INPUT`, ...) and its one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub code: String,
    pub message: String,
}

/// The server's side of the console.
///
/// Every change the console makes is an operation of the GraphQL API run in
/// the server process with the session's token, exactly as a client sending
/// `Authorization: Bearer` would: the same authorization, validation and
/// audit, with no second copy of any rule.
pub trait Backend: Send + Sync + 'static {
    /// The user of a session token: `Ok(None)` when the token is unknown,
    /// expired or revoked; `Err` when it cannot be checked now.
    fn session<'a>(&'a self, token: &'a str) -> Pending<'a, Result<Option<SessionUser>, String>>;

    /// Runs a GraphQL operation as the session `token` (or anonymously) and
    /// returns its `data`, or the first error.
    fn execute<'a>(
        &'a self,
        token: Option<&'a str>,
        query: &'a str,
        variables: serde_json::Value,
    ) -> Pending<'a, Result<serde_json::Value, OpError>>;

    /// The stored text of one phase of a run's log, up to the first chunk not
    /// arrived yet, and how many chunks that is. At most `limit` bytes.
    fn log_text(&self, run: i64, phase: Phase, limit: usize) -> Pending<'_, Result<(String, u64), String>>;

    /// Ids of runs as they change state (and new runs), for live pages.
    fn run_changes(&self) -> broadcast::Receiver<i64>;

    /// Facts for the System page.
    fn system(&self) -> Pending<'_, SystemFacts>;
}

/// The System page's facts, each gathered as well as the server could.
#[derive(Debug, Clone)]
pub struct SystemFacts {
    pub version: String,
    /// Where the supervised services were asked for, and the answer: each
    /// service, or why there is none.
    pub services: Result<Vec<ServiceFact>, String>,
    /// Certificates the server can read, with when each expires.
    pub certificates: Vec<CertificateFact>,
    /// Data directories with their size and the free space where they are.
    pub disks: Vec<DiskFact>,
    /// The staged bundles, oldest first; `None` when this server takes no
    /// uploads (no `bundles_dir`), `Err` when the staging area cannot be read.
    pub bundles: Option<Result<Vec<BundleFact>, String>>,
    /// Upgrades and restores of the appliance, newest first (the installer's
    /// records).
    pub upgrades: Vec<UpgradeRecordFact>,
}

/// One upgrade or restore, as the installer recorded it.
#[derive(Debug, Clone)]
pub struct UpgradeRecordFact {
    pub id: String,
    /// `upgrade` or `restore`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub requested_by: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// `running`, `completed`, `rolled back`, `refused` or `failed`.
    pub outcome: String,
    /// Each step with its duration, in order, rollback steps marked.
    pub steps: Vec<String>,
    pub backup: Option<String>,
    pub downtime_secs: Option<f64>,
    pub error: Option<String>,
}

/// An upgrade asked for with a staged appliance bundle.
#[derive(Debug, Clone)]
pub struct UpgradeFact {
    pub id: String,
    /// `requested`, `running`, `completed`, `rolled-back`, `refused` or `failed`.
    pub state: String,
    pub requested_by: String,
    pub requested_at: String,
    pub message: Option<String>,
}

/// A verified bundle in the staging area.
#[derive(Debug, Clone)]
pub struct BundleFact {
    pub id: String,
    pub kind: String,
    pub version: String,
    pub platform: String,
    pub size: u64,
    pub uploaded_by: String,
    pub uploaded_at: chrono::DateTime<chrono::Utc>,
    /// When and by whom it was applied to the tools area.
    pub applied: Option<(chrono::DateTime<chrono::Utc>, String)>,
    /// The last upgrade asked for with it (an appliance bundle).
    pub upgrade: Option<UpgradeFact>,
}

#[derive(Debug, Clone)]
pub struct ServiceFact {
    pub name: String,
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Since when the current process runs.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct CertificateFact {
    pub name: String,
    pub subject: String,
    pub not_after: Result<chrono::DateTime<chrono::Utc>, String>,
}

#[derive(Debug, Clone)]
pub struct DiskFact {
    pub path: String,
    pub used_bytes: Result<u64, String>,
    pub free_bytes: Result<u64, String>,
}

