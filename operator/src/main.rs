//! The `berth` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    berth::tls::install_default_provider();
    let cli = berth::cli::Cli::parse();
    berth::cli::run(cli)
}
