//! `wsingress`: parse the command line, initialise logging, run, map errors to exit codes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wsingress::cli::Cli::parse();
    wsingress::app::main(cli)
}
