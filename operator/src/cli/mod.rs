//! Command-line interface: one file per subcommand; each returns the process exit code.

mod backup;
mod cert;
mod crds;
mod host;
mod operator;
mod operator_args;
pub mod operator_check;
mod operator_ready;
mod queue;
mod render;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth runs small-team application stacks (API, workers, PostgreSQL, Redis, proxy with TLS,
/// backups) from one declarative manifest, on Kubernetes and on a single Docker host alike.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions of all berth kinds as multi-document YAML.
    Crds(crds::CrdsArgs),
    /// Check manifests offline against the schema and berth's semantic rules.
    Validate(validate::ValidateArgs),
    /// Print, offline, the Kubernetes objects the operator would create for manifests.
    Render(render::RenderArgs),
    /// Run the Kubernetes controllers (in a cluster, or against KUBECONFIG).
    Operator(operator::OperatorArgs),
    /// Inspect Redis queues the way the Worker autoscaler reads them.
    Queue(queue::QueueArgs),
    /// Back up, list and restore PostgreSQL databases (what a Backup's schedule runs).
    Backup(backup::BackupArgs),
    /// Issue and renew TLS certificates (what a Certificate's renewal schedule runs).
    Cert(cert::CertArgs),
    /// Run the manifests of a folder on this Docker host (run, status, down).
    Host(host::HostArgs),
}

/// Exit codes shared by all subcommands.
pub mod exit {
    /// Everything went well.
    pub const OK: u8 = 0;
    /// The input was understood and found wanting (invalid manifests, a failed check).
    pub const INVALID: u8 = 1;
    /// Usage or I/O error: the command could not do its job.
    pub const USAGE: u8 = 2;
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Crds(args) => crds::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Render(args) => render::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Cert(args) => cert::run(args),
        Command::Host(args) => host::run(args),
    };
    ExitCode::from(code)
}
