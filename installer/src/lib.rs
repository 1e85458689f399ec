//! `hangar-install`: the appliance installer. The steps are functions over the
//! [`answers::Answers`] and a [`host::Host`]; the terminal prompts and an answers
//! file are two [`answers::Prompter`]s, indicatif and plain lines two
//! [`report::Reporter`]s.

pub mod agent;
pub mod answers;
pub mod backup;
pub mod cli;
pub mod error;
pub mod health;
pub mod host;
pub mod install;
pub mod installed;
pub mod lifecycle;
pub mod minio;
pub mod pgtool;
pub mod preflight;
pub mod prompt;
pub mod render;
pub mod report;
pub mod services;
pub(crate) mod signals;
pub mod state;
pub mod status;
pub mod support;
pub mod tls;
pub mod tools;
pub mod uninstall;
pub mod upgrade;

pub use cli::{Cli, Failure, run};
pub use error::InstallError;
