//! The `berth` command.

use std::process::ExitCode;

use clap::Parser;

/// Counts live heap bytes for `/metrics` (berth::heap).
#[global_allocator]
static ALLOCATOR: berth::heap::Counting = berth::heap::Counting;

/// jemalloc's settings, read at its start: one arena, as with glibc's malloc
/// ([`berth::heap::single_arena`]); the rest jemalloc's defaults.
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &u8 = &b"narenas:1\0"[0];

fn main() -> ExitCode {
    berth::heap::single_arena();
    berth::tls::install_default_provider();
    let cli = berth::cli::Cli::parse();
    berth::cli::run(cli)
}
