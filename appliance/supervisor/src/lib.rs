//! Hangar's process supervisor — what runit is to an omnibus appliance — and the
//! TLS front it puts before the object store.
//!
//! `hangar supervise` starts the appliance's services (PostgreSQL, the object
//! store, the server, the drain, the scheduler) in dependency order as the
//! unprivileged service user, counts a child ready only once it answers a real
//! check, restarts crashed children with back-off and a start limit, stops whole
//! process groups, reaps every descendant, writes each child's output to its own
//! log file and reloads its configuration on SIGHUP. `hangar ctl` talks to it over
//! a unix socket with a small versioned JSON-lines protocol (`protocol`).
//! `hangar tls-proxy` terminates TLS in front of a plain-TCP service (Garage).

pub mod cli;
pub mod config;
mod control;
pub mod ctl;
mod error;
mod logs;
mod notify;
pub mod protocol;
pub mod proxy;
mod ready;
mod reaper;
mod service;
pub mod sigv4;
mod supervisor;

pub use config::{Plan, S3Target, ServiceSpec, Settings, SupervisorConfig};
pub use error::{CtlError, ProxyError, SupervisorError};
pub use proxy::{ProxyConfig, ProxyHandle, TlsProxy};
pub use supervisor::{Loader, Supervisor, SupervisorHandle};
