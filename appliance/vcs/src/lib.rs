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
//!
//! How the parts use it:
//! - **Integration created**: [`Verifier::new`] with the webhook secret refuses
//!   an unusable one ([`SecretError`]) before it is stored.
//! - **`POST /webhooks/{vendor}/{integration}`**: refuse a declared length over
//!   [`max_body`] ([`check_declared_length`]) before reading the body, then
//!   `verifier.verify(&headers, &body, SystemTime::now())`. `Err(e)` answers
//!   `e.http_status()` and enqueues nothing; `Ok(delivery)` enqueues
//!   `delivery.document(&body)` (the JSON) with `delivery.event` under the
//!   uniqueness key `"{integration}:{delivery.id}"` (ids are unique per vendor,
//!   not across integrations) and answers 202.
//! - **Drain**: `parse(vendor, &event, &body)`; a [`ParseError`] is the
//!   delivery's outcome, in one line. For each [`Event`]: a [`Push`] to a
//!   stack's branch of a matching repository ([`Repository::matches_url`]) is a
//!   tracked run at `after` when [`Push::touches`] the stack's [`ProjectRoot`]
//!   ([`Touches::Unknown`]: diff `before..after` with git first); a
//!   [`PullRequest`] opened, updated or reopened against the stack's branch is a
//!   proposed run at `head_sha` (fetched through `fetch_ref`); everything else
//!   is recorded and ignored, with its `Display` line as the reason.
//! - **Run state changes**: [`CommitStatus::for_run`] and
//!   [`StatusClient::report`], only when [`commit_state`] changes; retry while
//!   [`StatusError::is_retryable`]. Nothing about the run depends on it.
//! - **Plain git**: every [`VcsConfig::poll_interval`], [`ls_remote`], then
//!   [`poll_events`] against the stored previous [`RemoteRefs`] (serializable).

mod changes;
mod child;
mod config;
mod event;
mod paths;
mod poll;
mod secret;
mod status;
mod vendor;
mod webhook;

pub use changes::{Base, ChangesError, Diff, GitCache, Remote};
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
    check_declared_length, max_body, vendor_headers,
};
