//! `berth backup run|list|restore`: the backup engine on the command line. The CronJob of a
//! Backup runs `berth backup run`; people run `list` and `restore`.

use clap::{Args, Subcommand, ValueEnum};

use super::exit;
use crate::api::backup::{Compression, DumpFormat};
use crate::api::units::parse_duration;
use crate::backup::report::RunReport;
use crate::backup::{self, BackupError, RestoreOptions, RunOptions, Selection, Store};

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Dump a database into a folder or S3 bucket, then apply retention.
    Run(RunArgs),
    /// List the backups at a folder or S3 bucket, newest first.
    List(ListArgs),
    /// Restore a backup into a database (created when absent).
    Restore(RestoreArgs),
    /// Copy berth with its loader and libraries into a folder, to run it inside another image
    /// (`DIR/ld.so --library-path DIR DIR/berth ...`): what a Kubernetes backup Job's init
    /// container does so that the PostgreSQL image's own pg_dump makes the dump.
    Bundle(BundleArgs),
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The folder (created when missing).
    #[arg(long)]
    pub to: std::path::PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Custom,
    Plain,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Gzip,
    None,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// postgres:// URL of the database to dump.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A folder or s3://bucket/prefix (credentials from AWS_* variables).
    #[arg(long)]
    pub to: String,
    #[arg(long, value_enum, default_value = "custom")]
    pub format: FormatArg,
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Keep the N newest good backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Delete good backups older than this (e.g. 30d); the newest is always kept.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// Restore the new backup into a scratch database, check it, drop it.
    #[arg(long)]
    pub verify: bool,
    /// Start of the backup names (default: the database name).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Print the new backup's manifest as JSON on stdout.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Also write a short JSON report (the new and the kept backups, or the error) to this file;
    /// the Kubernetes CronJob uses /dev/termination-log so the controller can read it.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// A folder or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A folder or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    /// The backup to restore (see berth backup list).
    #[arg(long, conflicts_with = "latest", required_unless_present = "latest")]
    pub name: Option<String>,
    /// Restore the newest backup.
    #[arg(long)]
    pub latest: bool,
    /// postgres:// URL of the target database; it is created when absent.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Drop and recreate the target database when it is not empty.
    #[arg(long)]
    pub clean: bool,
    /// Confirm the restore.
    #[arg(long)]
    pub yes: bool,
}

pub fn run(args: BackupArgs) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth backup: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let (what, result) = match args.command {
        BackupCommand::Run(a) => ("run", rt.block_on(run_cmd(a))),
        BackupCommand::List(a) => ("list", rt.block_on(list_cmd(a))),
        BackupCommand::Restore(a) => ("restore", rt.block_on(restore_cmd(a))),
        BackupCommand::Bundle(a) => ("bundle", bundle_cmd(a)),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("berth backup {what}: {e}");
            e.exit_code()
        }
    }
}

fn format_of(f: FormatArg) -> DumpFormat {
    match f {
        FormatArg::Custom => DumpFormat::Custom,
        FormatArg::Plain => DumpFormat::Plain,
    }
}

fn compression_of(c: CompressionArg) -> Compression {
    match c {
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::None => Compression::None,
    }
}

async fn run_cmd(a: RunArgs) -> Result<(), BackupError> {
    let max_age = a
        .max_age
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| BackupError::Retention(format!("--max-age {e}")))?;
    let opts = RunOptions {
        database_url: a.database_url,
        to: a.to,
        format: format_of(a.format),
        compression: compression_of(a.compression),
        keep_last: a.keep_last,
        max_age,
        verify: a.verify,
        name_prefix: a.name_prefix,
    };
    let result = backup::run(&opts).await;
    if let Some(path) = &a.report {
        let report = match &result {
            Ok(out) => RunReport {
                backup: Some(out.backup.record()),
                backups: out.kept.iter().map(|m| m.record()).collect(),
                error: None,
            },
            Err(e) => RunReport {
                error: Some(e.to_string()),
                ..RunReport::default()
            },
        };
        if let Err(e) = std::fs::write(path, report.to_message()) {
            eprintln!(
                "berth backup run: cannot write the report to {}: {e}",
                path.display()
            );
        }
    }
    let out = result?;
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&out.backup).unwrap_or_default()
        ),
        Output::Table => {
            println!(
                "backup {} ({} bytes, sha256 {}, {:.1}s{})",
                out.backup.name,
                out.backup.size_bytes,
                out.backup.sha256,
                out.backup.duration_seconds,
                if out.backup.verified {
                    ", verified"
                } else {
                    ""
                }
            );
            for d in &out.deleted {
                println!("deleted {d} (retention)");
            }
        }
    }
    Ok(())
}

async fn list_cmd(a: ListArgs) -> Result<(), BackupError> {
    let store = Store::open_existing(&a.from)?;
    let entries = backup::list(&store).await?;
    match a.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "name": m.name, "time": m.time, "sizeBytes": m.size_bytes,
                        "sha256": m.sha256, "verified": m.verified,
                        "format": m.format, "compression": m.compression,
                        "durationSeconds": m.duration_seconds,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        }
        Output::Table => {
            let w = entries
                .iter()
                .map(|m| m.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<w$}  {:<20}  {:>12}  {:<8}  SHA256",
                "NAME", "TIME", "SIZE", "VERIFIED"
            );
            for m in &entries {
                println!(
                    "{:<w$}  {:<20}  {:>12}  {:<8}  {}",
                    m.name,
                    m.time,
                    m.size_bytes,
                    if m.verified { "yes" } else { "no" },
                    m.sha256
                );
            }
        }
    }
    Ok(())
}

async fn restore_cmd(a: RestoreArgs) -> Result<(), BackupError> {
    let selection = match a.name {
        Some(n) => Selection::Name(n),
        None => Selection::Latest,
    };
    let opts = RestoreOptions {
        from: a.from,
        selection,
        database_url: a.database_url,
        clean: a.clean,
        yes: a.yes,
    };
    let m = backup::restore(&opts).await?;
    println!("restored {} ({} bytes)", m.name, m.size_bytes);
    Ok(())
}

fn bundle_cmd(a: BundleArgs) -> Result<(), BackupError> {
    let files = backup::bundle::bundle(&a.to)?;
    println!("bundled {} files into {}", files.len(), a.to.display());
    Ok(())
}
