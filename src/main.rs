//! The `georep` binary: parse, run, and print a top-level error (the only place that does).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = georep::cli::Cli::parse();
    georep::logging::init();
    match georep::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("georep: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
