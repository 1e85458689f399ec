//! The `hangar` appliance binary's logic: configuration and the subcommands.

mod background_cmd;
pub mod cli;
pub mod config;
pub mod logging;
mod migrate_cmd;
mod server_cmd;
mod admin_cmd;
pub mod signals;

pub use cli::{Cli, run};
