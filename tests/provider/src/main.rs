//! `terraform-provider-hangartest`: started by Terraform, never by hand.

use std::process::ExitCode;

const USAGE: &str = "terraform-provider-hangartest: a Terraform provider for Hangar's tests (files and directories on this host); Terraform starts it, it is not run by hand";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (key, value) = hangar_test_provider::MAGIC_COOKIE;
    if !args.is_empty() || std::env::var(key).ok().as_deref() != Some(value) {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("terraform-provider-hangartest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hangar_test_provider::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-hangartest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
