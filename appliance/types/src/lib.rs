//! Types shared by every part of Hangar, the worker included: run kinds and
//! states with the one table of allowed transitions, and user roles. No I/O.

mod run;
mod role;

pub use role::Role;
pub use run::{RunKind, RunState, TransitionError, Tool};
