//! The `flowrun` binary: parse arguments, run the command, map the outcome to an exit code in one place.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    flowrun_nodes::link();
    cli::main()
}
