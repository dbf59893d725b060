//! `berth crds`: the CRDs as YAML, for `kubectl apply -f -` and for `make crds`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::exit;
use crate::api;

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per kind (`<kind>.yaml`) into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Print the API reference (docs/api.md) generated from the schemas instead.
    #[arg(long, conflicts_with = "out_dir")]
    pub markdown: bool,
}

pub fn run(args: CrdsArgs) -> u8 {
    if args.markdown {
        print!("{}", api::reference::markdown());
        return exit::OK;
    }
    match args.out_dir {
        None => match api::crds_yaml() {
            Ok(yaml) => {
                let mut stdout = std::io::stdout().lock();
                if stdout.write_all(yaml.as_bytes()).is_err() {
                    return exit::USAGE;
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("berth crds: cannot serialize the CRDs: {e}");
                exit::USAGE
            }
        },
        Some(dir) => {
            let files = match api::crd_files() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("berth crds: cannot serialize the CRDs: {e}");
                    return exit::USAGE;
                }
            };
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("berth crds: cannot create {}: {e}", dir.display());
                return exit::USAGE;
            }
            for (name, body) in files {
                let path = dir.join(&name);
                if let Err(e) = std::fs::write(&path, body) {
                    eprintln!("berth crds: cannot write {}: {e}", path.display());
                    return exit::USAGE;
                }
                println!("wrote {}", path.display());
            }
            exit::OK
        }
    }
}
