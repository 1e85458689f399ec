//! `hangar-client`: the client side of the `hangar` binary, for any machine
//! that reaches an appliance over HTTPS. It links nothing of the server: a
//! [`Profile`] says where the appliance is, which CA to trust and which API
//! key to send; [`Client`] makes the calls and turns every failure into one
//! [`ClientError`]; [`cli`] holds the subcommands (`hangar bundle …`), each
//! with `--json` output for scripts: `hangar bundle`, `login`, `stack`,
//! `run`, `env`, `policy`, `module` and `space`.

pub mod bundles;
pub mod cli;
mod client;
pub mod commands;
mod error;
mod graphql;
pub mod modules;
mod profile;
pub mod runs;
pub mod spaces;

pub use client::Client;
pub use error::ClientError;
pub use profile::{ConnectArgs, Profile, config_path};
