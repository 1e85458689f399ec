//! Types shared by every part of Hangar, the worker included: run kinds and
//! states with the one table of allowed transitions, user roles, and the worker
//! protocol's messages, the error body of the appliance's HTTP routes, and the
//! one formatter of error chains. No I/O.

mod error;
pub mod http;
mod role;
mod run;
pub mod upgrade;
pub mod worker;

pub use error::error_chain;
pub use role::Role;
pub use run::{RunKind, RunState, TransitionError, Tool};
