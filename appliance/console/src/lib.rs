//! The web console on 1983: server-rendered pages over the store, mounted by
//! `hangar server` at `/` beside `/graphql`.
//!
//! Every page is HTML from a compile-time-checked template and works without
//! JavaScript; a small embedded script streams run logs and refreshes the parts
//! of a page that change.
//!
//! The console reads the database for its pages (`queries`) and keeps no rules
//! of its own: every change is a GraphQL operation run in the server process
//! with the session's token, so authorization, validation and the audit trail
//! are the API's. Sessions are the API's sessions, carried in a `__Host-`
//! cookie; every state-changing request carries the session's CSRF token and an
//! `Origin` of this server.

mod ansi;
mod assets;
mod backend;
mod headers;
mod pages;
mod session;
mod view;

use std::sync::Arc;

pub use backend::{
    Backend, BundleFact, CertificateFact, DiskFact, OpError, Pending, ServiceFact, SessionUser, SystemFacts, UpgradeFact, UpgradeRecordFact,
};
pub use headers::secure;
pub use session::{COOKIE, browser_write_token, session_token};

use hangar_db::DbPool;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// What the console needs from the server that mounts it.
pub struct ConsoleSettings {
    pub db: DbPool,
    /// How long a login session lasts (the API's sessions last as long).
    pub session_ttl: chrono::Duration,
    /// How browsers reach this server (`https://host[:port]`): the one origin
    /// state-changing requests may come from.
    pub public_url: String,
    /// What only the server process can do or know (sessions, the API's
    /// operations, logs, live run changes, the System page's facts).
    pub backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// State shared by the console's handlers.
pub(crate) struct Console {
    pub(crate) db: DbPool,
    pub(crate) session_ttl: chrono::Duration,
    /// `scheme://host[:port]` of `public_url`.
    pub(crate) origin: String,
    pub(crate) public_url: String,
    pub(crate) backend: Arc<dyn Backend>,
}

/// The console's routes. Paths it does not know are rejected (not found), so
/// the server's other routes and its JSON 404 keep answering them.
pub fn routes(settings: ConsoleSettings) -> BoxedFilter<(Response,)> {
    let origin = origin_of(&settings.public_url);
    let console = Arc::new(Console {
        db: settings.db,
        session_ttl: settings.session_ttl,
        origin,
        public_url: settings.public_url.trim_end_matches('/').to_string(),
        backend: settings.backend,
    });
    pages::routes(console)
}

/// `scheme://host[:port]` of a URL, lowercased, without a default port.
pub fn origin_of(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default().to_ascii_lowercase();
    let host = host.strip_suffix(":443").filter(|_| scheme == "https").map(str::to_string).unwrap_or(host);
    format!("{}://{host}", scheme.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_default_ports() {
        assert_eq!(origin_of("https://Hangar.example:443/"), "https://hangar.example");
        assert_eq!(origin_of("https://localhost:1983"), "https://localhost:1983");
        assert_eq!(origin_of("https://h.example:8443/console?x"), "https://h.example:8443");
    }
}
