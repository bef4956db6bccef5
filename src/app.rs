//! Composition root (work in progress).

use std::process::ExitCode;

use crate::cli::Cli;

pub fn main(cli: Cli) -> ExitCode {
    let _ = cli;
    ExitCode::SUCCESS
}
