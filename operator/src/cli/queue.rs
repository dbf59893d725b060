//! `berth queue depth`: what the autoscaler sees in a queue, for debugging scaling.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::exit;
use crate::api::worker::QueueType;
use crate::autoscale::driver::now_ms;
use crate::autoscale::{read_probes, Pool, QueueProbe, RedisTarget};

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Read a queue's depth the way the autoscaler does: jobs waiting plus jobs in flight.
    Depth(DepthArgs),
}

#[derive(Debug, Args)]
pub struct DepthArgs {
    /// redis:// or rediss:// URL (password included); better given through BERTH_REDIS_URL so
    /// it stays out of shell history.
    #[arg(long, env = "BERTH_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// The queue framework, as in a Worker's `queue.type`.
    #[arg(long = "type", value_enum)]
    pub queue_type: QueueType,
    /// The queue's name as the framework knows it.
    #[arg(long)]
    pub name: String,
    /// For `stream`: the consumer group.
    #[arg(long)]
    pub consumer_group: Option<String>,
    /// A raw Redis key overriding the name-to-key mapping (for bullmq: the key prefix).
    #[arg(long)]
    pub key: Option<String>,
    /// CA certificate (PEM) of a rediss:// server with a private CA.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Print only the depth.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: QueueArgs) -> u8 {
    match args.command {
        QueueCommand::Depth(a) => depth(a),
    }
}

fn depth(a: DepthArgs) -> u8 {
    let probe = match QueueProbe::from_parts(
        a.queue_type,
        &a.name,
        a.key.as_deref(),
        a.consumer_group.as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth queue depth: {e}");
            return exit::USAGE;
        }
    };
    let ca = match &a.ca_file {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("berth queue depth: cannot read {}: {e}", p.display());
                return exit::USAGE;
            }
        },
        None => None,
    };
    let target = RedisTarget::new(a.redis_url, ca);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth queue depth: cannot start the async runtime: {e}");
            return exit::USAGE;
        }
    };
    let result = runtime.block_on(async {
        read_probes(&Pool::new(), &target, &[&probe], now_ms())
            .await
            .remove(0)
    });
    let d = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("berth queue depth: {e}");
            return exit::INVALID;
        }
    };
    if !a.quiet {
        println!(
            "{} queue {:?} on {}",
            a.queue_type.as_str(),
            a.name,
            target.redacted()
        );
        let width = d.parts.iter().map(|p| p.key.len()).max().unwrap_or(0);
        for p in &d.parts {
            let flight = if p.in_flight { "  (in flight)" } else { "" };
            println!("  {:<22} {:<width$} {:>8}{flight}", p.what, p.key, p.count);
        }
        println!(
            "waiting {}, in flight {}; depth = waiting + in flight:",
            d.waiting(),
            d.in_flight()
        );
    }
    println!("{}", d.total());
    exit::OK
}
