//! The `georep` binary: parse, run, and print a top-level error (the only place that does).

use clap::FromArgMatches;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match georep::cli::Cli::from_arg_matches(&georep::cli::command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // A listing piped into `head` ends quietly, as other Unix tools do. Only for commands that
    // talk to no agent: the others keep SIGPIPE ignored and see EPIPE on a link as an error
    // that names the agent and the fix.
    use georep::cli::Cmd;
    if matches!(
        cli.cmd,
        Cmd::Status(_)
            | Cmd::Config(_)
            | Cmd::Failures(_)
            | Cmd::Volume(_)
            | Cmd::Completions { .. }
            | Cmd::ManPages { .. }
    ) {
        // SAFETY: no other thread runs yet; restoring a default disposition is async-safe.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    georep::logging::init();
    match georep::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("georep: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
