//! Data access for the API's domain. Functions take a connection so callers
//! compose them into one transaction with the mutation's audit event.

pub mod audit;
pub mod pools;
pub mod run_objects;
pub mod run_tokens;
pub mod runs;
pub mod stacks;
pub mod users;
pub mod vcs;
