//! `hangar-bundle`: makes, signs, verifies, inspects and extracts offline bundles.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. A failure prints one line on
//! stderr, what failed followed by its causes; the log (`--log-file`, or stderr
//! when `HANGAR_LOG` is set) records it too.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "hangar-bundle failed");
            cli::report_error(&args, &e);
            ExitCode::from(1)
        }
    }
}
