//! `hangar-install`: parse arguments, run, map the outcome to an exit code
//! (0 ok, 1 failure, 2 usage).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hangar_certs::tls::install_default_provider();
    let cli = hangar_install::Cli::parse();
    match hangar_install::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(hangar_install::Failure::Usage(msg)) => {
            eprintln!("hangar-install: {msg}");
            ExitCode::from(2)
        }
        Err(hangar_install::Failure::Negative) => ExitCode::FAILURE,
        Err(hangar_install::Failure::Failed(e)) => {
            eprintln!("hangar-install: error: {}", hangar_types::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
