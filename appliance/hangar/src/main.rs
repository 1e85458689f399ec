//! `hangar`: parse arguments, run, map errors to exit codes (1 failure, 2 usage).

use clap::Parser;

fn main() -> std::process::ExitCode {
    hangar_certs::tls::install_default_provider();
    let cli = hangar::Cli::parse();
    // A policy evaluation the server or the drain started runs alone, on
    // this thread, without a runtime: its memory limit is for the policy.
    if matches!(cli.command, hangar::cli::Command::PolicyEval) {
        return hangar_policy::serve_child();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hangar: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hangar::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangar: error: {}", hangar_types::error_chain(e.as_ref()));
            // A client command missing where or how to connect is a usage mistake.
            if e.downcast_ref::<hangar_client::ClientError>()
                .is_some_and(hangar_client::ClientError::is_usage)
            {
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
