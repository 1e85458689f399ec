//! The vendor-facing half of Hangar's VCS integrations, free of any database or
//! HTTP server: webhook verification exactly as each vendor specifies it, event
//! parsing into one normalized model, commit-status clients, and `git ls-remote`
//! polling for plain git servers.
//!
//! The server verifies a delivery ([`Verifier::verify`]) and enqueues the raw
//! body under its delivery id; the drain parses it later ([`parse`]) and decides
//! what run, if any, it means. Commit statuses go back through
//! [`StatusClient::report`]; plain-git integrations are polled with
//! [`ls_remote`] and the differences turned into the same [`Event`]s.

mod config;
mod event;
mod paths;
mod poll;
mod secret;
mod status;
mod vendor;
mod webhook;

pub use config::{VcsConfig, VcsConfigError};
pub use event::{
    Event, ParseError, PrAction, PullRequest, Push, RefTarget, Repository, parse,
};
pub use paths::{InvalidProjectRoot, ProjectRoot, Touches};
pub use poll::{
    Credentials, LsRemote, LsRemoteError, RefChange, RemoteRefs, ls_remote, poll_events,
};
pub use secret::Secret;
pub use status::{
    CommitState, CommitStatus, Reported, StatusClient, StatusClientConfig, StatusError,
    commit_state,
};
pub use vendor::{UnknownVendor, Vendor};
pub use webhook::{
    Delivery, MAX_BODY, SecretError, TIMESTAMP_TOLERANCE, Verifier, WebhookError,
    check_declared_length, vendor_headers,
};
