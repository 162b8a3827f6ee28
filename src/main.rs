//! The `flowrun` binary: parse arguments, run the command, map the outcome to an exit code in one place.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    // `flowrun graph flow.toml | head` should end quietly, as Unix tools do, not panic on a closed pipe.
    #[cfg(unix)]
    // SAFETY: called before any thread starts; restores the default action of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    flowrun_nodes::link();
    flowrun_pv::link();
    cli::main()
}
