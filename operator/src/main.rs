//! The `berth` command.

use std::process::ExitCode;

use clap::Parser;

/// Counts live heap bytes for `/metrics` (berth::heap).
#[global_allocator]
static ALLOCATOR: berth::heap::Counting = berth::heap::Counting;

fn main() -> ExitCode {
    berth::heap::single_arena();
    berth::tls::install_default_provider();
    let cli = berth::cli::Cli::parse();
    berth::cli::run(cli)
}
