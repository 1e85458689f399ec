//! The `hangar` appliance binary's logic: the subcommands (the configuration
//! they read is `hangar-config`'s).

mod background_cmd;
pub mod cli;
pub mod logging;
mod migrate_cmd;
mod server_cmd;
mod admin_cmd;
pub mod signals;

pub use cli::{Cli, run};
