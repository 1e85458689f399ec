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

/// Memory an evaluation of a policy may take: ten times the largest plan
/// inputs seen (a 5,000-resource plan takes about 17 MiB), far below what
/// would hurt the host.
const POLICY_MEMORY_BYTES: u64 = 512 * 1024 * 1024;

/// The policy evaluator of the server and the drain: each evaluation in a
/// process of its own (`hangar policy-eval`), its memory capped.
pub(crate) fn policy_evaluator() -> anyhow::Result<hangar_policy::Evaluator> {
    use anyhow::Context;
    let program = std::env::current_exe().context("finding the hangar binary to evaluate policies with")?;
    Ok(hangar_policy::Evaluator::isolated(
        hangar_policy::Limits::default(),
        hangar_policy::Isolation::Process { program, args: vec!["policy-eval".into()], memory_bytes: POLICY_MEMORY_BYTES },
    ))
}
