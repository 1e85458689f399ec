//! The appliance's data layer, apart from any transport: the domain's queries
//! and the secrets sealed at rest. The HTTP server, GraphQL, the drain and the
//! console are its clients. Functions take a connection so callers compose them
//! into one transaction with the mutation's audit event.

pub mod access;
pub mod audit;
pub mod console;
pub mod dependencies;
mod error;
pub mod modules;
pub mod pools;
pub mod policies;
pub mod processes;
pub mod run_objects;
pub mod run_tokens;
pub mod runs;
pub mod scheduler;
pub mod spaces;
pub mod secrets;
pub mod stacks;
pub mod users;
pub mod vcs;

pub use error::StoreError;
