//! `berth validate`: schema and semantic validation of manifests, offline.

use std::path::PathBuf;

use clap::Args;

use super::exit;
use crate::manifest;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A manifest file or a directory of them (searched recursively for .yaml/.yml); repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Print nothing when everything is valid.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: ValidateArgs) -> u8 {
    let docs = match manifest::load_paths(&args.paths) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("berth validate: {e}");
            return exit::USAGE;
        }
    };
    let mut invalid = 0;
    for doc in &docs {
        let lines = doc.error_lines();
        if !lines.is_empty() {
            invalid += 1;
        }
        for line in lines {
            println!("{line}");
        }
    }
    if invalid > 0 {
        eprintln!(
            "berth validate: {invalid} of {} documents invalid",
            docs.len()
        );
        exit::INVALID
    } else {
        if !args.quiet {
            println!("{} documents valid", docs.len());
        }
        exit::OK
    }
}
